"""A growing key/value cache for decoding.

Storage grows by doubling (amortised O(1) appends instead of a torch.cat copy per
token); ``nbytes`` reports what the cache logically holds - the tokens seen so far -
which is the number the cost harness plots against context length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    k: torch.Tensor  # (B, Hkv, capacity, Dh)
    v: torch.Tensor  # (B, Hkv, capacity, Dh)
    length: int = 0  # valid entries; also the absolute position of the next token

    @classmethod
    def empty(cls, batch: int, n_kv_heads: int, head_dim: int, *, capacity: int = 0,
              device=None, dtype=None) -> "KVCache":
        shape = (batch, n_kv_heads, capacity, head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype),
                   torch.empty(shape, device=device, dtype=dtype))

    def _reserve(self, needed: int) -> None:
        capacity = self.k.shape[2]
        if needed <= capacity:
            return
        new_cap = max(needed, 2 * capacity, 16)
        for name in ("k", "v"):
            old = getattr(self, name)
            grown = old.new_empty(old.shape[0], old.shape[1], new_cap, old.shape[3])
            grown[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, grown)

    def append(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, Hkv, n, Dh) keys/values; return all valid keys and values."""
        n = k_new.shape[2]
        self._reserve(self.length + n)
        self.k[:, :, self.length:self.length + n] = k_new
        self.v[:, :, self.length:self.length + n] = v_new
        self.length += n
        return self.k[:, :, : self.length], self.v[:, :, : self.length]

    def nbytes(self) -> int:
        b, h, _, d = self.k.shape
        return 2 * b * h * self.length * d * self.k.element_size()
