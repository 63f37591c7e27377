"""Bidirectional (encoder-only) mixers: ``LMConfig(causal=False)``, ``model.causal=false``.

A bidirectional model's output at position t depends on the whole sequence, after t too,
as in BERT's encoder. Each mixer class says how it gets there with its class attribute
``bidirectional``:

* ``"mask"``      the mixer has a non-causal form of its own and reads ``self.causal``:
                  attention simply drops the causal mask (ALiBi then biases by |i - j|).
* ``"two_pass"``  a recurrence has no such form, so the model runs two copies of it, one
                  over the sequence and one over the sequence reversed, and adds their
                  outputs (``BidirectionalMixer``): the Mamba, Mamba-2, linear-attention
                  and LSTM families.
* ``None``        (the default) it cannot run bidirectionally here; asking for it is an
                  error naming the families that can. Sliding-window attention and
                  Infini-attention stay causal-only: their bounded caches are the point of them.

A mixer whose class sets ``causal = False`` is bidirectional by nature (an encoder-only
plugin); its architecture registers ``defaults={"causal": False}`` and is used as it is.

How the two passes combine, and with which parameters: y = f(x) + flip(g(flip(x))),
flip reversing the sequence axis, f and g two instances of the same mixer built by the
same factory, so with **separate parameters** (each direction its own projections,
convolution and recurrence). This is BiLSTM's arrangement - its concatenated directions
followed by a linear map equal a sum of two per-direction linear maps - and Vim's, whose
two directional SSMs have their own parameters; Vim additionally shares the in/out
projections and Caduceus ties every weight of the two directions, which we do not. Both
directions see position t itself. A bidirectional model therefore has twice the mixer
parameters of its causal twin at the same width (``model.match=params`` picks a smaller
width for it; every row records the real count).

Bidirectional models do not decode: there is no step-by-step form when every output needs
the tokens after it. ``step``/``prefill`` raise ``BidirectionalDecodeError``.
"""
from __future__ import annotations

from typing import Callable

import torch

from archs.mixer import Mixer, State

MODES = ("mask", "two_pass")


class BidirectionalDecodeError(ValueError):
    """A step-by-step form was asked of a bidirectional (causal=False) model or mixer."""


DECODE_HINT = ("bidirectional models (causal=False) do not decode: each output depends on the "
               "tokens after it, so there is no step-by-step form; run the parallel forward")


def is_causal(mixer: Mixer) -> bool:
    return getattr(mixer, "causal", True) is not False


def capable_archs() -> list[str]:
    """Registered architectures whose mixers can all run bidirectionally."""
    from archs._registry import arch_info, list_archs, mixer_letters

    def ok(cls) -> bool:
        return getattr(cls, "bidirectional", None) in MODES or getattr(cls, "causal", True) is False

    names = []
    for name in list_archs():
        mixer = arch_info(name).mixer
        if mixer is not None and ok(mixer):
            names.append(name)
    letters = "".join(k for k, v in mixer_letters().items() if ok(v.mixer))
    return names + [f"hybrid patterns of the letters {letters}"]


class BidirectionalMixer(Mixer):
    """Two passes of a causal mixer, forward and reversed, added (see the module doc)."""

    causal = False
    state_growth = "constant"

    def __init__(self, forward_mixer: Mixer, backward_mixer: Mixer) -> None:
        super().__init__()
        if type(forward_mixer) is not type(backward_mixer):
            raise TypeError(f"both directions must be the same mixer class, got "
                            f"{type(forward_mixer).__name__} and {type(backward_mixer).__name__}")
        self.forward_mixer, self.backward_mixer = forward_mixer, backward_mixer
        self.backends = forward_mixer.backends
        self.relative_positions = forward_mixer.relative_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        backward = self.backward_mixer(x.flip(1)).flip(1)
        return self.forward_mixer(x) + backward

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return None  # nothing to carry: this mixer never decodes

    def step(self, x_t: torch.Tensor, state: State):
        raise BidirectionalDecodeError(DECODE_HINT)

    def prefill(self, x: torch.Tensor, state: State):
        raise BidirectionalDecodeError(DECODE_HINT)

    def tiles(self) -> dict[str, int]:
        return self.forward_mixer.tiles()

    def resolved_backend(self, device=None, seq_len=None) -> str:
        return self.forward_mixer.resolved_backend(device, seq_len)

    def sequence_flops(self, batch_size: int, seq_len: int) -> int | None:
        one = self.forward_mixer.sequence_flops(batch_size, seq_len)
        return None if one is None else 2 * one

    def aux_loss(self) -> torch.Tensor | None:
        losses = [a for m in (self.forward_mixer, self.backward_mixer) if (a := m.aux_loss()) is not None]
        return torch.stack(losses).sum() if losses else None


def make_bidirectional(make_mixer: Callable[[int], Mixer], layer: int) -> Mixer:
    """Layer ``layer``'s mixer in its bidirectional form; ``make_mixer`` builds a fresh
    causal one (called twice for a two-pass mixer: separate parameters per direction)."""
    mixer = make_mixer(layer)
    if not is_causal(mixer):
        return mixer  # bidirectional by nature
    mode = getattr(mixer, "bidirectional", None)
    if mode == "mask":
        mixer.causal = False
        return mixer
    if mode == "two_pass":
        return BidirectionalMixer(mixer, make_mixer(layer))
    if mode is not None:
        raise ValueError(f"{type(mixer).__name__}.bidirectional = {mode!r}; it must be one of "
                         f"{list(MODES)} or None")
    # TypeError, not ValueError: the mixer's class lacks the form, whatever the width (a
    # ValueError would read as "this width is rejected" to archs.sizing's width search)
    raise TypeError(
        f"{type(mixer).__name__} (layer {layer}) cannot run bidirectionally (causal=False / "
        f"model.causal=false): its class declares no `bidirectional` mode. Architectures that "
        f"can: {', '.join(capable_archs())}. A plugin's mixer opts in with the class attribute "
        f"bidirectional = 'two_pass' (or 'mask' if it reads self.causal).")


def check_causal_layers(causal: bool, mixers: list[Mixer]) -> None:
    """Every mixer agrees with the model's ``causal`` setting, or a clear error says why not."""
    for i, mixer in enumerate(mixers):
        if causal and not is_causal(mixer):
            raise ValueError(
                f"layer {i} ({type(mixer).__name__}) is bidirectional but the model was built with "
                f"causal=True; an encoder-only mixer needs causal=False (model.causal=false, or "
                f"register its architecture with defaults={{'causal': False}})")
        if not causal and is_causal(mixer):
            raise ValueError(
                f"causal=False but layer {i} ({type(mixer).__name__}) is causal: build the layers "
                f"with archs.model.build_lm (or archs.bidirectional.make_bidirectional), which "
                f"makes each one bidirectional")


__all__ = ["BidirectionalDecodeError", "BidirectionalMixer", "DECODE_HINT", "MODES",
           "capable_archs", "check_causal_layers", "is_causal", "make_bidirectional"]
