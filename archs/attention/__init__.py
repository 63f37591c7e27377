"""Dense causal softmax attention: the Transformer and its positional-encoding variants."""
from __future__ import annotations

from archs._registry import TAB20, register_arch
from archs.attention.cache import KVCache
from archs.attention.layer import Attention, AttentionConfig
from archs.model import LanguageModel, LMConfig, build_lm

_TINY = dict(d_model=32, n_layers=2, n_heads=4)


def transformer(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *, n_heads: int = 4,
                n_kv_heads: int | None = None, pos_encoding: str = "rope", rope_base: float = 10000.0,
                backend: str = "auto", sdpa_backend: str | None = None, attn_bias: bool = False,
                **shell) -> LanguageModel:
    """Pre-norm decoder-only Transformer with causal multi-head (optionally grouped-query) attention."""
    cfg = LMConfig(vocab_size, d_model, n_layers, pos_encoding=pos_encoding, **shell)
    attn = AttentionConfig(d_model, n_heads, n_kv_heads, pos_encoding, rope_base, attn_bias,
                           backend, sdpa_backend)
    return build_lm(cfg, lambda i: Attention(attn))


# One registry entry per positional encoding, so sweeps and list_archs() show them all.
# name: (pos_encoding, description, plot colour)
_VARIANTS = {
    "transformer": ("rope", "Transformer with rotary positions (RoPE, Su et al. 2021)", TAB20[0]),
    "transformer_nope": ("none", "Transformer with no positional encoding (NoPE): causal mask only",
                         TAB20[14]),
    "transformer_sinusoidal": ("sinusoidal", "Transformer with the original sinusoidal absolute "
                               "positions", TAB20[16]),
    "transformer_learned": ("learned", "Transformer with a learned absolute position table "
                            "(bounded length)", TAB20[9]),
    "transformer_alibi": ("alibi", "Transformer with ALiBi linear distance biases (Press et al. 2022)",
                          TAB20[8]),
}
_LEARNED_MAX = 1024  # default table size; set max_seq_len to the training length for experiments

for _name, (_pe, _desc, _color) in _VARIANTS.items():
    _defaults = {"pos_encoding": _pe}
    if _pe == "learned":
        _defaults["max_seq_len"] = _LEARNED_MAX
    _main = _name == "transformer"  # the one that gives attention its pattern letter
    register_arch(_name, family="attention", description=_desc, defaults=_defaults,
                  mixer=Attention, letter="A" if _main else None, color=_color,
                  label_colors={"transformer_rope": TAB20[0], "transformer_math": TAB20[1]} if _main else None,
                  max_seq_len=_LEARNED_MAX if _pe == "learned" else None, tiny=_TINY)(transformer)

__all__ = ["Attention", "AttentionConfig", "KVCache", "transformer"]
