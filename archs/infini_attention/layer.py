"""Infini-attention (Munkhdalai et al. 2024) as a mixer: local attention inside segments plus a
compressive memory of all previous segments, mixed by a learned per-head gate.

The sequence is cut into segments of ``segment_len`` tokens. For segment s, per head:
  1. A_local: causal softmax attention among the segment's tokens (paper Eq. 2);
  2. A_mem:   read the memory of segments < s with the segment's queries (Eq. 3, ref.py);
  3. A = sigmoid(β)·A_mem + (1 − sigmoid(β))·A_local, β a learned scalar per head (Eq. 6);
  4. when the segment is complete, write its keys/values into the memory (Eq. 4 or 5).
Heads are concatenated and projected (Eq. 7). A trailing partial segment is read against
the memory but not written: its tokens are written once the segment fills up.

Positions: relative encodings (rope, alibi) act only in the local attention, at positions
*within the segment* (0 .. segment_len-1), so every segment - and every length - looks the
same to them. The memory uses the un-rotated queries and keys: it is position-free. The
parallel form and decoding use the same segment positions, so they agree exactly.

Decoding keeps the current segment's raw keys/values (at most segment_len tokens) plus M
and z; when the segment completes it is folded into the memory and the buffer restarts.
M and z are float32 whatever the model dtype: they accumulate over unbounded length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from archs.attention.layer import Attention, AttentionConfig
from archs.blocks import heads_merge, heads_split
from archs.infini_attention.ref import feature_map, memory_read, memory_write
from archs.precision import up

UPDATES = ("linear", "delta")


@dataclass
class InfiniAttentionConfig(AttentionConfig):
    segment_len: int = 128   # below typical training lengths (256+), so training uses the memory
    update: str = "linear"   # the paper's base rule; "delta" skips already-stored associations
    gate_init: float = 0.0   # β at init: sigmoid(0) = 0.5, an even mix of memory and local

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.segment_len, int) or isinstance(self.segment_len, bool) \
                or self.segment_len <= 0:
            raise ValueError(f"segment_len must be a positive integer (tokens per local-attention "
                             f"segment), got {self.segment_len!r}")
        if self.update not in UPDATES:
            raise ValueError(f"unknown memory update {self.update!r}; choose one of {list(UPDATES)}")
        if self.n_kv_heads != self.n_heads:
            raise ValueError(f"infini_attention keeps one memory per head and does not support "
                             f"grouped-query attention; leave n_kv_heads unset (got {self.n_kv_heads})")


@dataclass
class InfiniState:
    k: torch.Tensor      # (B, H, segment_len, Dh): raw keys of the current segment, first n_local valid
    v: torch.Tensor      # (B, H, segment_len, Dh)
    mem: torch.Tensor    # (B, H, Dh, Dh) float32: M of all completed segments
    norm: torch.Tensor   # (B, H, Dh) float32: z of all completed segments
    n_local: int = 0     # tokens of the current segment seen so far (< segment_len)
    seen: int = 0        # tokens seen in total

    def nbytes(self) -> int:
        """The memory plus the segment buffer's slots in use: min(seen, segment_len) tokens.

        Once a segment has completed, the buffer is reused rather than freed, so the decode
        footprint stays at segment_len tokens (it never shrinks back as n_local restarts).
        """
        b, h, seg, d = self.k.shape
        buffer = 2 * b * h * min(self.seen, seg) * d * self.k.element_size()
        memory = self.mem.numel() * self.mem.element_size() + self.norm.numel() * self.norm.element_size()
        return buffer + memory


class InfiniAttention(Attention):
    """Reuses the dense layer's projections, positional encodings and ref/fused dispatch."""

    state_growth = "window"  # a segment buffer bounded by segment_len, plus a fixed-size memory
    config_class = InfiniAttentionConfig
    bidirectional = None  # causal-only: its bounded cache is the point (archs/bidirectional.py)

    def __init__(self, cfg: InfiniAttentionConfig):
        super().__init__(cfg)
        self.cfg: InfiniAttentionConfig = cfg
        self.beta = nn.Parameter(torch.full((cfg.n_heads,), float(cfg.gate_init)))

    def tiles(self) -> dict[str, int]:
        return {"segment": self.cfg.segment_len}

    def _raw_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) -> q, k, v each (B, H, L, Dh), no positions applied (Eq. 1)."""
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        return heads_split(self.q_proj(x), self.cfg.n_heads), heads_split(k, self.cfg.n_heads), \
            heads_split(v, self.cfg.n_heads)

    def _local(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention inside one segment; k, v from its start, q its last Lq positions."""
        if self.rope is not None:
            n, lq = k.shape[2], q.shape[2]
            pos = torch.arange(n, device=k.device)  # positions within the segment
            q, k = self.rope(q, pos[n - lq:]), self.rope(k, pos)
        return self._attend(q, k, v)  # alibi, too, measures distances within the segment

    def _segments(self, q, k, v, mem, norm, q_first: int):
        """The recurrence over segments. k, v: (B, H, T, Dh) starting at a segment boundary;
        q: (B, H, T - q_first, Dh), the queries of positions q_first .. T-1 (q_first <
        segment_len: earlier tokens of the first segment are keys only, from the cache).
        Returns A (B, H, T - q_first, Dh) and the memory after every complete segment."""
        seg, total = self.cfg.segment_len, k.shape[2]
        gate = torch.sigmoid(up(self.beta)).view(1, -1, 1, 1)  # (1, H, 1, 1)
        outs = []
        for start in range(0, total, seg):
            end = min(start + seg, total)
            q_s = q[:, :, max(start, q_first) - q_first:end - q_first]
            k_s, v_s = k[:, :, start:end], v[:, :, start:end]
            a_local = self._local(q_s, k_s, v_s)
            a_mem = memory_read(feature_map(up(q_s)), mem, norm)
            outs.append((gate * a_mem + (1 - gate) * up(a_local)).to(q.dtype))
            if end - start == seg:
                mem, norm = memory_write(feature_map(up(k_s)), up(v_s), mem, norm, self.cfg.update)
        return torch.cat(outs, dim=2), mem, norm

    def _empty_memory(self, batch: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        d, h = self.cfg.head_dim, self.cfg.n_heads
        dtype = torch.promote_types(self.param_dtype, torch.float32)  # float64 models: float64
        return (torch.zeros(batch, h, d, d, device=device, dtype=dtype),
                torch.zeros(batch, h, d, device=device, dtype=dtype))

    # -- the three forms --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._raw_qkv(x)
        out, _, _ = self._segments(q, k, v, *self._empty_memory(x.shape[0], x.device), q_first=0)
        return self.o_proj(heads_merge(out))

    def init_state(self, batch_size, device=None, dtype=None) -> InfiniState:
        device, dtype = device or self.param_device, dtype or self.param_dtype
        shape = (batch_size, self.cfg.n_heads, self.cfg.segment_len, self.cfg.head_dim)
        return InfiniState(torch.zeros(shape, device=device, dtype=dtype),
                           torch.zeros(shape, device=device, dtype=dtype),
                           *self._empty_memory(batch_size, device))

    def prefill(self, x: torch.Tensor, state: InfiniState) -> tuple[torch.Tensor, InfiniState]:
        """A chunk of any length, continuing the current (possibly partial) segment."""
        if x.shape[1] == 0:
            return x.new_zeros(x.shape), state
        dtype, n_local = state.k.dtype, state.n_local
        q, k, v = (t.to(dtype) for t in self._raw_qkv(x))
        k_all = torch.cat([state.k[:, :, :n_local], k], dim=2)  # (B, H, n_local + L, Dh)
        v_all = torch.cat([state.v[:, :, :n_local], v], dim=2)
        out, state.mem, state.norm = self._segments(q, k_all, v_all, state.mem, state.norm, n_local)
        # What is left of an unfinished segment goes back into the buffer.
        tail = k_all.shape[2] % self.cfg.segment_len
        state.k[:, :, :tail] = k_all[:, :, k_all.shape[2] - tail:]
        state.v[:, :, :tail] = v_all[:, :, v_all.shape[2] - tail:]
        state.n_local, state.seen = tail, state.seen + x.shape[1]
        return self.o_proj(heads_merge(out.to(x.dtype))), state

    def step(self, x_t: torch.Tensor, state: InfiniState) -> tuple[torch.Tensor, InfiniState]:
        y, state = self.prefill(x_t[:, None], state)
        return y[:, 0], state

    def sequence_flops(self, batch_size: int, seq_len: int) -> int:
        seg = self.cfg.segment_len
        full, tail = divmod(seq_len, seg)
        pairs = full * seg * (seg + 1) // 2 + tail * (tail + 1) // 2  # causal within segments
        h, d = self.cfg.n_heads, self.cfg.head_dim
        local = 2 * 2 * h * d * pairs
        # per token and head: read σ(q)M and σ(q)z, write σ(k)ᵀv (+ the delta rule's σ(k)M)
        memory_matmuls = 3 if self.cfg.update == "delta" else 2
        memory = seq_len * h * (memory_matmuls * 2 * d * d + 2 * d)
        return batch_size * (local + memory)

    def expected_state_bytes(self, batch_size, context_len, dtype) -> int:
        h, d = self.cfg.n_heads, self.cfg.head_dim
        itemsize = torch.empty((), dtype=dtype).element_size()
        buffer = 2 * batch_size * h * min(context_len, self.cfg.segment_len) * d * itemsize
        memory = batch_size * h * (d * d + d) * 4  # float32 M and z
        return buffer + memory
