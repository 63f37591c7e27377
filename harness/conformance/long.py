"""The long checks: causality and the agreement of forward / prefill / step at the lengths
the harness reports (1K-16K), on both sides of every declared tile boundary.

Cheap by construction: the tiny model, batch 1-8, and
* causality by gradients: one backward from output position t gives d out_t / d x_j for
  every input embedding x_j; a non-zero one at j > t is a leak. Rows of one batch carry
  different t (rows are independent - checked first), so a few passes cover every tile's
  boundary; plus cuts: perturb the embeddings after position c, and no output <= c may
  move (one forward covers every leak across the cut; c = L/2 - 1 is the future half);
  A longer length re-tests only what a shorter one could not reach (its middle and end);
* decode: prefill most of the sequence, then step across the last tiles; step from the
  start past token 50 and the first tiles; prefill in uneven chunks straddling each tile.
"""
from __future__ import annotations

import torch

from archs.model import LanguageModel

from harness.conformance._common import (CHECKED_LENGTHS, GRAD_LEAK_RTOL, RTOL, VOCAB,
                                         ConformanceError, boundaries, check_deterministic, compare,
                                         scale_of, tap_embeddings, tiles_of, usable_lengths, where)

# Rows per pass: attention's L x L scores must stay small on a shared CPU.
ROW_BUDGET = 8192
# Steps decoded from position 0: past token 50 (where slow drift shows) and the first tiles.
STEPS_FROM_START = 160
# Steps decoded after a long prefill: crosses the last tiles of the tiny variants.
STEPS_AT_END = 48


def _long_tokens(length: int, seed: int = 11) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (1, length), generator=g)


