"""A layer-pattern language for hybrid models: one letter per layer, repeated to depth.

    "MMMMAMMM"  Jamba: 1 attention : 7 Mamba per 8-layer block
    "MW"        Samba-like: Mamba alternating with sliding-window attention
    "DDDA"      Mamba-2 with attention every fourth layer

Letters come from the registry: ``register_arch(..., mixer=..., letter="X")`` (built-in
families and plugins alike), listed by ``archs.mixer_letters()``.
"""
from __future__ import annotations

from typing import Any

from archs._registry import mixer_letters
from archs.bidirectional import make_bidirectional
from archs.mixer import Mixer


def parse_pattern(pattern: str, n_layers: int | None) -> list[str]:
    """Validate ``pattern`` and expand it to one letter per layer."""
    if not pattern:
        raise ValueError("layer pattern is empty; give one letter per layer, e.g. 'MMMMAMMM'")
    letters = mixer_letters()
    unknown = sorted({c for c in pattern if c not in letters})
    if unknown:
        known = ", ".join(f"{k}={v.description}" for k, v in letters.items())
        raise ValueError(f"layer pattern {pattern!r} has unknown letter(s) {unknown}; known: {known}")
    n_layers = n_layers or len(pattern)
    if n_layers % len(pattern):
        raise ValueError(f"n_layers={n_layers} is not a multiple of the pattern length "
                         f"{len(pattern)} ({pattern!r}); use a multiple or another pattern")
    return list(pattern * (n_layers // len(pattern)))


def build_mixers(layout: list[str], d_model: int,
                 mixer_kwargs: dict[str, dict[str, Any]] | None = None, causal: bool = True) -> list[Mixer]:
    """One mixer per letter of ``layout``; bidirectional ones when ``causal`` is False."""
    mixer_kwargs = dict(mixer_kwargs or {})
    stray = sorted(set(mixer_kwargs) - set(layout))
    if stray:
        raise ValueError(f"mixer_kwargs given for letter(s) {stray} that the pattern does not use")
    letters = mixer_letters()

    def make(i: int) -> Mixer:
        return letters[layout[i]].build(d_model, dict(mixer_kwargs.get(layout[i], {})))

    return [make(i) if causal else make_bidirectional(make, i) for i in range(len(layout))]


def is_moe_layer(i: int, moe_every: int, moe_offset: int) -> bool:
    """Jamba puts the MoE MLP on every ``moe_every``-th layer starting at ``moe_offset``."""
    return moe_every > 0 and i % moe_every == moe_offset % moe_every

