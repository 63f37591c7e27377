"""mamba_ssm's Triton SSD kernels and causal_conv1d's CUDA conv behind ``ref.py``'s contract.

Both packages are optional GPU extras, imported lazily through ``archs.backends`` (``import
mamba_ssm`` fails outright on a CPU-only machine because its ``__init__`` loads a compiled
extension). A missing package raises ``BackendUnavailableError`` naming the fix - never a
silent fallback to the reference.

Facts relied on (mamba-ssm >= 2.2, causal-conv1d >= 1.4):
* ``mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, ..., initial_states=None,
  return_final_states=False)``: x (B, L, H, P), dt (B, L, H), A (H,), B/C (B, L, G, N),
  initial states (B, H, P, N); returns y or (y, final_states). We pass dt already
  softplus-ed (no dt_bias), as for the reference. Its final states come back in C's dtype,
  so with bf16 inputs the carried state is rounded to bf16 at each prefill boundary.
* ``selective_state_update(state, x, dt, A, B, C, D=None, dt_softplus=False)``: state
  (B, H, P, N) updated in place, x/dt (B, H, P), A (H, P, N), B/C (B, G, N), D (H, P).
* ``causal_conv1d_fn(x, weight, bias, initial_states=None, return_final_states=False,
  activation=None)``: x (B, D, L) in channel-last memory layout, weight (D, W); the
  initial states (B, D, W-1) must be channel-last too and in x's dtype.
* ``causal_conv1d_update(x, conv_state, weight, bias, activation)``: conv_state
  (B, D, W-1) updated in place.
The step functions update copies, so the state passed in is never mutated.
"""
from __future__ import annotations

import torch
from einops import repeat

from archs.backends import available, require, require_cuda

Tensor = torch.Tensor
OWNER = "Mamba-2"
SSD_MODULES = ("mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.triton.selective_state_update")
CONV_MODULE = "causal_conv1d"


def _ssd_ops():
    combined, update = require(OWNER, *SSD_MODULES)
    return combined.mamba_chunk_scan_combined, update.selective_state_update


def _conv_ops():
    (conv,) = require(OWNER, CONV_MODULE)
    return conv.causal_conv1d_fn, conv.causal_conv1d_update


def fused_available() -> bool:
    """True if both kernel packages import (does not check for a GPU)."""
    return available(*SSD_MODULES, CONV_MODULE)


def require_fused() -> None:
    """Raise the install hint now if the kernels are missing (used at construction)."""
    require(OWNER, *SSD_MODULES, CONV_MODULE)


def ssd_fused(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             D: Tensor | None = None, initial_state: Tensor | None = None,
             return_final_state: bool = False, chunk_size: int = 64
             ) -> tuple[Tensor, Tensor | None]:
    """Same contract as ``chunked.ssd_chunked``, via ``mamba_chunk_scan_combined``."""
    mamba_chunk_scan_combined, _ = _ssd_ops()
    require_cuda(OWNER, x)
    out = mamba_chunk_scan_combined(
        x, dt, A.float(), B, C, chunk_size, D=None if D is None else D.float(),
        initial_states=None if initial_state is None else initial_state.contiguous(),
        return_final_states=return_final_state)
    if return_final_state:
        y, final = out
        return y, final.float()
    return out, None


def ssd_step_fused(x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor,
                  state: Tensor, D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same contract as ``ref.ssd_step``, via ``selective_state_update`` (on a copy)."""
    _, selective_state_update = _ssd_ops()
    require_cuda(OWNER, x_t)
    p, n = x_t.shape[-1], state.shape[-1]
    new_state = state.clone()
    # the kernel is written for per-channel dt / A / D: broadcast the head scalars
    y = selective_state_update(
        new_state, x_t, repeat(dt_t, "b h -> b h p", p=p),
        repeat(A.float(), "h -> h p n", p=p, n=n), B_t, C_t,
        D=None if D is None else repeat(D.float(), "h -> h p", p=p), dt_softplus=False)
    return y, new_state


def conv1d_silu_fused(x: Tensor, weight: Tensor, bias: Tensor | None,
                     conv_state: Tensor | None) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv + SiLU over x (B, L, D) continuing from conv_state
    (B, D, W-1) (None: zeros); returns (y (B, L, D), new conv_state (B, D, W-1))."""
    causal_conv1d_fn, _ = _conv_ops()
    require_cuda(OWNER, x)
    if conv_state is not None:
        # (B, D, W-1) with the channel axis contiguous, as the kernel requires
        conv_state = conv_state.to(x.dtype).transpose(1, 2).contiguous().transpose(1, 2)
    # (B, L, D) -> (B, D, L): a channel-last view, which also lets it return final states
    y, final = causal_conv1d_fn(x.transpose(1, 2), weight, bias, initial_states=conv_state,
                                return_final_states=True, activation="silu")
    return y.transpose(1, 2), final.contiguous()


def conv1d_silu_step_fused(x_t: Tensor, weight: Tensor, bias: Tensor | None,
                          conv_state: Tensor) -> tuple[Tensor, Tensor]:
    """One token x_t (B, D) through the conv; returns (y_t, new conv_state) (on a copy)."""
    _, causal_conv1d_update = _conv_ops()
    require_cuda(OWNER, x_t)
    new_state = conv_state.to(x_t.dtype).clone()
    y = causal_conv1d_update(x_t, new_state, weight, bias, "silu")
    return y, new_state
