"""Guarded wrappers around the fused CUDA kernels of mamba_ssm and causal_conv1d.

Nothing here imports a GPU package at module import time: each wrapper imports lazily
through ``archs.backends`` and a missing package raises ``BackendUnavailableError`` (also
an ImportError) naming ``pip install archbench[gpu]``, never a silent fallback. Signatures follow the packages'
documented ones (mamba_ssm/ops/selective_scan_interface.py, ops/triton/
selective_state_update.py, causal_conv1d/causal_conv1d_interface.py).

``selective_scan_fused`` keeps ``selective_scan_ref``'s signature, including
``initial_state`` which mamba_ssm's kernel lacks: the scan is linear in its initial
state, so the kernel runs from zero and the initial state's decayed contribution
C_t . exp(A * cumsum(dt)_t) h0 is added in PyTorch (chunked over L to bound memory).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from archs.backends import BackendUnavailableError, available, require, require_cuda
from archs.mamba.ref import discretize_dt, expand_groups

OWNER = "Mamba"
SCAN_MODULE = "mamba_ssm.ops.selective_scan_interface"
UPDATE_MODULE = "mamba_ssm.ops.triton.selective_state_update"
CONV_MODULE = "causal_conv1d"
# The old name of the one error type (kept so existing imports keep working).
FastKernelsUnavailable = BackendUnavailableError


def mamba_ssm_available() -> bool:
    """True when mamba_ssm's compiled selective-scan kernel imports (never on CPU-only)."""
    return available(SCAN_MODULE)


def state_update_available() -> bool:
    """True when mamba_ssm's Triton decode step imports (its no-CUDA build has it too)."""
    return available(UPDATE_MODULE)


def causal_conv1d_available() -> bool:
    """True when the causal_conv1d CUDA package imports."""
    return available(CONV_MODULE)


def require_mamba_ssm() -> None:
    require(OWNER, SCAN_MODULE)


# -- selective scan ----------------------------------------------------------------------
def _initial_state_term(dt: Tensor, A: Tensor, C: Tensor, h0: Tensor,
                        chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Contribution of h0 to y (B, D, L) and to the last state (B, D, N), in fp32."""
    dim = A.shape[0]
    Cd = expand_groups(C, dim)  # (B, D, N, L)
    ys, offset = [], dt.new_zeros(dt.shape[:2])  # cumulative dt before the chunk (B, D)
    for s in range(0, dt.shape[-1], chunk):
        cum = offset[..., None] + dt[..., s:s + chunk].cumsum(-1)  # (B, D, l)
        decay = torch.exp(A.float()[None, :, :, None] * cum[:, :, None, :])  # (B, D, N, l)
        ys.append(torch.einsum("bdnl,bdn->bdl", decay * Cd[..., s:s + chunk], h0))
        offset = cum[..., -1]
    last = torch.exp(A.float()[None] * offset[..., None]) * h0
    return torch.cat(ys, dim=-1), last


def selective_scan_fused(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                         D: Tensor | None = None, z: Tensor | None = None,
                         delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         initial_state: Tensor | None = None, return_last_state: bool = False,
                         ) -> Tensor | tuple[Tensor, Tensor]:
    """mamba_ssm ``selective_scan_fn`` with ``selective_scan_ref``'s signature (CUDA only)."""
    (scan,) = require(OWNER, SCAN_MODULE)
    require_cuda(OWNER, u, delta, A, B, C)
    selective_scan_fn = scan.selective_scan_fn

    if initial_state is None:
        return selective_scan_fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
                                 delta_softplus=delta_softplus,
                                 return_last_state=return_last_state)
    # Linear in h0: run from zero without the gate, add h0's decayed term, then gate.
    y, last = selective_scan_fn(u, delta, A, B, C, D, z=None, delta_bias=delta_bias,
                                delta_softplus=delta_softplus, return_last_state=True)
    dt = discretize_dt(delta, delta_bias, delta_softplus)
    y_h0, last_h0 = _initial_state_term(dt, A, C, initial_state.float())
    y = y.float() + y_h0
    if z is not None:
        y = y * F.silu(z.float())
    out = y.to(u.dtype)
    return (out, last.float() + last_h0) if return_last_state else out


def mamba_inner_fused(xz: Tensor, conv1d_weight: Tensor, conv1d_bias: Tensor | None,
                      x_proj_weight: Tensor, delta_proj_weight: Tensor, out_proj_weight: Tensor,
                      out_proj_bias: Tensor | None, A: Tensor, D: Tensor,
                      delta_bias: Tensor) -> Tensor:
    """The whole fused Mamba block after in_proj: xz (B, 2*d_inner, L) -> (B, L, d_model).

    conv1d_weight is nn.Conv1d's (d_inner, 1, d_conv); B and C come from x_proj (input
    dependent) and dt from softplus(dt_proj(x) + delta_bias), as in the paper.
    """
    # mamba_inner_fn calls causal_conv1d's CUDA op directly
    scan, _ = require(OWNER, SCAN_MODULE, CONV_MODULE)
    require_cuda(OWNER, xz)
    return scan.mamba_inner_fn(xz, conv1d_weight, conv1d_bias, x_proj_weight, delta_proj_weight,
                               out_proj_weight, out_proj_bias, A, None, None, D,
                               delta_bias=delta_bias, delta_softplus=True)


def selective_state_update_fused(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                                 C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                                 dt_bias: Tensor | None = None, dt_softplus: bool = False,
                                 ) -> Tensor:
    """mamba_ssm's Triton decode step; updates ``state`` (B, D, N) in place, returns (B, D)."""
    (update,) = require(OWNER, UPDATE_MODULE)
    require_cuda(OWNER, state, x)
    # mamba-ssm 2.3.2.post1 crashes on dt_bias=None / D=None before the launch (it unpacks
    # their strides; state-spaces/mamba PR #796): zeros mean the same
    zeros = x.new_zeros(x.shape[-1], dtype=torch.float32)
    return update.selective_state_update(state, x, dt, A, B, C, D=zeros if D is None else D, z=z,
                                         dt_bias=zeros if dt_bias is None else dt_bias,
                                         dt_softplus=dt_softplus)


# -- short causal convolution ----------------------------------------------------------
def causal_conv1d_fused(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                        activation: str | None = "silu") -> Tensor:
    """causal_conv1d_fn: x (B, D, L), weight (D, W) -> (B, D, L)."""
    (conv,) = require(OWNER, CONV_MODULE)
    require_cuda(OWNER, x)
    return conv.causal_conv1d_fn(x, weight, bias, activation=activation)


def causal_conv1d_update_fused(x: Tensor, conv_state: Tensor, weight: Tensor,
                               bias: Tensor | None = None, activation: str | None = "silu",
                               ) -> Tensor:
    """causal_conv1d_update: x (B, D); conv_state (B, D, >= W-1) is updated in place."""
    (conv,) = require(OWNER, CONV_MODULE)
    require_cuda(OWNER, x, conv_state)
    return conv.causal_conv1d_update(x, conv_state, weight, bias, activation)
