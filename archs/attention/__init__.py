"""Dense causal softmax attention: the Transformer and its positional-encoding variants."""
from __future__ import annotations

from archs._registry import register_arch
from archs.attention.cache import KVCache
from archs.attention.layer import Attention, AttentionConfig
from archs.model import LanguageModel, LMConfig, build_lm

_TINY = dict(d_model=32, n_layers=2, n_heads=4)
_BACKENDS = Attention.backends


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
_VARIANTS = {
    "transformer": ("rope", "Transformer with rotary positions (RoPE, Su et al. 2021)"),
    "transformer_nope": ("none", "Transformer with no positional encoding (NoPE): causal mask only"),
    "transformer_sinusoidal": ("sinusoidal", "Transformer with the original sinusoidal absolute positions"),
    "transformer_learned": ("learned", "Transformer with a learned absolute position table (bounded length)"),
    "transformer_alibi": ("alibi", "Transformer with ALiBi linear distance biases (Press et al. 2022)"),
}
_LEARNED_MAX = 1024  # default table size; set max_seq_len to the training length for experiments

for _name, (_pe, _desc) in _VARIANTS.items():
    _defaults = {"pos_encoding": _pe}
    if _pe == "learned":
        _defaults["max_seq_len"] = _LEARNED_MAX
    register_arch(_name, family="attention", description=_desc, defaults=_defaults,
                  backends=_BACKENDS, max_seq_len=_LEARNED_MAX if _pe == "learned" else None,
                  tiny=_TINY)(transformer)

__all__ = ["Attention", "AttentionConfig", "KVCache", "transformer"]
