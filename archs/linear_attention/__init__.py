"""Causal linear attention (Katharopoulos et al. 2020), optionally decayed (RetNet / GLA).

Importable on a CPU-only machine: the fla kernels in ``fused`` are imported lazily.
"""
from archs.linear_attention.layer import LinearAttentionConfig, LinearAttentionMixer
from archs.linear_attention.ref import (
    linear_attn_quadratic,
    linear_attn_recurrent,
    linear_attn_step,
    retnet_log_decay,
    state_shape,
)
from archs.linear_attention.chunked import linear_attn_chunked
from archs.linear_attention.fused import fla_available, linear_attn_fused, linear_attn_fused_step
from archs._registry import TAB20, register_arch
from archs.model import LanguageModel, LMConfig, build_lm


_C = LinearAttentionConfig  # the one place the defaults live (with the why of each)


def linear_attention(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *,
                     n_heads: int = _C.n_heads, head_dim: int | None = _C.head_dim,
                     feature_map: str = _C.feature_map, decay: str = _C.decay,
                     normalize: bool = _C.normalize, chunk_size: int = _C.chunk_size,
                     backend: str = _C.backend, **shell) -> LanguageModel:
    """Causal linear attention LM (Katharopoulos et al. 2020); ``decay`` gives RetNet / GLA."""
    cfg = LMConfig(vocab_size, d_model, n_layers, **shell)
    mixer = LinearAttentionConfig(d_model, n_heads, head_dim, feature_map, decay, normalize,
                                  chunk_size=chunk_size, backend=backend)
    return build_lm(cfg, lambda i: LinearAttentionMixer(mixer))


_TINY = dict(d_model=32, n_layers=2, n_heads=4, chunk_size=8)
register_arch("linear_attention", family="linear_attention",
              description="causal linear attention, elu(x)+1 features with normaliser "
                          "(Katharopoulos et al. 2020)",
              mixer=LinearAttentionMixer, letter="L", color=TAB20[4], tiny=_TINY)(linear_attention)
register_arch("retnet", family="linear_attention",
              description="retention: linear attention with fixed per-head decay and "
                          "per-head norm (Sun et al. 2023)",
              defaults=dict(feature_map="identity", decay="fixed", normalize=False),
              mixer=LinearAttentionMixer, color=TAB20[5], tiny=_TINY)(linear_attention)

__all__ = [
    "LinearAttentionConfig", "LinearAttentionMixer",
    "linear_attn_quadratic", "linear_attn_recurrent", "linear_attn_chunked", "linear_attn_step",
    "retnet_log_decay", "state_shape",
    "fla_available", "linear_attn_fused", "linear_attn_fused_step",
]
