"""The counting protocol: a model whose training is counting tokens, not gradient steps.

A count-based LM (archs.ngram) plugs into the same apps as the neural ones: its forward
returns log-probabilities as logits, so evaluation, metrics and decoding are the usual
ones. Only its training differs, and the harness asks the model, not its name:

* the class sets ``trains_by_counting = True``;
* ``count(inputs, targets)`` adds one batch - the same (B, L) inputs and targets a neural
  model trains on, IGNORE_INDEX (-100) targets skipped - to its statistics.

``harness.train.train`` then draws the batches it would have drawn for a neural model
(same seed, same steps x batch x length tokens) and passes each to ``count`` once; the
cost app's ``train_step`` times one ``count`` call; the conformance suite skips the
gradient checks with a reason and checks that counting a pattern lowers the loss.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class CountingModel(Protocol):
    trains_by_counting: bool

    def count(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add the (B, L) batch to the model's statistics."""


def trains_by_counting(model: object) -> bool:
    """Whether ``model`` is trained by ``count`` calls instead of gradient steps."""
    return getattr(model, "trains_by_counting", False) is True and callable(getattr(model, "count", None))
