"""flash-linear-attention (fla) Triton kernels behind the signature of ``ref.py``.

fla is an optional GPU package: it is imported lazily (through ``archs.backends``), never
at module import, and a missing package raises ``BackendUnavailableError`` with the one
install hint (there is no silent fallback to the reference).

Facts this wrapper relies on (fla >= 0.2, where inputs are ``[B, T, H, ...]`` by default):
* ``fla.ops.simple_gla.chunk_simple_gla(q, k, v, g=None, scale=None, initial_state=None,
  output_final_state=False, ...)`` computes S_t = exp(g_t) S_{t-1} + k_t v_t^T,
  o_t = scale * q_t^T S_t with a head-wise log gate g (B, T, H) and a (B, H, K, V) state;
* ``fla.ops.simple_gla.fused_recurrent_simple_gla`` takes the same arguments (decoding).
We always pass ``g`` (zeros when there is no decay; some versions require it) and
``scale=1.0`` (callers scale q themselves, as for the reference). The normaliser uses the
same trick as the reference - a ones column appended to v - rather than fla's own
``normalize=True``, whose state format changed between versions.
"""
from __future__ import annotations

import torch

from archs.backends import available, require, require_cuda
from archs.linear_attention.ref import _log_decay, state_shape

Tensor = torch.Tensor
OWNER = "linear attention"
FLA = "fla.ops.simple_gla"


def _fla_ops():
    """fla's simple-GLA kernels, or BackendUnavailableError with the install hint."""
    (ops,) = require(OWNER, FLA)
    return ops.chunk_simple_gla, ops.fused_recurrent_simple_gla


def fla_available() -> bool:
    """True if fla's kernels import (does not check for a GPU)."""
    return available(FLA)


def _with_ones(v: Tensor, normalize: bool) -> Tensor:
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1) if normalize else v


def _divide(o: Tensor, normalize: bool, eps: float, dtype: torch.dtype) -> Tensor:
    if not normalize:
        return o.to(dtype)
    o = o.float()
    return (o[..., :-1] / (o[..., -1:] + eps)).to(dtype)


def _state0(initial_state: Tensor | None, q: Tensor, d_value: int, normalize: bool
            ) -> Tensor | None:
    if initial_state is None:
        return None
    shape = state_shape(q.shape[0], q.shape[2], q.shape[3], d_value, normalize)
    if tuple(initial_state.shape) != shape:
        raise ValueError(f"initial_state must be {shape}, got {tuple(initial_state.shape)}")
    return initial_state.float().contiguous()


def linear_attn_fused(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                     initial_state: Tensor | None = None, return_final_state: bool = False,
                     normalize: bool = True, eps: float = 1e-6
                     ) -> tuple[Tensor, Tensor | None]:
    """Same contract as ``chunked.linear_attn_chunked``, via fla's ``chunk_simple_gla``."""
    chunk_simple_gla, _ = _fla_ops()
    require_cuda(OWNER, q)
    g = _log_decay(log_decay, q).float().contiguous()  # (B, L, H)
    o, final = chunk_simple_gla(
        q=q, k=k, v=_with_ones(v, normalize), g=g, scale=1.0,
        initial_state=_state0(initial_state, q, v.shape[-1], normalize),
        output_final_state=return_final_state)
    final = final.float() if return_final_state else None
    return _divide(o, normalize, eps, v.dtype), final


def linear_attn_fused_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, log_decay_t: Tensor | None,
                          state: Tensor, normalize: bool = True, eps: float = 1e-6
                          ) -> tuple[Tensor, Tensor]:
    """Same contract as ``ref.linear_attn_step``, via fla's ``fused_recurrent_simple_gla``."""
    _, fused_recurrent_simple_gla = _fla_ops()
    require_cuda(OWNER, q_t)
    b, h = q_t.shape[:2]
    if log_decay_t is None:
        g = q_t.new_zeros(b, 1, h, dtype=torch.float32)
    else:  # (H,) or (B, H) -> (B, 1, H)
        g = log_decay_t.float().expand(b, h)[:, None].contiguous()
    # (B, H, D) -> (B, 1, H, D): a sequence of one token
    o, new_state = fused_recurrent_simple_gla(
        q=q_t[:, None], k=k_t[:, None], v=_with_ones(v_t, normalize)[:, None], g=g,
        scale=1.0, initial_state=_state0(state, q_t[:, None], v_t.shape[-1], normalize),
        output_final_state=True)
    return _divide(o[:, 0], normalize, eps, v_t.dtype), new_state.float()
