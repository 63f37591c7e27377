"""The long checks: causality and the agreement of forward / prefill / step at the lengths
the harness reports (1K-16K), on both sides of every declared tile boundary.

Cheap by construction: the tiny model, batch 1-8, and
* causality (harness.conformance.causal) by gradients from output positions around each
  sampled tile boundary, the middle, 512 and the end (exactly 0 to every later input), and
  by cuts there and at the future half (no earlier output moves). A longer length re-tests
  only what a shorter one could not reach (its middle and end);
* decode (``long_decode``): ONE token-by-token pass from position 0 to the longest length,
  compared with the parallel forward at every position of each length (step is causal by
  construction, so this catches a forward that sees the future anywhere, and a step whose
  error grows with the number of tokens: the tolerance does not grow with the length);
* prefill (``long_prefill``): uneven chunks straddling every tile, then steps from that
  state over the last tokens, compared at every position of each length.
A disagreement is judged by harness.conformance.forms (which form is the culprit).
"""
from __future__ import annotations

import torch

from archs.model import LanguageModel

from harness.conformance._common import (CHECKED_LENGTHS, VOCAB, boundaries, check_deterministic,
                                         in_dtype, output_scale, tiles_of, usable_lengths)
from harness.conformance.causal import assert_no_leak
from harness.conformance.forms import judge, prefill_chunks, step_through

# Rows per pass: attention's L x L scores must stay small on a shared CPU.
ROW_BUDGET = 8192
# Tokens stepped after the uneven prefill: crosses the last tiles of the tiny variants.
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


def check_long_causality(model: LanguageModel, lengths: tuple[int, ...] = CHECKED_LENGTHS, **_) -> str:
    if not hasattr(model, "embed"):
        return ("skipped: differentiates and perturbs input embeddings, and this model has none "
                "(a count table); `causality` checks it on tokens")
    tiles = tiles_of(model)
    done: list[int] = []
    for n in usable_lengths(model, lengths):
        x = _long_tokens(n)
        scale = output_scale(check_deterministic(model, x, length=n))
        for kind, positions in (("gradient", _grad_positions(tiles, n)), ("cut", _cut_positions(tiles, n))):
            if done:  # positions a shorter length already covered: only the new far ones
                positions = [p for p in positions if p >= done[-1] - 2 or p >= n // 2 - 1]
            assert_no_leak(model, x, kind, positions, rows=_rows_per_pass(n), scale=scale, tiles=tiles, length=n)
        done.append(n)
    return f"no leak at lengths {done}{in_dtype(model)} (tiles {tiles or 'none'})"


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


def check_long_decode(model: LanguageModel, lengths: tuple[int, ...] = CHECKED_LENGTHS, **_) -> str:
    """ONE token-by-token pass from position 0 to the longest length, == the forward at
    every position of each length (step cannot see the future: a forward leak anywhere
    shows; the tolerance is the same at every length: so does a slow drift)."""
    tiles, ns = tiles_of(model), usable_lengths(model, lengths)
    x = _long_tokens(ns[-1], seed=12)
    with torch.inference_mode():
        stepped, _ = step_through(model, x, model.init_state(1))
    for n in ns:
        forward = check_deterministic(model, x[:, :n], length=n)
        judge(model, x[:, :n], forward, stepped[:, :n], "token-by-token step from position 0", tiles=tiles,
              length=n, witness=("prefill in uneven chunks", lambda m: _prefill(model, x[:, :m], tiles)))
    return f"step from position 0 == forward at every position of lengths {ns}{in_dtype(model)} (tiles {tiles or 'none'})"


def _prefill(model: LanguageModel, x: torch.Tensor, tiles: dict[str, int]) -> torch.Tensor:
    with torch.inference_mode():
        return prefill_chunks(model, x, _uneven_chunks(tiles, x.shape[1]))[0]


def _step(model: LanguageModel, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return step_through(model, x, model.init_state(x.shape[0]))[0]


def check_long_prefill(model: LanguageModel, lengths: tuple[int, ...] = CHECKED_LENGTHS, **_) -> str:
    """Prefill in uneven chunks straddling every tile, then steps over the last tokens from
    that state, == the forward at every position of each length."""
    tiles = tiles_of(model)
    ns = usable_lengths(model, lengths)
    for n in ns:
        x = _long_tokens(n, seed=12)
        forward = check_deterministic(model, x, length=n)
        tail = min(STEPS_AT_END, n // 2)
        chunks = _uneven_chunks(tiles, n - tail)
        with torch.inference_mode():
            head, state = prefill_chunks(model, x[:, :n - tail], chunks)
            last, _ = step_through(model, x[:, n - tail:], state)
        judge(model, x, forward, torch.cat([head, last], dim=1), f"prefill in chunks {chunks} then {tail} steps",
              tiles=tiles, length=n, witness=("token-by-token step from position 0", lambda m: _step(model, x[:, :m])))
    return (f"uneven prefill + steps == forward at every position of lengths {ns}{in_dtype(model)} "
            f"(tiles {tiles or 'none'})")

