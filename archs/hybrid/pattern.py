"""A layer-pattern language for hybrid models: one letter per layer, repeated to depth.

    "MMMMAMMM"  Jamba: 1 attention : 7 Mamba per 8-layer block
    "MW"        Samba-like: Mamba alternating with sliding-window attention
    "DDDA"      Mamba-2 with attention every fourth layer

Letters name mixer factories; families are imported only when a pattern uses them.
Plugins may add letters with ``register_mixer_letter``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from archs.mixer import Mixer


@dataclass(frozen=True)
class MixerLetter:
    letter: str
    description: str
    factory: str  # "module:function" building a mixer from (d_model, **kwargs)

    def build(self, d_model: int, kwargs: dict[str, Any]) -> Mixer:
        module, fn = self.factory.split(":")
        return getattr(importlib.import_module(module), fn)(d_model, **kwargs)


MIXER_LETTERS: dict[str, MixerLetter] = {}


def register_mixer_letter(letter: str, description: str, factory: str) -> None:
    if len(letter) != 1 or not letter.isalpha() or not letter.isupper():
        raise ValueError(f"a mixer letter is one upper-case letter, got {letter!r}")
    old = MIXER_LETTERS.get(letter)
    if old is not None and old.factory != factory:
        raise ValueError(f"mixer letter {letter!r} already means {old.description} ({old.factory})")
    MIXER_LETTERS[letter] = MixerLetter(letter, description, factory)


for _letter, _desc, _factory in [
    ("A", "causal softmax attention", "archs.attention.layer:make_attention"),
    ("M", "Mamba-1 selective SSM", "archs.mamba.layer:make_mamba"),
    ("D", "Mamba-2 (SSD, state-space duality)", "archs.mamba2.layer:make_mamba2"),
    ("L", "linear attention", "archs.linear_attention.layer:make_linear_attention"),
    ("W", "sliding-window attention", "archs.sliding_window.layer:make_sliding_window"),
    ("I", "Infini-attention", "archs.infini_attention.layer:make_infini_attention"),
    ("R", "LSTM", "archs.rnn.lstm:make_lstm"),
]:
    register_mixer_letter(_letter, _desc, _factory)


def parse_pattern(pattern: str, n_layers: int | None) -> list[str]:
    """Validate ``pattern`` and expand it to one letter per layer."""
    if not pattern:
        raise ValueError("layer pattern is empty; give one letter per layer, e.g. 'MMMMAMMM'")
    unknown = sorted({c for c in pattern if c not in MIXER_LETTERS})
    if unknown:
        known = ", ".join(f"{k}={v.description}" for k, v in sorted(MIXER_LETTERS.items()))
        raise ValueError(f"layer pattern {pattern!r} has unknown letter(s) {unknown}; known: {known}")
    n_layers = n_layers or len(pattern)
    if n_layers % len(pattern):
        raise ValueError(f"n_layers={n_layers} is not a multiple of the pattern length "
                         f"{len(pattern)} ({pattern!r}); use a multiple or another pattern")
    return list(pattern * (n_layers // len(pattern)))


def build_mixers(layout: list[str], d_model: int,
                 mixer_kwargs: dict[str, dict[str, Any]] | None = None) -> list[Mixer]:
    mixer_kwargs = dict(mixer_kwargs or {})
    stray = sorted(set(mixer_kwargs) - set(layout))
    if stray:
        raise ValueError(f"mixer_kwargs given for letter(s) {stray} that the pattern does not use")
    return [MIXER_LETTERS[c].build(d_model, dict(mixer_kwargs.get(c, {}))) for c in layout]


def is_moe_layer(i: int, moe_every: int, moe_offset: int) -> bool:
    """Jamba puts the MoE MLP on every ``moe_every``-th layer starting at ``moe_offset``."""
    return moe_every > 0 and i % moe_every == moe_offset % moe_every


FactoryFn = Callable[..., Mixer]
