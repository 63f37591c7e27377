"""flash-linear-attention (fla) Triton kernels behind the signature of ``ref.py``.

Decayed linear attention is fla's simple GLA (``archs._fla``: one log decay per head and
token, zeros when there is none). fla is imported lazily; a missing package raises
``BackendUnavailableError`` with the one install hint (no silent fallback to the
reference). The normaliser uses the same trick as the reference - a ones column appended
to v - rather than fla's own ``normalize=True``, whose state format changed between
versions.
"""
from __future__ import annotations

import torch

from archs._fla import fla_available, fla_ops, simple_gla, simple_gla_step
from archs.backends import require_cuda
from archs.linear_attention.ref import _log_decay, state_shape

Tensor = torch.Tensor
OWNER = "linear attention"
__all__ = ["fla_available", "linear_attn_fused", "linear_attn_fused_step"]


def _fla_ops():
    """fla's simple-GLA kernels, or BackendUnavailableError with the install hint."""
    return fla_ops(OWNER)


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
    return initial_state


def linear_attn_fused(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                      initial_state: Tensor | None = None, return_final_state: bool = False,
                      normalize: bool = True, eps: float = 1e-6, chunk_size: int = 64
                      ) -> tuple[Tensor, Tensor | None]:
    """Same contract as ``chunked.linear_attn_chunked``, via fla's ``chunk_simple_gla``
    (``chunk_size``: a power of two >= 16, see ``archs._fla``)."""
    _fla_ops()  # a missing package first: its install hint says more than the device
    require_cuda(OWNER, q)
    o, final = simple_gla(q, k, _with_ones(v, normalize), _log_decay(log_decay, q),
                          _state0(initial_state, q, v.shape[-1], normalize),
                          return_final_state, chunk_size, OWNER)
    return _divide(o, normalize, eps, v.dtype), final


def linear_attn_fused_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, log_decay_t: Tensor | None,
                           state: Tensor, normalize: bool = True, eps: float = 1e-6
                           ) -> tuple[Tensor, Tensor]:
    """Same contract as ``ref.linear_attn_step``, via fla's ``fused_recurrent_simple_gla``."""
    _fla_ops()
    require_cuda(OWNER, q_t)
    b, h = q_t.shape[:2]
    # None -> no decay; (H,) or (B, H) -> (B, H)
    g = (q_t.new_zeros(b, h, dtype=torch.float32) if log_decay_t is None
         else log_decay_t.float().expand(b, h))
    _state0(state, q_t[:, None], v_t.shape[-1], normalize)
    o, new_state = simple_gla_step(q_t, k_t, _with_ones(v_t, normalize), g, state, OWNER)
    return _divide(o, normalize, eps, v_t.dtype), new_state
