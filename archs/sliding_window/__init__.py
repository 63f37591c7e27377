"""Sliding-window attention with attention sinks (Mistral-style local attention; StreamingLLM sinks)."""
from __future__ import annotations

from archs._registry import TAB20, register_arch
from archs.model import LanguageModel, LMConfig, build_lm
from archs.sliding_window.chunked import windowed_attention
from archs.sliding_window.cache import WindowCache
from archs.sliding_window.layer import SlidingWindowAttention, SlidingWindowConfig

# window=4 and n_sink=1 so the conformance length (21) runs past the window and the sink
# matters; auto then takes the chunked path (21 >= 4 · 4).
_TINY = dict(d_model=32, n_layers=2, n_heads=4, window=4, n_sink=1)


@register_arch("sliding_window", family="attention", mixer=SlidingWindowAttention, letter="W",
               color=TAB20[18],
               description="Sliding-window softmax attention with StreamingLLM attention sinks; "
                           "bounded KV cache (n_sink + window tokens)",
               tiny=_TINY)
def sliding_window(vocab_size: int = 256, d_model: int = 128, n_layers: int = 2, *,
                   window: int = 128, n_sink: int = 4, n_heads: int = 4, n_kv_heads: int | None = None,
                   pos_encoding: str = "rope", rope_base: float = 10000.0, backend: str = "auto",
                   sdpa_backend: str | None = None, attn_bias: bool = False,
                   block_size: int | None = None, blocked_min_ratio: float = 4.0,
                   **shell) -> LanguageModel:
    """Pre-norm decoder whose attention sees the last ``window`` tokens plus ``n_sink`` sinks."""
    cfg = LMConfig(vocab_size, d_model, n_layers, pos_encoding=pos_encoding, **shell)
    attn = SlidingWindowConfig(d_model, n_heads, n_kv_heads, pos_encoding, rope_base, attn_bias,
                               backend, sdpa_backend, window=window, n_sink=n_sink,
                               block_size=block_size, blocked_min_ratio=blocked_min_ratio)
    return build_lm(cfg, lambda i: SlidingWindowAttention(attn))


__all__ = ["SlidingWindowAttention", "SlidingWindowConfig", "WindowCache", "sliding_window",
           "windowed_attention"]
