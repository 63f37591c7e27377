"""Mamba-2's chunked SSD (Dao & Gu 2024, Listing 1): quadratic inside chunks of
``chunk_size``, a scan across them - the training form, linear in L (backend "chunked").

The algorithm is shared with linear attention (``archs._ssd.chunked_core``); this module
only maps SSD's (x, dt, A, B, C) onto it.
"""
from __future__ import annotations

import functools

import torch

from archs._ssd import chunked_core
from archs.mamba2.ref import run_ssd

Tensor = torch.Tensor


def ssd_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                D: Tensor | None = None, initial_state: Tensor | None = None,
                return_final_state: bool = False, chunk_size: int = 64
                ) -> tuple[Tensor, Tensor | None]:
    """Same contract as ``ref.ssd_recurrent``. Any length works: the tail is padded with
    dt = 0, which neither decays the state (exp(0) = 1) nor writes to it (dt * x = 0)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    core = functools.partial(chunked_core, chunk_size=chunk_size)
    return run_ssd(core, x, dt, A, B, C, D, initial_state, return_final_state)
