"""Sliding-window softmax attention with attention sinks, as a mixer.

Each query sees the last ``window`` tokens (itself included) and the first ``n_sink``
tokens (StreamingLLM, Xiao et al. 2023). Decoding keeps a bounded cache (sinks + a ring
of the last ``window`` tokens), so decode memory is constant in context length.

Positions: every token keeps its *absolute* position, as in training - RoPE rotates keys
once, at their absolute index, before they are cached; ALiBi measures absolute distances.
So the parallel form, chunked prefill and step decoding compute the same function exactly.
StreamingLLM instead re-indexes positions inside the cache (a sink seen from far away sits
at a small distance); that keeps sink distances inside the training range but makes the
decode function differ from any parallel pass, which this harness requires to agree. With
absolute positions, local keys are always within ``window`` of the query (a trained
distance whenever training used L >= window); sink distances grow with the context.

Backends: "ref" (masked L×L scores, the reference), "fused" (the same mask through SDPA),
"chunked" (query blocks against the keys they can see: O(L·window) memory, linear cost)
and "auto": chunked once L >= blocked_min_ratio · window, else fused.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from archs.attention.fused import attention_sdpa
from archs.attention.layer import Attention, AttentionConfig
from archs.attention.ref import attention_math, causal_mask
from archs.blocks import heads_merge
from archs.sliding_window.chunked import Kernel, windowed_attention
from archs.sliding_window.cache import WindowCache


@dataclass
class SlidingWindowConfig(AttentionConfig):
    window: int = 128                # below typical training lengths (256+), so the window binds
    n_sink: int = 4                  # StreamingLLM keeps 4 initial tokens
    block_size: int | None = None    # query block of the blocked form; None = window
    blocked_min_ratio: float = 4.0   # auto: dense L×L scores cost >= 2x the blocked ones here

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_int(self.window) or self.window <= 0:
            raise ValueError(f"window must be a positive integer (tokens each query sees, itself "
                             f"included), got {self.window!r}")
        if not _is_int(self.n_sink) or self.n_sink < 0:
            raise ValueError(f"n_sink must be an integer >= 0 (initial tokens kept visible; 0 = no "
                             f"sinks), got {self.n_sink!r}")
        if self.block_size is not None and (not _is_int(self.block_size) or self.block_size <= 0):
            raise ValueError(f"block_size must be a positive integer or None (= window), "
                             f"got {self.block_size!r}")
        if self.blocked_min_ratio <= 0:
            raise ValueError(f"blocked_min_ratio must be positive, got {self.blocked_min_ratio}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class SlidingWindowAttention(Attention):
    """Reuses the dense layer's projections and positional encodings; attends through a window."""

    backends = ("ref", "fused", "chunked", "auto")
    state_growth = "window"  # the cache stops growing at n_sink + window tokens
    config_class = SlidingWindowConfig
    bidirectional = None  # causal-only: its bounded cache is the point (archs/bidirectional.py)

    def __init__(self, cfg: SlidingWindowConfig):
        super().__init__(cfg)
        self.cfg: SlidingWindowConfig = cfg
        # Attention.__init__ validated the request and resolved "auto" to "fused"; for this
        # layer auto also depends on the length, decided per call by `backend_for`.
        self.auto = cfg.backend == "auto"
        self.block_size = cfg.block_size or cfg.window
        self.last_backend: str | None = None

    # -- backend choice ---------------------------------------------------------------------
    def backend_for(self, n_queries: int) -> str:
        """The path a call with ``n_queries`` queries takes (auto: chunked for long inputs)."""
        if not self.auto:
            return self.backend
        return "chunked" if n_queries >= self.cfg.blocked_min_ratio * self.cfg.window else "fused"

    def resolved_backend(self, device=None, seq_len: int | None = None) -> str:
        """Explicit backends report themselves; auto reports the choice for ``seq_len`` if given,
        else the path the last forward/prefill took, else both candidates ("fused|chunked")."""
        if not self.auto:
            return self.backend
        if seq_len is not None:
            return self.backend_for(seq_len)
        return self.last_backend or "fused|chunked"

    def tiles(self) -> dict[str, int]:
        c = self.cfg
        tiles = {"window": c.window, "n_sink": c.n_sink, "cache_capacity": c.n_sink + c.window,
                 "query_block": self.block_size}
        if self.auto:  # a call of this many queries or more takes the blocked path
            tiles["auto_blocked_from"] = math.ceil(c.blocked_min_ratio * c.window)
        return {k: v for k, v in tiles.items() if v > 0}

    def _kernel(self, backend: str) -> Kernel:
        if backend == "ref":
            return attention_math
        return functools.partial(attention_sdpa, kernel=self.cfg.sdpa_backend)

    def _slopes(self) -> torch.Tensor | None:
        return None if self.alibi is None else self.alibi.slopes

    # -- the three forms --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._project(x, 0)  # each (B, H or Hkv, L, Dh), positions 0..L-1
        length, window, n_sink = x.shape[1], self.cfg.window, self.cfg.n_sink
        backend = self.last_backend = self.backend_for(length)
        if backend == "chunked":
            out = windowed_attention(q, k, v, k[:, :, :n_sink], v[:, :, :n_sink], run_start=0,
                                     window=window, kernel=self._kernel("fused"),
                                     block_size=self.block_size, slopes=self._slopes())
        else:
            # The reference: the full L×L mask of archs.attention.
            mask = causal_mask(length, length, x.device, window=window, n_sink=n_sink)
            pos = torch.arange(length, device=x.device)
            bias = None if self.alibi is None else self.alibi(pos, pos)
            out = self._kernel(backend)(q, k, v, mask=mask, bias=bias)
        return self.o_proj(heads_merge(out))

    def init_state(self, batch_size, device=None, dtype=None) -> WindowCache:
        return WindowCache.empty(batch_size, self.cfg.n_kv_heads, self.cfg.head_dim,
                                 window=self.cfg.window, n_sink=self.cfg.n_sink,
                                 device=device or self.param_device, dtype=dtype or self.param_dtype)

    def prefill(self, x: torch.Tensor, state: WindowCache) -> tuple[torch.Tensor, WindowCache]:
        """A chunk at positions state.length .. + n - 1, seeing the cached sinks and window."""
        p0, n = state.length, x.shape[1]
        if n == 0:
            return x.new_zeros(x.shape), state
        q, k, v = self._project(x, p0)
        k, v = k.to(state.ring_k.dtype), v.to(state.ring_v.dtype)
        sink_k, sink_v = state.sinks()
        ring_k, ring_v, run_start = state.recent()
        # The sink segment is every sink that exists, the chunk's own included (ref.py).
        new_sinks = max(0, self.cfg.n_sink - p0)
        sink_k = torch.cat([sink_k, k[:, :, :new_sinks]], dim=2)
        sink_v = torch.cat([sink_v, v[:, :, :new_sinks]], dim=2)
        backend = self.last_backend = self.backend_for(n)
        kernel = self._kernel("fused" if backend == "chunked" else backend)
        out = windowed_attention(q.to(k.dtype), torch.cat([ring_k, k], dim=2), torch.cat([ring_v, v], dim=2),
                                 sink_k, sink_v, run_start=run_start, window=self.cfg.window,
                                 kernel=kernel, slopes=self._slopes(),
                                 block_size=self.block_size if backend == "chunked" else None)
        state.write(k, v)
        return self.o_proj(heads_merge(out.to(x.dtype))), state

    def step(self, x_t: torch.Tensor, state: WindowCache) -> tuple[torch.Tensor, WindowCache]:
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def sequence_flops(self, batch_size: int, seq_len: int) -> int:
        # Query i sees min(i+1, window) recent keys plus the sinks not already among them;
        # 2 matmuls x 2 FLOPs x Dh per visible (query, key) pair and head.
        i = torch.arange(seq_len, dtype=torch.float64)
        recent = torch.clamp(i + 1, max=self.cfg.window)
        sinks = torch.clamp(i - self.cfg.window + 1, min=0, max=self.cfg.n_sink)
        pairs = int((recent + sinks).sum().item())
        return 2 * 2 * batch_size * self.cfg.n_heads * self.cfg.head_dim * pairs

    def expected_state_bytes(self, batch_size, context_len, dtype) -> int:
        tokens = min(context_len, self.cfg.window + self.cfg.n_sink)
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * batch_size * self.cfg.n_kv_heads * tokens * self.cfg.head_dim * itemsize
