"""Chunked linear attention: quadratic inside chunks, the state carried across them.

The blocked PyTorch form (backend "chunked"): O(L * chunk) time, any L, exact vs the
reference in ``ref.py``. The algorithm is SSD's, shared with Mamba-2 (``archs._ssd``).
"""
from __future__ import annotations

import torch

from archs._ssd import chunked_core
from archs.linear_attention.ref import run_core

Tensor = torch.Tensor


def linear_attn_chunked(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                        initial_state: Tensor | None = None, return_final_state: bool = False,
                        normalize: bool = True, eps: float = 1e-6, chunk_size: int = 64
                        ) -> tuple[Tensor, Tensor | None]:
    """Same contract as ``ref.linear_attn_quadratic``; O(L * chunk) time, any L (the tail
    chunk is padded)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def core(q_, k_, v_, g_, s_):
        return chunked_core(q_, k_, v_, g_, s_, chunk_size)

    return run_core(core, q, k, v, log_decay, initial_state, return_final_state, normalize, eps)
