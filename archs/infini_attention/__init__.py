"""Infini-attention (Munkhdalai et al. 2024): segment-local attention + a compressive memory."""
from __future__ import annotations

from archs._registry import TAB20, register_arch
from archs.infini_attention.layer import InfiniAttention, InfiniAttentionConfig, InfiniState
from archs.infini_attention.ref import feature_map, memory_read, memory_write
from archs.model import LanguageModel, LMConfig, build_lm

# segment_len=8 so the conformance length (21) spans two full segments and a partial one.
_TINY = dict(d_model=32, n_layers=2, n_heads=4, segment_len=8)


@register_arch("infini_attention", family="infini_attention", mixer=InfiniAttention, letter="I",
               color=TAB20[12],
               description="Infini-attention: causal attention within segments plus a linear-attention "
                           "compressive memory of past segments, mixed by a learned per-head gate",
               tiny=_TINY)
def infini_attention(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *,
                     segment_len: int = 128, update: str = "linear", n_heads: int = 4,
                     pos_encoding: str = "rope", rope_base: float = 10000.0, backend: str = "auto",
                     sdpa_backend: str | None = None, attn_bias: bool = False, gate_init: float = 0.0,
                     **shell) -> LanguageModel:
    """Pre-norm decoder whose attention layers are Infini-attention (one memory per head)."""
    cfg = LMConfig(vocab_size, d_model, n_layers, pos_encoding=pos_encoding, **shell)
    attn = InfiniAttentionConfig(d_model, n_heads, None, pos_encoding, rope_base, attn_bias, backend,
                                 sdpa_backend, segment_len=segment_len, update=update,
                                 gate_init=gate_init)
    return build_lm(cfg, lambda i: InfiniAttention(attn))


__all__ = ["InfiniAttention", "InfiniAttentionConfig", "InfiniState", "feature_map",
           "infini_attention", "memory_read", "memory_write"]
