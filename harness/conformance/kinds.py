"""Which checks apply to which kind of model - the one place the suite tells them apart.

A causal LM takes every check as written. A bidirectional model (``model.causal`` False)
takes its own versions of the causal ones (``bidirectional.py``); an encoder-decoder (a
``separator`` attribute) is checked through a fixed source / separator / target layout
(``seq2seq.py``).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from harness.conformance import bidirectional, seq2seq

Check = Callable[..., str]


def for_model(name: str, check: Check, model: nn.Module, build: Callable[[str | None], nn.Module]) -> Check:
    """The check ``name`` (function ``check``) as it applies to ``model``; ``build(backend)``
    builds the same architecture on another backend (the reference comparison needs it)."""
    if not getattr(model, "causal", True):
        if name in bidirectional.SKIPPED:
            return lambda _model, **_: bidirectional.SKIPPED[name]
        if name == "step_matches_forward":
            return lambda m, **_: bidirectional.check_matches_reference(m, build)
        return bidirectional.REPLACED.get(name, check)
    if getattr(model, "separator", None) is not None:
        inner = seq2seq.check_seq2seq_state if name == "state_size" else check

        def through_layout(m: nn.Module, rebuild=None, **kw) -> str:
            again = None if rebuild is None else (lambda seed: seq2seq.SeparatorAt(rebuild(seed)))
            return inner(seq2seq.SeparatorAt(m), rebuild=again, **kw)
        return through_layout
    return check
