"""A bounded KV cache for sliding-window decoding: attention sinks + a ring buffer.

Tokens at positions < n_sink are kept forever in the sink slots; every later token goes
to ring slot ``position % window``, overwriting the token that just left the window. So
the cache never holds more than n_sink + window tokens, however long the context.

Storage is allocated once at its final size (no growth, no copies while decoding);
``nbytes`` reports the slots holding a token - min(tokens seen, n_sink + window) - which
is what the cost harness plots against context length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class WindowCache:
    sink_k: torch.Tensor  # (B, Hkv, n_sink, Dh): positions 0 .. n_sink-1
    sink_v: torch.Tensor
    ring_k: torch.Tensor  # (B, Hkv, window, Dh): position p >= n_sink lives in slot p % window
    ring_v: torch.Tensor
    length: int = 0       # tokens seen; also the absolute position of the next token

    @classmethod
    def empty(cls, batch: int, n_kv_heads: int, head_dim: int, *, window: int, n_sink: int,
              device=None, dtype=None) -> "WindowCache":
        def alloc(n: int) -> torch.Tensor:
            return torch.zeros(batch, n_kv_heads, n, head_dim, device=device, dtype=dtype)

        return cls(alloc(n_sink), alloc(n_sink), alloc(window), alloc(window))

    @property
    def n_sink(self) -> int:
        return self.sink_k.shape[2]

    @property
    def window(self) -> int:
        return self.ring_k.shape[2]

    @property
    def sinks_held(self) -> int:
        return min(self.length, self.n_sink)

    @property
    def ring_held(self) -> int:
        return min(max(self.length - self.n_sink, 0), self.window)

    def sinks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the sinks seen so far: (B, Hkv, sinks_held, Dh), positions 0..."""
        n = self.sinks_held
        return self.sink_k[:, :, :n], self.sink_v[:, :, :n]

    def recent(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The ring's tokens in position order, (B, Hkv, ring_held, Dh), and the first one's position."""
        start = self.length - self.ring_held
        slots = torch.arange(start, self.length, device=self.ring_k.device) % self.window
        return self.ring_k[:, :, slots], self.ring_v[:, :, slots], start

    def write(self, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Store (B, Hkv, n, Dh) keys/values at positions length .. length + n - 1."""
        n, p0 = k_new.shape[2], self.length
        n_to_sinks = max(0, min(n, self.n_sink - p0))
        if n_to_sinks:
            self.sink_k[:, :, p0:p0 + n_to_sinks] = k_new[:, :, :n_to_sinks]
            self.sink_v[:, :, p0:p0 + n_to_sinks] = v_new[:, :, :n_to_sinks]
        # Only the last `window` of the rest can still be in the window afterwards.
        first = max(n_to_sinks, n - self.window)
        if first < n:
            slots = torch.arange(p0 + first, p0 + n, device=self.ring_k.device) % self.window
            self.ring_k[:, :, slots] = k_new[:, :, first:]
            self.ring_v[:, :, slots] = v_new[:, :, first:]
        self.length += n

    def nbytes(self) -> int:
        b, h, _, d = self.ring_k.shape
        return 2 * b * h * (self.sinks_held + self.ring_held) * d * self.ring_k.element_size()