def _rows_per_pass(length: int) -> int:
    return max(1, ROW_BUDGET // length)


def _around(tiles: dict[str, int], length: int) -> set[int]:
    """Positions just before and at each sampled tile boundary."""
    return {p for b in boundaries(tiles, length) for p in (b - 1, b)}


def _grad_positions(tiles: dict[str, int], length: int) -> list[int]:
    """Output positions t for the gradient test: around the sampled boundaries, the middle,
    position 512 and the next-to-last."""
    ts = _around(tiles, length) | {length // 2, min(512, length - 2), length - 2}
    return sorted(t for t in ts if 0 <= t < length - 1)


def _cut_positions(tiles: dict[str, int], length: int) -> list[int]:
    """Cuts c for the perturbation test: around the sampled boundaries, and the future
    half (c = L/2 - 1)."""
    cs = _around(tiles, length) | {length // 2 - 1}
    return sorted(c for c in cs if 0 <= c < length - 1)


def _gradient_leaks(model: LanguageModel, x: torch.Tensor, ts: list[int]) -> list[tuple[int, int, float]]:
    """For rows r with output position ts[r]: (t, first leaking j > t, relative size) per leak."""
    taps: list[torch.Tensor] = []

    def keep(h: torch.Tensor) -> torch.Tensor:
        h = h.detach().requires_grad_(True)
        taps.append(h)
        return h

    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # only the inputs' gradient is wanted
        p.requires_grad_(False)
    try:
        with tap_embeddings(model, keep):
            out = model(x.expand(len(ts), -1))  # (R, L, V)
        g = torch.Generator().manual_seed(len(ts))
        w = torch.randn(out.shape[-1], generator=g)
        rows = torch.arange(len(ts))
        (out[rows, torch.tensor(ts)] @ w).sum().backward()
    finally:
        for p in params:
            p.requires_grad_(True)
    grad = taps[0].grad.abs().amax(-1)  # (R, L): |d out_t / d x_j|
    leaks = []
    for r, t in enumerate(ts):
        past = float(grad[r, : t + 1].max())
        future = grad[r, t + 1:]
        bad = (future > GRAD_LEAK_RTOL * max(past, 1e-12)).nonzero()
        if len(bad):
            leaks.append((t, t + 1 + int(bad[0]), float(future.max()) / max(past, 1e-12)))
    return leaks


def _cut_moves(model: LanguageModel, x: torch.Tensor, cuts: list[int]) -> list[tuple[int, int, float]]:
    """Row 0 unchanged, row r perturbs embeddings after cuts[r-1]: (cut, first moved pos, rel)."""
    n, g = x.shape[1], torch.Generator().manual_seed(7)

    def perturb(h: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(h.shape[1:], generator=g).to(h) * h.detach().std()
        after = torch.stack([torch.zeros(n, dtype=torch.bool)] +
                            [torch.arange(n) > c for c in cuts])  # (R, L)
        return h + after[..., None].to(h) * noise

    with torch.no_grad(), tap_embeddings(model, perturb):
        out = model(x.expand(len(cuts) + 1, -1))
    scale = scale_of(out[0])
    moved = []
    for r, c in enumerate(cuts, start=1):
        diff = (out[r, : c + 1] - out[0, : c + 1]).abs().amax(-1)
        bad = (diff > RTOL * scale).nonzero()
        if len(bad):
            moved.append((c, int(bad[0]), float(diff.max()) / scale))
    return moved


def _alone(model: LanguageModel, x: torch.Tensor, leak: tuple[int, int, float], grad: bool) -> bool:
    """Re-check one leak in a batch of its own (so a batch-mixing model is named as such)."""
    if grad:
        return bool(_gradient_leaks(model, x, [leak[0]]))
    return bool(_cut_moves(model, x, [leak[0]]))


def check_long_causality(model: LanguageModel, lengths: tuple[int, ...] = CHECKED_LENGTHS, **_) -> str:
    if not hasattr(model, "embed"):
        return ("skipped: differentiates and perturbs input embeddings, and this model has none "
                "(a count table); `causality` checks it on tokens")
    tiles = tiles_of(model)
    done: list[int] = []
    for n in usable_lengths(model, lengths):
        x = _long_tokens(n)
        check_deterministic(model, x, length=n)
        k = _rows_per_pass(n)
        for kind, positions, probe in (("gradient", _grad_positions(tiles, n), _gradient_leaks),
                                       ("cut", _cut_positions(tiles, n), _cut_moves)):
            if done:  # positions a shorter length already covered: only the new far ones
                positions = [p for p in positions if p >= done[-1] - 2 or p >= n // 2 - 1]
            for i in range(0, len(positions), k):
                found = probe(model, x, positions[i:i + k])
                if not found:
                    continue
                leak = found[0]
                if not _alone(model, x, leak, grad=kind == "gradient"):
                    raise ConformanceError(
                        f"output depends on other rows of the batch: at length {n} the {kind} "
                        f"test of {where(leak[0], tiles)} fails in a batch but not alone")
                t, j, rel = leak
                if kind == "gradient":
                    raise ConformanceError(
                        f"causality leak at length {n}: the output at {where(t, tiles)} has a "
                        f"gradient w.r.t. the input at future {where(j, tiles)} "
                        f"({rel:.3g} x the largest past one)")
                raise ConformanceError(
                    f"causality leak at length {n}: perturbing inputs after position {t} "
                    f"changed the output at {where(j, tiles)} ({rel:.3g} x output scale); "
                    f"cut at {where(t, tiles)}")
        done.append(n)
    return f"no leak at lengths {done} (tiles {tiles or 'none'})"


def _uneven_chunks(tiles: dict[str, int], length: int) -> list[int]:
    """Chunk lengths that straddle every tile: 1, s-1, s+1, 2s+1 for each size s, then large
    irregular chunks to the end."""
    sizes: list[int] = [1]
    for s in sorted(set(tiles.values())):
        sizes += [c for c in (s - 1, s + 1, 2 * s + 1) if c > 0]
    sizes += [97, length // 3 + 5, length // 2 + 3]
    out, total = [], 0
    for c in sizes:
        if total >= length:
            break
        c = min(c, length - total)
        out.append(c)
        total += c
    if total < length:
        out.append(length - total)
    return out


def _prefill(model: LanguageModel, x: torch.Tensor, chunks: list[int]):
    state = model.init_state(x.shape[0])
    outs, pos = [], 0
    for c in chunks:
        y, state = model.prefill(x[:, pos:pos + c], state)
        outs.append(y)
        pos += c
    return torch.cat(outs, dim=1), state


def _steps(model: LanguageModel, x: torch.Tensor, state) -> torch.Tensor:
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1)


def check_long_decode(model: LanguageModel, lengths: tuple[int, ...] = CHECKED_LENGTHS, **_) -> str:
    """step == forward and prefill == forward across several tiles, at each length."""
    tiles = tiles_of(model)
    done = []
    with torch.no_grad():
        for i, n in enumerate(usable_lengths(model, lengths)):
            x = _long_tokens(n, seed=12)
            ref = check_deterministic(model, x, length=n)
            if i == 0:  # step from the start (the same prefix at every length)
                m = min(STEPS_FROM_START, n)
                got = _steps(model, x[:, :m], model.init_state(1))
                compare(got, ref[:, :m], "token-by-token step from position 0 vs parallel forward",
                        tiles=tiles, length=n)
            chunks = _uneven_chunks(tiles, n)
            got, _ = _prefill(model, x, chunks)
            compare(got, ref, f"prefill in chunks {chunks} vs parallel forward", tiles=tiles, length=n)
            split = max(n - STEPS_AT_END, 1)
            _, state = _prefill(model, x[:, :split], [split])
            got = _steps(model, x[:, split:], state)
            compare(got, ref[:, split:], f"prefill of {split} tokens then step vs parallel forward",
                    tiles=tiles, length=n, offset=split)
            done.append(n)
    return f"step and uneven prefill == forward at lengths {done} (tiles {tiles or 'none'})"
