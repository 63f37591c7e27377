"""The three forms of a model - parallel forward, token-by-token step, chunked prefill - run
and compared, with a verdict on which one is wrong.

Step decoding is causal by construction (it never receives a future token), so comparing
it with the forward at every position catches a forward that sees the future anywhere.
When forms disagree, the forward is first re-run on the sequence cut right after the first
disagreement: an output that changes then proves the forward sees the future. Otherwise the
third form decides: step and prefill agreeing with each other but not with the forward
point at the forward, and so on.
"""
from __future__ import annotations

from typing import Callable

import torch

from archs.model import LanguageModel, ModelState

from harness.conformance._common import (ConformanceError, describe, disagreement,
                                         in_dtype, output_scale, precision_hint, rtol_of, where)


def step_through(model: LanguageModel, x: torch.Tensor, state: ModelState) -> tuple[torch.Tensor, ModelState]:
    """Token by token from ``state``: (B, T) -> logits (B, T, V), the final state."""
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def prefill_chunks(model: LanguageModel, x: torch.Tensor, chunks: list[int],
                   state: ModelState | None = None) -> tuple[torch.Tensor, ModelState]:
    """Prefill ``x`` in chunks of the given lengths, carrying the state."""
    state = model.init_state(x.shape[0]) if state is None else state
    outs, pos = [], 0
    for c in chunks:
        y, state = model.prefill(x[:, pos:pos + c], state)
        outs.append(y)
        pos += c
    return torch.cat(outs, dim=1), state


def judge(model: LanguageModel, x: torch.Tensor, forward: torch.Tensor, got: torch.Tensor, what: str, *,
          witness: tuple[str, Callable[[int], torch.Tensor]], tiles: dict[str, int], length: int | None = None) -> None:
    """Raise unless ``got`` (an incremental form's logits for ``x``) agrees with ``forward``
    = model(x) at every position, naming the likely culprit.

    At the first disagreement p the forward is re-run on x[:, :p+1]: if its output at p
    changes, the forward sees the future there (a causality leak, whatever the incremental
    forms say). Otherwise ``witness`` = (name, outputs of the first m positions by another
    incremental form) decides: if it sides with ``got`` the forward is suspect, if it sides
    with the forward ``what`` is."""
    rtol, scale = rtol_of(model), output_scale(forward)
    found = disagreement(got, forward, rtol=rtol, scale=scale)
    if found is None:
        return
    at, p = in_dtype(model, length), found.first
    with torch.inference_mode():
        truncated = model(x[:, :p + 1])[:, p:]
        other_what, other = witness[0], witness[1](p + 1)[:, p:p + 1]
    if disagreement(truncated, forward[:, p:p + 1], rtol=rtol, scale=scale) is not None:
        raise ConformanceError(
            f"causality leak{at}: the parallel forward's output at {where(p, tiles)} changes when the inputs "
            f"after it are removed (a forward of {p + 1} tokens vs of {x.shape[1]}), so the forward sees "
            f"future tokens there; {what} cannot, hence it disagrees with it: {describe(found, tiles)}")
    hint = precision_hint(model, found)
    if disagreement(other, got[:, p:p + 1], rtol=rtol, scale=scale) is None:
        raise ConformanceError(
            f"the parallel forward disagrees with {what} and with {other_what}, which agree with each other "
            f"there{at}: {describe(found, tiles)}. The forward does not see future tokens there (checked), so "
            f"either it is wrong (a tile boundary, a length?) or the incremental forms share a bug (the decode "
            f"state's update or its precision?){hint}")
    sides = disagreement(other, forward[:, p:p + 1], rtol=rtol, scale=scale) is None
    verdict = f"; {other_what} agrees with the forward there, so {what} is the likely culprit" if sides else ""
    raise ConformanceError(f"{what} vs parallel forward{at}: {describe(found, tiles)}{verdict}{hint}")
