"""Causal multi-head softmax attention as a mixer, with KV-cache decoding and GQA."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from archs.attention.cache import KVCache
from archs.attention import fused_cpu
from archs.attention.fused import (SDPA_KERNELS, attention_flash, attention_sdpa, cpu_kernel_takes,
                                     flash_attn_available)
from archs.attention.ref import attention_math
from archs.backends import check_backend, is_cuda, resolve_backend
from archs.bidirectional import DECODE_HINT, BidirectionalDecodeError
from archs.blocks import heads_merge, heads_split
from archs.mixer import Mixer
from archs.positional import ALiBi, RotaryEmbedding, check_positional


@dataclass
class AttentionConfig:
    d_model: int
    n_heads: int = 4                 # the Mamba paper's induction setup uses 8 at width 128
    n_kv_heads: int | None = None    # < n_heads: grouped-query attention (smaller KV cache)
    pos_encoding: str = "none"       # only the relative ones (rope, alibi) act here
    rope_base: float = 10000.0
    bias: bool = False
    backend: str = "auto"            # ref | fused (SDPA) | flash_attn | auto (= fused)
    sdpa_backend: str | None = None  # force one SDPA kernel: flash | efficient | cudnn | math

    def __post_init__(self) -> None:
        if self.n_heads <= 0 or self.d_model <= 0:
            raise ValueError(f"d_model and n_heads must be positive, got d_model={self.d_model}, "
                             f"n_heads={self.n_heads}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                             f"choose d_model as a multiple of n_heads")
        self.n_kv_heads = self.n_kv_heads or self.n_heads
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads="
                             f"{self.n_kv_heads} (grouped-query attention shares kv heads evenly)")
        check_positional(self.pos_encoding)
        if self.sdpa_backend is not None and self.sdpa_backend not in SDPA_KERNELS:
            raise ValueError(f"unknown sdpa_backend {self.sdpa_backend!r}; choose one of "
                             f"{list(SDPA_KERNELS)} or null")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Attention(Mixer):
    # ref = explicit L x L scores; fused = torch's scaled_dot_product_attention. auto =
    # fused everywhere: on a GPU SDPA itself dispatches to its FlashAttention kernel, so
    # auto never depends on an optional package; flash_attn must be asked for by name.
    backends = ("ref", "fused", "flash_attn", "auto")
    state_growth = "linear"  # the KV cache holds every past token
    relative_positions = True  # takes pos_encoding: rope / alibi act inside the layer (and
    # in every subclass: sliding-window and Infini-attention layers)
    config_class = AttentionConfig
    # model.causal=false drops the causal mask (archs/bidirectional.py sets causal = False)
    bidirectional = "mask"
    causal = True

    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        backend = check_backend(cfg.backend, self.backends, type(self).__name__)
        self.backend = "fused" if backend == "auto" else backend
        kv_dim = cfg.n_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv_proj = nn.Linear(cfg.d_model, 2 * kv_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_base) if cfg.pos_encoding == "rope" else None
        self.alibi = ALiBi(cfg.n_heads) if cfg.pos_encoding == "alibi" else None

    def resolved_backend(self, device=None, seq_len=None) -> str:
        if self.backend == "flash_attn":
            resolve_backend("flash_attn", allowed=self.backends, fallback="fused", fused="flash_attn",
                            fused_ok=flash_attn_available() and is_cuda(device),
                            why_not="it needs the flash-attn package and a CUDA device", owner="attention")
        return self.backend

    def tiles(self) -> dict[str, int]:
        # KVCache allocates 16 slots, then doubles: every 16·2^k tokens a decode step copies.
        return {"kv_cache_capacity": 16}

    def _project(self, x: torch.Tensor, first_pos: int, rotate: bool = True):
        """(B, L, D) -> q (B, H, L, Dh), k and v (B, Hkv, L, Dh), positions applied (RoPE
        only when ``rotate``)."""
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        q, k, v = heads_split(self.q_proj(x), self.cfg.n_heads), \
            heads_split(k, self.cfg.n_kv_heads), heads_split(v, self.cfg.n_kv_heads)
        if self.rope is not None and rotate:
            pos = torch.arange(first_pos, first_pos + x.shape[1], device=x.device)
            q, k = self.rope(q, pos), self.rope(k, pos)
        return q, k, v

    def _attend(self, q, k, v) -> torch.Tensor:
        """Queries are the last Lq of the Lk keys; returns (B, H, Lq, Dh)."""
        lq, lk = q.shape[-2], k.shape[-2]
        bias = None
        if self.alibi is not None and self.backend != "flash_attn":
            k_pos = torch.arange(lk, device=q.device)
            bias = self.alibi(k_pos[lk - lq:], k_pos, symmetric=not self.causal)
        if self.backend == "ref":
            return attention_math(q, k, v, bias=bias, causal=self.causal)
        if self.backend == "flash_attn":
            return attention_flash(q, k, v, alibi_slopes=None if self.alibi is None else self.alibi.slopes,
                                   causal=self.causal)
        return attention_sdpa(q, k, v, bias=bias, kernel=self.cfg.sdpa_backend, causal=self.causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x, 0, rotate=False)
        if self.rope is not None:
            pos = torch.arange(x.shape[1], device=x.device)
            if self.backend == "fused" and cpu_kernel_takes(q, k, kernel=self.cfg.sdpa_backend,
                                                            causal=self.causal):  # RoPE: no ALiBi bias
                # the CPU kernel rotates q and k itself: no rotated copies, no rotation ops
                out = fused_cpu.causal_attention_cpu(q, k, v, rope=self.rope.tables(pos, q.dtype))
                return self.o_proj(heads_merge(out))
            q, k = self.rope(q, pos), self.rope(k, pos)
        return self.o_proj(heads_merge(self._attend(q, k, v)))

    def init_state(self, batch_size, device=None, dtype=None) -> KVCache:
        return KVCache.empty(batch_size, self.cfg.n_kv_heads, self.cfg.head_dim,
                             device=device or self.param_device, dtype=dtype or self.param_dtype)

    def prefill(self, x: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        if not self.causal:
            raise BidirectionalDecodeError(DECODE_HINT)
        q, k, v = self._project(x, state.length)
        k_all, v_all = state.append(k, v)
        return self.o_proj(heads_merge(self._attend(q, k_all, v_all))), state

    def step(self, x_t: torch.Tensor, state: KVCache) -> tuple[torch.Tensor, KVCache]:
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def sequence_flops(self, batch_size: int, seq_len: int) -> int:
        # q·kᵀ and p·v over the causal triangle: 2 matmuls x 2 FLOPs x Dh per (query, key)
        # pair, L(L+1)/2 pairs per head (FlashAttention's causal accounting); L² unmasked.
        pairs = seq_len * (seq_len + 1) // 2 if self.causal else seq_len * seq_len
        return 2 * 2 * batch_size * self.cfg.n_heads * self.cfg.head_dim * pairs

    def expected_state_bytes(self, batch_size, context_len, dtype) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * batch_size * self.cfg.n_kv_heads * context_len * self.cfg.head_dim * itemsize


