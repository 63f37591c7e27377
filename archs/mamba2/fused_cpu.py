"""Mamba-2's ``fused`` backend on a CPU: SSD run by Mamba-1's C scan kernel.

SSD is a selective scan whose decay is a scalar per head: per head h, channel p of the head
and state entry n,

    h_t[p, n] = exp(dt_t[h] * A[h]) * h_{t-1}[p, n] + dt_t[h] * x_t[h, p] * B_t[g(h), n]
    y_t[h, p] = sum_n C_t[g(h), n] * h_t[p, n] + D[h] * x_t[h, p]

which is Mamba-1's recurrence over the H*P channels d = (h, p) with dt_d = dt[h],
A[d, n] = A[h] for every n, D_d = D[h], and B, C grouped exactly as Mamba-2 groups heads
(channel d's group d // (H P / G) is head h's group). So the C kernel of
``archs/_scan_cpu.c`` (an adjoint backward from checkpoints) runs it, in its
scalar-decay mode: the decay exp(dt A) is taken once per channel and step, not per state
entry; autograd sums the broadcast dt, A and D back to their heads.
"""
from __future__ import annotations

import torch
from einops import rearrange, repeat

from archs._scan_cpu import scan_channels_last
from archs.mamba2.ref import _check_shapes

Tensor = torch.Tensor


def ssd_cpu(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
            initial_state: Tensor | None = None, return_final_state: bool = False,
            z: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """``ref.ssd_recurrent``'s contract: x (b, l, h, p), dt (b, l, h) post-softplus, A (h,),
    B and C (b, l, g, n), D (h,), initial_state (b, h, p, n) -> y (b, l, h, p) in x's
    dtype and the final state (b, h, p, n) (float32, float64 for float64 inputs).
    ``z`` (b, l, h * p): y * silu(z) instead of y, the gate Mamba-2 applies before its
    norm, computed inside the kernel (forward and backward) rather than as separate ops."""
    _check_shapes(x, dt, A, B, C)
    _, _, heads, headdim = x.shape
    u = rearrange(x, "b l h p -> b l (h p)")
    delta = repeat(dt, "b l h -> b l (h p)", p=headdim)
    A_1d = repeat(A, "h -> 1 (h p)", p=headdim)  # one decay per channel, shared over n
    D_d = None if D is None else repeat(D, "h -> (h p)", p=headdim)
    h0 = None if initial_state is None else rearrange(initial_state, "b h p n -> b (h p) n")
    out = scan_channels_last(u, delta, A_1d, B, C, D_d, z, None, False, h0,
                             return_final_state, None)
    y, last = out if return_final_state else (out, None)
    y = rearrange(y, "b l (h p) -> b l h p", h=heads)
    last = None if last is None else rearrange(last, "b (h p) n -> b h p n", h=heads)
    return y, last


def ssd_step_cpu(x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor,
                 D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token with ``ref.ssd_step``'s contract: the scan of a single step from ``state``."""
    y, new = ssd_cpu(x_t[:, None], dt_t[:, None], A, B_t[:, None], C_t[:, None], D,
                     initial_state=state, return_final_state=True)
    return y[:, 0], new
