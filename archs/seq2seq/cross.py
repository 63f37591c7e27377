"""Cross-attention: the decoder's queries attend to the encoder's output (Vaswani et al. 2017).

The keys and values come from the encoder output and never change while the decoder
runs, so they are computed once per source (``memory``) and kept as the layer's decode
state, a ``CrossCache``: every decoder token - in the parallel forward, a prefill chunk or
a single step - attends to that cache. No positional encoding acts here (T5, too, puts
positions only in self-attention): which source token a query needs is found by content.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from archs.attention.fused import attention_sdpa
from archs.attention.ref import attention_math
from archs.backends import check_backend
from archs.blocks import heads_merge, heads_split
from archs.mixer import Mixer


@dataclass
class CrossAttentionConfig:
    d_model: int
    n_heads: int = 4
    bias: bool = False
    backend: str = "auto"  # ref (explicit scores) | fused (SDPA) | auto (= fused)

    def __post_init__(self) -> None:
        if self.n_heads <= 0 or self.d_model % self.n_heads:
            raise ValueError(f"cross-attention: d_model={self.d_model} must be a positive multiple of "
                             f"n_heads={self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class CrossCache:
    """The encoder output's keys and values, (B, H, S, Dh) each; None before the source is
    encoded (nothing held yet)."""
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def ready(self) -> bool:
        return self.k is not None


class CrossAttention(Mixer):
    backends = ("ref", "fused", "auto")
    # fixed once the source is encoded: it grows with the source, never with the target
    state_growth = "constant"
    config_class = CrossAttentionConfig

    def __init__(self, cfg: CrossAttentionConfig):
        super().__init__()
        self.cfg = cfg
        backend = check_backend(cfg.backend, self.backends, type(self).__name__)
        self.backend = "fused" if backend == "auto" else backend
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv_proj = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def memory(self, encoded: torch.Tensor) -> CrossCache:
        """Encoder output (B, S, D) -> the cache every decoder token attends to."""
        k, v = self.kv_proj(encoded).chunk(2, dim=-1)
        return CrossCache(heads_split(k, self.cfg.n_heads), heads_split(v, self.cfg.n_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("cross-attention needs the encoder's output: call prefill(x, self.memory(encoded))")

    def init_state(self, batch_size, device=None, dtype=None) -> CrossCache:
        return CrossCache()

    def prefill(self, x: torch.Tensor, state: CrossCache) -> tuple[torch.Tensor, CrossCache]:
        """(B, L, D) decoder positions -> (B, L, D); every query sees every source key."""
        if not state.ready:
            raise ValueError("cross-attention before the source was encoded: the decoder starts at "
                             "the separator")
        q = heads_split(self.q_proj(x), self.cfg.n_heads)
        if self.backend == "ref":
            out = attention_math(q, state.k, state.v, causal=False)
        else:
            out = attention_sdpa(q, state.k, state.v, causal=False)
        return self.o_proj(heads_merge(out)), state

    def step(self, x_t: torch.Tensor, state: CrossCache) -> tuple[torch.Tensor, CrossCache]:
        y, state = self.prefill(rearrange(x_t, "b d -> b 1 d"), state)
        return y[:, 0], state

    def cache_bytes(self, batch_size: int, source_len: int, dtype: torch.dtype) -> int:
        """Bytes of the cache for a ``source_len``-token source: keys and values."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * batch_size * source_len * self.cfg.d_model * itemsize

    def flops(self, batch_size: int, n_queries: int, source_len: int) -> int:
        """Forward FLOPs of one pass: q and output projections per decoder token, the key /
        value projection once per source token, q·kᵀ and p·v for every (query, key) pair."""
        d = self.cfg.d_model
        projections = 2 * 2 * d * d * n_queries + 2 * d * 2 * d * source_len
        products = 2 * 2 * d * n_queries * source_len
        return batch_size * (projections + products)
