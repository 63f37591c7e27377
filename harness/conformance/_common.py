"""What every conformance check shares: the tiny model, inputs, tolerances per dtype, tile
boundaries, and comparisons whose failures say at which length, position and boundary
forms disagree."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from archs import arch_info, create_arch
from archs.model import LanguageModel

VOCAB = 64
BATCH = 2
# Short checks: not a multiple of the small chunk sizes tiny variants use (4, 8, 16), so
# chunked forms run with a ragged last chunk; SPLIT is unaligned for the same reason.
LENGTH = 21
SPLIT = 13
# The lengths the long checks reach by default (CPU, seconds per mixer) and with --long:
# the lengths the harness reports results at (1K-16K). Reports quote these.
CHECKED_LENGTHS: tuple[int, ...] = (1024, 4096)
LONG_LENGTHS: tuple[int, ...] = (1024, 4096, 16384)

# The dtypes the causality and form-agreement checks run in: float32 (the CPU default),
# bfloat16 (what a GPU trains and decodes in) and float64 (where float32 rounding can no
# longer hide a small leak or a form that silently computes in float32).
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float64)
# Forms agree to this fraction of the reference output's scale. float32 forms that sum in
# another order differ by ~1e-6 of it; the built-ins' bfloat16 forms by up to ~1.1e-2 at
# 1K-4K tokens (each form rounds its activations to 8 bits at different places; the mixers
# accumulate in float32, archs/precision.py), so 5e-2 leaves a 4x margin and still fails a
# state kept in bfloat16 (errors grow to O(1) over a long decode) or a wrong result; their
# float64 forms differ by ~3e-15, so 1e-10 fails a form that computes in float32 (~1e-7).
RTOLS: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float64: 1e-10}
RTOL = RTOLS[torch.float32]
# Only for mixers declaring exact_causality = False (future terms that cancel numerically,
# e.g. an FFT convolution): a future gradient may reach this fraction of the largest past
# one. Every other mixer must give exactly 0. bfloat16 models compute their mixing in
# float32 (archs/precision.py), so their cancellation noise stays near float32's.
GRAD_LEAK_RTOLS: dict[torch.dtype, float] = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float64: 1e-12}
GRAD_LEAK_RTOL = GRAD_LEAK_RTOLS[torch.float32]
# The output scale a tolerance is relative to comes from the first SCALE_POSITIONS
# positions of the reference output, whatever the length: a tolerance must not grow
# with the length checked (the largest of more logits is larger).
SCALE_POSITIONS = 64


class ConformanceError(AssertionError):
    pass


@dataclass
class CheckResult:
    arch: str
    check: str
    passed: bool
    detail: str = ""
    backend: str | None = None
    dtype: str = "float32"
    skipped: bool = False  # not run (bidirectional, cannot run here, not deterministic): passed too


def dtype_named(dtype: str | torch.dtype) -> torch.dtype:
    """A dtype of DTYPES from its name ("bfloat16") or itself; anything else is refused."""
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if value not in DTYPES:
        raise ValueError(f"conformance runs in {[dtype_name(d) for d in DTYPES]}, not {dtype!r}")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def build_tiny(name: str, backend: str | None = None, seed: int = 0, dtype: str | torch.dtype = torch.float32,
               **overrides) -> LanguageModel:
    """The architecture's tiny variant in eval mode, in ``dtype`` (``backend`` if given)."""
    kwargs = {"vocab_size": VOCAB, **arch_info(name).tiny, **overrides}
    if backend is not None:
        kwargs["backend"] = backend
    torch.manual_seed(seed)
    return create_arch(name, **kwargs).to(dtype_named(dtype)).eval()


