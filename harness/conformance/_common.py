"""What every conformance check shares: the tiny model, inputs, tolerances, tile boundaries,
and comparisons whose failures say at which length, position and boundary forms disagree."""
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
# Tolerance relative to the scale (max |value|) of the reference output: float32 forms
# that sum in a different order differ by ~1e-6 of it; a real bug is orders larger.
RTOL = 1e-4
# A future position whose gradient exceeds this fraction of the largest past gradient
# leaks (exact forms give exactly 0; cancelling forms leave ~1e-7).
GRAD_LEAK_RTOL = 1e-5


class ConformanceError(AssertionError):
    pass


@dataclass
class CheckResult:
    arch: str
    check: str
    passed: bool
    detail: str = ""
    backend: str | None = None


def build_tiny(name: str, backend: str | None = None, seed: int = 0, **overrides) -> LanguageModel:
    """The architecture's tiny variant in float32 eval mode (``backend`` if given)."""
    kwargs = {"vocab_size": VOCAB, **arch_info(name).tiny, **overrides}
    if backend is not None:
        kwargs["backend"] = backend
    torch.manual_seed(seed)
    return create_arch(name, **kwargs).float().eval()


def tokens(seed: int = 0, length: int = LENGTH, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


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


def compare(got: torch.Tensor, want: torch.Tensor, what: str, *, tiles: dict[str, int] | None = None,
            length: int | None = None, offset: int = 0, rtol: float = RTOL) -> None:
    """(B, T, ...) tensors agree to ``rtol`` of ``want``'s scale; else name the first position."""
    if got.shape != want.shape:
        raise ConformanceError(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    scale = scale_of(want)
    err = (got.float() - want.float()).abs()
    if not torch.isfinite(got).all():
        bad = int((~torch.isfinite(got)).flatten(2).any(-1).any(0).nonzero()[0]) if got.dim() > 2 else 0
        raise ConformanceError(f"{what}: non-finite values from {where(offset + bad, tiles or {})}")
    per_pos = err.flatten(2).amax(-1).amax(0) if err.dim() > 2 else err.amax(0)  # (T,)
    bad = (per_pos > rtol * scale).nonzero()
    if len(bad):
        first = int(bad[0])
        at = f" at length {length}" if length else ""
        raise ConformanceError(
            f"{what}{at}: first disagreement at {where(offset + first, tiles or {})}: "
            f"|diff| {float(per_pos[first]):.3g} > {rtol:g} x output scale {scale:.3g} "
            f"(max |diff| {float(per_pos.max()):.3g} at position {offset + int(per_pos.argmax())}; "
            f"{len(bad)} positions disagree)")


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
    random forward is reported as such, not as a causality failure). Returns the logits."""
    with torch.no_grad():
        a, b = model(x), model(x)
    scale = scale_of(a)
    err = float((a - b).abs().max())
    if not err <= RTOL * scale:
        at = f" at length {length}" if length else ""
        raise ConformanceError(f"not deterministic{at}: two forwards of the same input differ by "
                               f"{err:.3g} (output scale {scale:.3g}); comparisons of forms "
                               f"mean nothing until the forward is deterministic in eval mode")
    return a


def usable_lengths(model: LanguageModel, lengths: tuple[int, ...]) -> list[int]:
    """The requested lengths, capped at the model's max_seq_len (deduplicated)."""
    limit = model.max_seq_len
    return sorted({min(n, limit) if limit else n for n in lengths})
