"""Mamba-2's fused routes behind ``ref.py``'s contract: two Triton implementations of the
SSD scan, and causal_conv1d's CUDA conv.

* ``fused_impl="mamba_ssm"``: mamba_ssm's own SSD kernels (``mamba_chunk_scan_combined``,
  ``selective_state_update``). They are pure Triton: mamba-ssm's no-CUDA build
  (``MAMBA_SKIP_CUDA_BUILD=TRUE``) carries them, and ``archs.backends`` imports them even
  though that build's package ``__init__`` fails (it wants the compiled Mamba-1 scan).
* ``fused_impl="fla"``: fla's ``chunk_simple_gla`` / ``fused_recurrent_simple_gla``
  (``archs._fla``). SSD is scalar-decay linear attention with (q, k, v, g) = (C, B, dt x,
  dt A) per head (``ref.py``), and Mamba-2's (P, N) state is fla's (K, V) = (N, P) state
  transposed.
* The depthwise conv runs causal_conv1d's CUDA kernels when that package imports, else
  PyTorch's conv (the layer records which: ``Mamba2Mixer.resolved_backend``).

Packages are imported lazily through ``archs.backends``; a missing one raises
``BackendUnavailableError`` naming the fix - never a silent fallback to the reference.

Facts relied on (mamba-ssm 2.3.2.post1, causal-conv1d >= 1.4):
* ``mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, ..., initial_states=None,
  return_final_states=False)``: x (B, L, H, P), dt (B, L, H), A (H,), B/C (B, L, G, N),
  initial states (B, H, P, N); returns y or (y, final_states). We pass dt already
  softplus-ed (no dt_bias), as for the reference. Its final states come back in C's dtype,
  so with bf16 inputs the carried state is rounded to bf16 at each prefill boundary.
* ``selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
  dt_softplus=False)``: state (B, H, P, N) updated in place, x/dt (B, H, P), A (H, P, N),
  B/C (B, G, N), D and dt_bias (H, P). In 2.3.2.post1 ``dt_bias=None`` and ``D=None``
  crash before the launch (it reads ``dt_bias.stride`` and unpacks ``*0``;
  state-spaces/mamba PR #796), so we always pass both, as zeros when absent.
* ``causal_conv1d_fn(x, weight, bias, initial_states=None, return_final_states=False,
  activation=None)``: x (B, D, L) in channel-last memory layout, weight (D, W); the
  initial states (B, D, W-1) must be channel-last too and in x's dtype.
* ``causal_conv1d_update(x, conv_state, weight, bias, activation)``: conv_state
  (B, D, W-1) updated in place.
The step functions update copies, so the state passed in is never mutated.
"""
from __future__ import annotations

import torch
from einops import rearrange, repeat

from archs._fla import fla_available, fla_ops, simple_gla, simple_gla_step
from archs.backends import available, require, require_cuda

Tensor = torch.Tensor
OWNER = "Mamba-2"
SSD_MODULES = ("mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.triton.selective_state_update")
CONV_MODULE = "causal_conv1d"
FUSED_IMPLS = ("mamba_ssm", "fla")  # the SSD kernels of backend="fused"


def _ssd_ops():
    combined, update = require(OWNER, *SSD_MODULES)
    return combined.mamba_chunk_scan_combined, update.selective_state_update


def _conv_ops():
    (conv,) = require(OWNER, CONV_MODULE)
    return conv.causal_conv1d_fn, conv.causal_conv1d_update


def fused_available(impl: str = "mamba_ssm") -> bool:
    """True if ``impl``'s SSD kernels import (does not check for a GPU)."""
    return fla_available() if impl == "fla" else available(*SSD_MODULES)


def fused_conv_available() -> bool:
    """True if causal_conv1d's CUDA conv imports (else the fused routes use PyTorch's)."""
    return available(CONV_MODULE)


def require_fused(impl: str = "mamba_ssm") -> None:
    """Raise the install hint now if ``impl``'s kernels are missing (used at construction)."""
    fla_ops(OWNER) if impl == "fla" else _ssd_ops()


# -- mamba_ssm ----------------------------------------------------------------------------
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
    # the kernel is written for per-channel dt / A / D / dt_bias: broadcast the head scalars
    # (stride-0 views, which its tied-head-dim path reads once per head)
    per_channel = lambda t: repeat(t.float(), "h -> h p", p=p)  # noqa: E731
    zeros = A.new_zeros(A.shape, dtype=torch.float32)
    y = selective_state_update(
        new_state, x_t, repeat(dt_t, "b h -> b h p", p=p),
        repeat(A.float(), "h -> h p n", p=p, n=n), B_t, C_t,
        D=per_channel(zeros if D is None else D), dt_bias=per_channel(zeros), dt_softplus=False)
    return y, new_state


# -- fla ----------------------------------------------------------------------------------
def _as_simple_gla(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor):
    """SSD inputs -> (q, k, v, g) = (C, B, dt x, dt A), B/C repeated to the heads, in the
    inputs' own dtypes (the kernel accumulates in fp32). Sequences: x (b, l, h, p), dt
    (b, l, h), B/C (b, l, g, n); one token: no l axis."""
    heads = x.shape[-2]
    q, k = (repeat(t, "... g n -> ... (g r) n", r=heads // t.shape[-2]) for t in (C, B))
    return q, k, (x * dt[..., None]).to(x.dtype), dt.float() * A.float()


def _skip(y: Tensor, x: Tensor, D: Tensor | None) -> Tensor:
    return y if D is None else (y.float() + x.float() * D.float()[:, None]).to(x.dtype)


def ssd_fused_fla(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None = None, initial_state: Tensor | None = None,
                  return_final_state: bool = False, chunk_size: int = 64
                  ) -> tuple[Tensor, Tensor | None]:
    """Same contract as ``chunked.ssd_chunked``, via fla's ``chunk_simple_gla``
    (``chunk_size``: a power of two >= 16)."""
    fla_ops(OWNER)  # a missing package first: its install hint says more than the device
    require_cuda(OWNER, x)
    state0 = None if initial_state is None else rearrange(initial_state, "b h p n -> b h n p")
    o, final = simple_gla(*_as_simple_gla(x, dt, A, B, C), state0, return_final_state,
                          chunk_size, OWNER)
    final = None if final is None else rearrange(final, "b h n p -> b h p n")
    return _skip(o, x, D), final


def ssd_step_fused_fla(x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor,
                       state: Tensor, D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Same contract as ``ref.ssd_step``, via fla's ``fused_recurrent_simple_gla``."""
    fla_ops(OWNER)
    require_cuda(OWNER, x_t)
    o, new = simple_gla_step(*_as_simple_gla(x_t, dt_t, A, B_t, C_t),
                             rearrange(state, "b h p n -> b h n p"), OWNER)
    return _skip(o, x_t, D), rearrange(new, "b h n p -> b h p n")


# -- causal_conv1d --------------------------------------------------------------------------
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