def tokens(seed: int = 0, length: int = LENGTH, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


# --- what the model declares -------------------------------------------------------------------

def dtype_of(model: LanguageModel) -> torch.dtype:
    """The dtype the model computes in: its token table's, else (a count-based model such as
    the n-gram has no embedding) its first floating-point parameter or buffer's."""
    embed = getattr(model, "embed", None)
    if embed is not None:
        return embed.weight.dtype
    floats = (t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())
    return next(floats, torch.get_default_dtype())


def rtol_of(model: LanguageModel) -> float:
    dtype = dtype_of(model)
    if dtype not in RTOLS:
        raise ConformanceError(f"the model is in {dtype_name(dtype)}; the suite has tolerances for "
                               f"{[dtype_name(d) for d in RTOLS]} only")
    return RTOLS[dtype]


def grad_leak_rtol(model: LanguageModel) -> float:
    """0 (exact zeros required) unless a mixer declares ``exact_causality = False``."""
    exact = all(getattr(m, "exact_causality", True) for m in model.mixers)
    return 0.0 if exact else GRAD_LEAK_RTOLS[dtype_of(model)]


def in_dtype(model: LanguageModel, length: int | None = None) -> str:
    """' at length 1024 in float32' - where a message's finding was made."""
    return (f" at length {length}" if length else "") + f" in {dtype_name(dtype_of(model))}"


# --- tiles and boundaries ---------------------------------------------------------------------

def tiles_of(model: LanguageModel) -> dict[str, int]:
    """Every mixer's declared tiles, {name: size}; a name with different sizes per layer
    gets the layer index appended."""
    out: dict[str, int] = {}
    for i, mixer in enumerate(model.mixers):
        for name, size in mixer.tiles().items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ConformanceError(f"layer {i} ({type(mixer).__name__}).tiles() gives "
                                       f"{name}={size!r}; tile sizes must be positive ints")
            key = name if out.get(name, size) == size else f"{name}@layer{i}"
            out[key] = size
    return out


def boundaries(tiles: dict[str, int], length: int) -> list[int]:
    """Sampled tile boundaries b (a tile starts at b) inside (0, length - 1): for each size,
    its first multiple, its first multiple from 512 on (where long-only bugs start) and its
    last multiple before the end (the most past behind it)."""
    out = set()
    for s in set(tiles.values()):
        last = ((length - 2) // s) * s
        out |= {s, -(-512 // s) * s, last}
    return sorted(b for b in out if 0 < b < length - 1)


def where(pos: int, tiles: dict[str, int]) -> str:
    """'position 63 (last of chunk=8 #7, first of ...)' - where a position sits in each tile."""
    notes = []
    for name, s in tiles.items():
        if s == 1:  # every position is a boundary: nothing to say
            continue
        k, r = divmod(pos, s)
        if r == s - 1:
            notes.append(f"last of {name}={s} tile #{k}")
        elif r == 0:
            notes.append(f"first of {name}={s} tile #{k}")
        else:
            notes.append(f"{r} into {name}={s} tile #{k}")
    return f"position {pos}" + (f" ({'; '.join(notes)})" if notes else "")


# --- comparisons ------------------------------------------------------------------------------

def scale_of(x: torch.Tensor) -> float:
    return max(float(x.detach().abs().max()), 1e-6) if x.numel() else 1.0


def output_scale(want: torch.Tensor) -> float:
    """The scale tolerances are relative to: the first SCALE_POSITIONS positions of a
    (B, T, ...) reference output, so it does not grow with T."""
    return scale_of(want[:, :SCALE_POSITIONS] if want.dim() > 1 else want)


@dataclass
class Disagreement:
    """Where two (B, T, ...) outputs differ by more than the tolerance (positions in T)."""

    first: int
    diff: float          # |got - want| at ``first``
    worst: int
    worst_diff: float
    count: int           # positions that disagree
    scale: float
    rtol: float
    non_finite: bool = False


def disagreement(got: torch.Tensor, want: torch.Tensor, *, rtol: float, scale: float | None = None) -> Disagreement | None:
    """None if ``got`` agrees with ``want`` to ``rtol`` x ``scale`` at every position (a
    non-finite value in ``got`` never agrees); compared in float64."""
    if got.shape != want.shape:
        raise ConformanceError(f"shape {tuple(got.shape)} != {tuple(want.shape)}")
    scale = output_scale(want) if scale is None else scale
    err = (got.double() - want.double()).abs()
    err = torch.where(torch.isfinite(got), err, torch.full_like(err, torch.inf))
    per_pos = err.flatten(2).amax(-1).amax(0) if err.dim() > 2 else err.amax(0)  # (T,)
    bad = (per_pos > rtol * scale).nonzero()
    if not len(bad):
        return None
    first = int(bad[0])
    return Disagreement(first, float(per_pos[first]), int(per_pos.argmax()), float(per_pos.max()), len(bad),
                        scale, rtol, non_finite=not torch.isfinite(got).all())


def describe(d: Disagreement, tiles: dict[str, int], offset: int = 0) -> str:
    """'first disagreement at position 700 (...): |diff| 0.1 > 0.0001 x output scale 2.3 (...)'"""
    if d.non_finite and d.diff == float("inf"):
        return f"non-finite values from {where(offset + d.first, tiles)}"
    return (f"first disagreement at {where(offset + d.first, tiles)}: |diff| {d.diff:.3g} > {d.rtol:g} x "
            f"output scale {d.scale:.3g} (max |diff| {d.worst_diff:.3g} at position {offset + d.worst}; "
            f"{d.count} positions disagree)")


def precision_hint(model: LanguageModel, d: Disagreement) -> str:
    """For a float64 model whose forms differ by float32 rounding: say so."""
    if dtype_of(model) == torch.float64 and d.worst_diff < 1e-5 * d.scale:
        return ("; differences this small are float32 rounding: does a form compute in float32 (a .float(), "
                "a float32 state or buffer)? In a float64 model every form must compute in float64 "
                "(archs/precision.py)")
    return ""


def compare(got: torch.Tensor, want: torch.Tensor, what: str, *, tiles: dict[str, int] | None = None,
            length: int | None = None, offset: int = 0, rtol: float = RTOL, scale: float | None = None) -> None:
    """(B, T, ...) tensors agree to ``rtol`` of ``want``'s scale; else name the first position."""
    try:
        d = disagreement(got, want, rtol=rtol, scale=scale)
    except ConformanceError as exc:
        raise ConformanceError(f"{what}: {exc}") from None
    if d is not None:
        at = f" at length {length}" if length else ""
        raise ConformanceError(f"{what}{at}: {describe(d, tiles or {}, offset)}")


@contextlib.contextmanager
def tap_embeddings(model: LanguageModel, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Replace the token embeddings (B, L, D) the blocks see by ``edit(embeddings)``."""
    handle = model.embed.register_forward_hook(lambda _m, _i, out: edit(out))
    try:
        yield
    finally:
        handle.remove()


def check_deterministic(model: LanguageModel, x: torch.Tensor, *, length: int | None = None) -> torch.Tensor:
    """Two forwards of the same input agree (checked before any comparison of forms, so a
    random forward - dropout left on in eval mode - is reported as such, not as a causality,
    batch or decode failure). Returns the logits."""
    with torch.no_grad():
        a, b = model(x), model(x)
    scale = output_scale(a)
    err = float((a.double() - b.double()).abs().max())
    if not err <= rtol_of(model) * scale:
        raise ConformanceError(f"not deterministic{in_dtype(model, length)}: two forwards of the same input "
                               f"differ by {err:.3g} (output scale {scale:.3g}); comparisons of forms "
                               f"mean nothing until the forward is deterministic in eval mode (dropout "
                               f"or noise left on?)")
    return a


def usable_lengths(model: LanguageModel, lengths: tuple[int, ...]) -> list[int]:
    """The requested lengths, capped at the model's max_seq_len (deduplicated)."""
    limit = model.max_seq_len
    return sorted({min(n, limit) if limit else n for n in lengths})
