"""Hybrids as layer patterns: Jamba (Mamba + attention + MoE), Samba, or any mix you spell.

No new class per hybrid: a pattern string picks each layer's mixer (see ``pattern.py``),
``moe_every`` puts a top-k routed MoE MLP on every k-th layer.
"""
from __future__ import annotations

from typing import Any

from archs._registry import TAB20 as _TAB20
from archs._registry import mixer_letters, register_arch, register_mixer_letter
from archs.backends import VOCABULARY
from archs.blocks import MLP, MoE
from archs.hybrid.pattern import build_mixers, is_moe_layer, parse_pattern
from archs.model import LanguageModel, LMConfig
from archs.positional import RELATIVE


def hybrid(vocab_size: int = 256, d_model: int = 128, n_layers: int | None = None, *,
           pattern: str = "MMMMAMMM", mixer_kwargs: dict[str, dict[str, Any]] | None = None,
           moe_every: int = 0, moe_offset: int = 1, n_experts: int = 16, top_k: int = 2,
           pos_encoding: str = "none", **shell) -> LanguageModel:
    """A hybrid LM: ``pattern`` (repeated to n_layers) picks each layer's mixer."""
    layout = parse_pattern(pattern, n_layers)
    if moe_every < 0:
        raise ValueError(f"moe_every must be >= 0 (0 = no MoE), got {moe_every}")
    cfg = LMConfig(vocab_size, d_model, len(layout), pos_encoding=pos_encoding, **shell)
    kwargs = {k: dict(v) for k, v in (mixer_kwargs or {}).items()}
    if pos_encoding in RELATIVE:  # relative encodings act inside the layers that take them
        letters = mixer_letters()
        for letter in sorted(set(layout)):
            if letters[letter].mixer.relative_positions:
                kwargs.setdefault(letter, {}).setdefault("pos_encoding", pos_encoding)
    mixers = build_mixers(layout, d_model, kwargs, causal=cfg.causal)
    mlps = []
    for i in range(len(layout)):
        if is_moe_layer(i, moe_every, moe_offset):
            mlps.append(MoE(d_model, n_experts, top_k, "gelu" if cfg.mlp == "gelu" else "swiglu", cfg.mlp_ratio))
        else:
            mlps.append(None if cfg.mlp == "none" else MLP(d_model, cfg.mlp, cfg.mlp_ratio))
    model = LanguageModel(cfg, mixers, mlps)
    model.layout = "".join(layout)
    return model


# backends: the words its layers take (each layer's through mixer_kwargs[letter])
register_arch("jamba", family="hybrid", color=_TAB20[10], description="Jamba (Lieber et al. 2024): Mamba + attention "
              "at 7:1 (attention at layer 4 of each 8-layer block), MoE MLP on every other layer, no PE",
              backends=VOCABULARY,
              defaults=dict(pattern="MMMMAMMM", n_layers=8, moe_every=2, moe_offset=1, n_experts=16, top_k=2),
              tiny=dict(d_model=32, pattern="MA", n_layers=2, n_experts=4, top_k=2,
                        mixer_kwargs={"M": {"d_state": 8, "block_len": 8}}))(hybrid)
register_arch("hybrid", family="hybrid", description="any layer pattern of mixers, e.g. pattern='DDDA'",
              backends=VOCABULARY, color=_TAB20[11], label_colors={"samba": _TAB20[11]},
              defaults=dict(pattern="AR"),
              tiny=dict(d_model=32, pattern="AR", n_layers=2))(hybrid)

__all__ = ["hybrid", "mixer_letters", "parse_pattern", "register_mixer_letter"]
