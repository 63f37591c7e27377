"""Conformance of bidirectional (encoder-only, ``causal=False``) models: what applies.

Shapes, determinism, batch independence, train == eval mode, gradients, buffers, learning
and the length limit run as for any model. In place of the causal checks:

* ``causality`` becomes "the future IS used": perturbing the tokens after t must change
  outputs at or before t (a causal model changes none of them: exactly 0);
* ``step_matches_forward`` becomes "reference == fast path": the same weights on the
  ``ref`` backend give the same outputs (the two-pass wrapper and the unmasked attention
  go through every backend's own code);
* the decode checks (prefill, state size, long decode) and the long causality check are
  skipped with the reason: a bidirectional model has no step-by-step form.
"""
from __future__ import annotations

from typing import Callable

import torch

from archs.model import LanguageModel

from harness.conformance._common import (LENGTH, ConformanceError, check_deterministic, compare,
                                         scale_of, tiles_of, tokens)

NO_DECODE = "skipped: bidirectional models do not decode (causal=false: no step-by-step form)"
SKIPPED = {
    "prefill_matches_forward": NO_DECODE,
    "state_size": NO_DECODE,
    "long_decode": NO_DECODE,
    "long_prefill": NO_DECODE,
    "long_causality": "skipped: bidirectional by design (the future is used: see causality)",
}
# A dependence smaller than this fraction of the output scale could be rounding; a causal
# model gives exactly 0 and a bidirectional one far more (tiny float32 models: > 1e-5).
USED_RTOL = 1e-6


def check_sees_future(model: LanguageModel, **_) -> str:
    """Perturbing every token after t changes outputs at positions <= t, for each t tested."""
    x = tokens()
    reference = check_deterministic(model, x, length=LENGTH)
    moved = []
    for t in (0, LENGTH // 2, LENGTH - 2):
        changed = x.clone()
        changed[:, t + 1:] = tokens(seed=1)[:, t + 1:]
        with torch.no_grad():
            out = model(changed)
        diff = float((out[:, : t + 1] - reference[:, : t + 1]).abs().max())
        if not diff > USED_RTOL * scale_of(reference):
            raise ConformanceError(
                f"bidirectional (causal=false) but the outputs at positions <= {t} do not change when "
                f"the tokens after {t} do (max |diff| {diff:.3g}): the model does not see the future")
        moved.append(f"{diff / scale_of(reference):.2g}")
    return f"the future is used: changing the tokens after t moves outputs <= t by {', '.join(moved)} x scale"


def check_matches_reference(model: LanguageModel, build: Callable[[str | None], LanguageModel], **_) -> str:
    """The same weights on the ``ref`` backend compute the same forward."""
    used = model.backends("cpu", LENGTH)
    if used == "ref":
        return "skipped: this is the reference backend"
    try:
        reference = build("ref")
    except (TypeError, ValueError) as exc:  # no backend keyword, or no "ref" among its backends
        return f"skipped: no reference backend ({type(exc).__name__}: {str(exc)[:80]})"
    reference.load_state_dict(model.state_dict())
    x = tokens(seed=6, length=64)
    with torch.no_grad():
        compare(model(x), reference.eval()(x), f"backend {used} vs the reference",
                tiles=tiles_of(model))
    return f"backend {used} == ref (64 tokens)"


REPLACED = {"causality": check_sees_future}
