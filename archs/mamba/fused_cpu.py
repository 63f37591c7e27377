"""Mamba-1's ``fused`` backend on a CPU: the selective scan as one C kernel (archs/_scan_cpu.c,
shared with Mamba-2 through archs/_scan_cpu.py).

Same signatures and results as ``ref.selective_scan_ref`` / ``chunked.selective_scan_chunked_bld``;
unavailable - with the reason - where no C compiler exists, in which case ``backend="auto"``
runs the chunked PyTorch scan instead and records it.
"""
from __future__ import annotations

from torch import Tensor

from archs._scan_cpu import CHUNK, SOURCE, cpu_kernel_available, require_cpu_kernel, scan_channels_last
from archs.mamba.ref import check_scan_inputs_bld, in_ref_layout

__all__ = ["CHUNK", "SOURCE", "cpu_kernel_available", "require_cpu_kernel", "selective_scan_cpu",
           "selective_scan_cpu_bld", "selective_state_update_cpu"]


def selective_scan_cpu_bld(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                           D: Tensor | None = None, z: Tensor | None = None,
                           delta_bias: Tensor | None = None, delta_softplus: bool = False,
                           initial_state: Tensor | None = None, return_last_state: bool = False,
                           block_len: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """The scan in the channels-last layout a layer produces: u, delta, z (B, L, D);
    B, C (B, L, N) or grouped (B, L, G, N); out (B, L, D) in u's dtype; the last state
    (B, D, N) in float32 (float64 for float64 inputs). ``block_len``: steps between the
    states kept for the backward pass (speed and memory only; default CHUNK, 32)."""
    check_scan_inputs_bld(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return scan_channels_last(u, delta, A.t(), B, C, D, z, delta_bias, delta_softplus,
                              initial_state, return_last_state, block_len)


def selective_scan_cpu(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None = None, z: Tensor | None = None,
                       delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       initial_state: Tensor | None = None, return_last_state: bool = False,
                       block_len: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """``selective_scan_ref``'s signature and layout: u, delta, z (B, D, L); B, C (B, N, L)."""
    return in_ref_layout(selective_scan_cpu_bld, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                         initial_state, return_last_state, block_len=block_len)


def selective_state_update_cpu(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                               C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                               dt_bias: Tensor | None = None, dt_softplus: bool = False) -> Tensor:
    """One decode step with ``selective_state_update_ref``'s semantics (``state`` (B, D, N)
    updated IN PLACE): the kernel's scan over a single step from ``state``."""
    out, last = selective_scan_cpu_bld(
        x[:, None], dt[:, None], A, B[:, None], C[:, None], D,
        None if z is None else z[:, None], dt_bias, dt_softplus, initial_state=state,
        return_last_state=True)
    state.copy_(last)
    return out[:, 0]
