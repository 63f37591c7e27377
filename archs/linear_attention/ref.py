"""Causal linear attention in pure PyTorch: the numerical truth.

Katharopoulos et al. 2020 replace softmax(q k^T) v by phi(q)^T S_t / (phi(q)^T z_t) with
S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum_{s<=t} phi(k_s). This module receives q and
k *after* the feature map. An optional per-head log-decay g <= 0 turns it into
retention / gated linear attention (RetNet, GLA):

    S_t = exp(g_t) S_{t-1} + k_t v_t^T,    o_t = q_t^T S_t  [/ (q_t^T z_t + eps)]

``log_decay`` is None (no decay), (H,) (a fixed decay per head, RetNet) or (B, L, H)
(data dependent, a gated variant). With ``normalize=False`` the denominator is dropped
(RetNet normalises the output with a norm layer instead).

The normaliser is linear attention with value 1, so it rides along as one extra value
column: with ``normalize=True`` the state is (B, H, K, V + 1) and its last column is z;
otherwise it is (B, H, K, V). One state tensor, one code path for both cases.

Three forms compute the same function, with the same signature:
* ``linear_attn_quadratic`` - the explicit causal (decay-)masked L x L matrix (backend "ref");
* ``linear_attn_recurrent`` - one step at a time with a float32 state: what the tests hold
  the other forms to;
* ``chunked.linear_attn_chunked`` - quadratic inside chunks, state passed across them;
  the training form, linear in L, any length (backend "chunked").
They compute in at least float32 and return the output in v's dtype. The recurrence and
its chunked algorithm are shared with Mamba-2 (``archs._ssd``).
"""
from __future__ import annotations

from typing import Callable

import torch

# Decayed linear attention is the scalar-decay recurrence of SSD (x = v, B = k, C = q).
from archs._ssd import compute_dtype, quadratic_core, recurrent_core, step_core

Tensor = torch.Tensor
Core = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


# -- small pieces ------------------------------------------------------------------------
def state_shape(batch: int, heads: int, d_key: int, d_value: int, normalize: bool
                ) -> tuple[int, int, int, int]:
    """Shape of the recurrent state; the extra value column holds the normaliser z."""
    return (batch, heads, d_key, d_value + int(normalize))


def retnet_log_decay(n_heads: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """RetNet's fixed per-head decays, log(1 - 2^(-5-h)): a spread of memory lengths
    from ~32 tokens (head 0) upwards, doubling per head."""
    h = torch.arange(n_heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -5.0 - h)).to(dtype)


def _log_decay(log_decay: Tensor | None, q: Tensor) -> Tensor:
    """None | (H,) | (B, L, H) -> (B, L, H) in the compute dtype (zeros: no decay)."""
    b, l, h, _ = q.shape
    dtype = compute_dtype(q)
    if log_decay is None:
        return q.new_zeros(b, l, h, dtype=dtype)
    if log_decay.shape == (h,):
        return log_decay.to(dtype).expand(b, l, h)
    if log_decay.shape == (b, l, h):
        return log_decay.to(dtype)
    raise ValueError(f"log_decay must be None, (heads,) = ({h},) or (batch, len, heads) = "
                     f"{(b, l, h)}; got {tuple(log_decay.shape)}")


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3] or v.dim() != 4:
        raise ValueError(f"expected q, k (batch, len, heads, d_key) and v (batch, len, heads, "
                         f"d_value) with matching leading dims; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")


def run_core(core: Core, q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None,
             initial_state: Tensor | None, return_final_state: bool, normalize: bool,
             eps: float) -> tuple[Tensor, Tensor | None]:
    """Shared wrapper: widen, append the ones column, run ``core``, divide by z."""
    _check(q, k, v)
    b, _, h, dk = q.shape
    dtype = compute_dtype(q)
    g = _log_decay(log_decay, q)
    qf, kf, vf = q.to(dtype), k.to(dtype), v.to(dtype)
    if normalize:
        vf = torch.cat([vf, vf.new_ones(*vf.shape[:-1], 1)], dim=-1)  # (b, l, h, dv+1)
    shape = state_shape(b, h, dk, v.shape[-1], normalize)
    if initial_state is None:
        state0 = q.new_zeros(shape, dtype=dtype)
    elif tuple(initial_state.shape) != shape:
        raise ValueError(f"initial_state must be {shape} (batch, heads, d_key, d_value"
                         f"{' + 1 for the normaliser' if normalize else ''}); "
                         f"got {tuple(initial_state.shape)}")
    else:
        state0 = initial_state.to(dtype)
    if q.shape[1] == 0:  # nothing to mix: the state passes through unchanged
        return v.new_zeros(v.shape), (state0 if return_final_state else None)
    o, final = core(qf, kf, vf, g, state0)
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + eps)
    return o.to(v.dtype), (final if return_final_state else None)


# -- one step: the recurrence itself -------------------------------------------------------
def linear_attn_step(q_t: Tensor, k_t: Tensor, v_t: Tensor, log_decay_t: Tensor | None,
                     state: Tensor, normalize: bool = True, eps: float = 1e-6
                     ) -> tuple[Tensor, Tensor]:
    """One token: q_t, k_t (B, H, K), v_t (B, H, V), log_decay_t None | (H,) | (B, H)."""
    g = None if log_decay_t is None else (
        log_decay_t if log_decay_t.dim() == 1 else log_decay_t[:, None])
    o, new_state = run_core(recurrent_core, q_t[:, None], k_t[:, None], v_t[:, None], g,
                            state, True, normalize, eps)
    return o[:, 0], new_state


# -- the forms ------------------------------------------------------------------------------
def linear_attn_quadratic(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                          initial_state: Tensor | None = None, return_final_state: bool = False,
                          normalize: bool = True, eps: float = 1e-6
                          ) -> tuple[Tensor, Tensor | None]:
    """Quadratic form: O(L^2) time and memory. Returns (o (B, L, H, V), final state | None)."""
    return run_core(quadratic_core, q, k, v, log_decay, initial_state, return_final_state,
                    normalize, eps)


def linear_attn_recurrent(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor | None = None,
                          initial_state: Tensor | None = None,
                          return_final_state: bool = False, normalize: bool = True,
                          eps: float = 1e-6) -> tuple[Tensor, Tensor | None]:
    """Step-by-step recurrence with a float32 state: slow, and the reference."""
    return run_core(recurrent_core, q, k, v, log_decay, initial_state, return_final_state,
                    normalize, eps)
