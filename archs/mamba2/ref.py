"""Mamba-2's state-space duality (SSD) in pure PyTorch: the numerical truth.

The SSD layer (Dao & Gu 2024, "Transformers are SSMs") is a selective SSM whose
transition is a *scalar* per head: for each head h with head dim P and state dim N,

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t B_t^T        h_t: (P, N)
    y_t = h_t C_t + D * x_t

with dt_t > 0 (already softplus-ed), A < 0, and B, C shared by the heads of a group.
Unrolled, y = M x with M[t, s] = C_t . B_s * dt_s * exp(sum_{s<r<=t} dt_r A): a causal,
decay-masked attention-like matrix. Three forms compute the same function:

* ``ssd_quadratic`` - materialise M (L x L); quadratic, for testing;
* ``ssd_recurrent`` - the recurrence above, one step at a time; fp32 state (backend "ref");
* ``chunked.ssd_chunked`` - the paper's chunked algorithm (quadratic inside a chunk,
  recurrent across chunks); the training form, linear in L (backend "chunked").

It is linear attention's decayed recurrence with (q, k, v) = (C, B, dt x) and log decay
dt A; the three forms run the cores shared with linear attention (``archs._ssd``).

All take x (B, L, H, P), dt (B, L, H), A (H,), B and C (B, L, G, N), optional D (H,),
an optional fp32 initial state (B, H, P, N) and return (y, final_state | None).
They compute in at least float32 (float64 stays float64) and return y in x's dtype.
"""
from __future__ import annotations

import torch
from einops import repeat

from archs._ssd import compute_dtype, quadratic_core, recurrent_core, segsum, step_core, wide

Tensor = torch.Tensor
__all__ = ["compute_dtype", "run_ssd", "segsum", "ssd_quadratic", "ssd_recurrent", "ssd_step"]


# -- small pieces ------------------------------------------------------------------------
def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    b, l, h, _ = x.shape
    if dt.shape != (b, l, h):
        raise ValueError(f"dt must be (batch, len, heads) = {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must be (heads,) = ({h},), got {tuple(A.shape)}")
    if B.shape != C.shape or B.shape[:2] != (b, l) or B.dim() != 4:
        raise ValueError(f"B and C must both be (batch, len, groups, d_state) with batch, len "
                         f"= {(b, l)}; got {tuple(B.shape)} and {tuple(C.shape)}")
    if h % B.shape[2] != 0:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({B.shape[2]})")


def _heads(BC: Tensor, n_heads: int) -> Tensor:
    """(b, l, g, n) -> (b, l, h, n): each group's B/C shared by its n_heads/g heads."""
    return repeat(BC, "b l g n -> b l (g r) n", r=n_heads // BC.shape[2])


def _initial(initial_state: Tensor | None, x: Tensor, n: int) -> Tensor:
    b, _, h, p = x.shape
    if initial_state is None:
        return x.new_zeros(b, h, p, n, dtype=compute_dtype(x))
    if initial_state.shape != (b, h, p, n):
        raise ValueError(f"initial_state must be (batch, heads, headdim, d_state) = "
                         f"{(b, h, p, n)}, got {tuple(initial_state.shape)}")
    return initial_state.to(compute_dtype(x))


def _skip(y: Tensor, x: Tensor, D: Tensor | None) -> Tensor:
    return y if D is None else y + x * wide(D)[:, None]


def _as_linear(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor):
    """SSD inputs -> the shared recurrence's (q, k, v, g) = (C, B, dt x, dt A), widened."""
    h = x.shape[-2]
    dtf = wide(dt)
    if x.dim() == 3:  # one token: (b, h, p), B/C (b, g, n)
        B, C = B[:, None], C[:, None]
    q, k = (_heads(wide(t), h) for t in (C, B))
    if x.dim() == 3:
        q, k = q[:, 0], k[:, 0]
    return q, k, wide(x) * dtf[..., None], dtf * wide(A)


def run_ssd(core, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
            initial_state: Tensor | None, return_final_state: bool
            ) -> tuple[Tensor, Tensor | None]:
    """Check, map to the shared recurrence, run ``core`` there, map back (the (P, N) state
    is the (K, V) = (N, P) state transposed) and add the D skip."""
    _check_shapes(x, dt, A, B, C)
    state0 = _initial(initial_state, x, B.shape[-1]).transpose(-1, -2)
    y, final = core(*_as_linear(x, dt, A, B, C), state0)
    return _skip(y, wide(x), D).to(x.dtype), (final.transpose(-1, -2) if return_final_state else None)


# -- one step: the recurrence itself -------------------------------------------------------
def ssd_step(x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor, state: Tensor,
             D: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One token. x_t (b, h, p), dt_t (b, h), B_t / C_t (b, g, n), state (b, h, p, n) fp32.

    Returns y_t (b, h, p) in x_t's dtype and the new fp32 state.
    """
    y, new = step_core(*_as_linear(x_t, dt_t, A, B_t, C_t), state.transpose(-1, -2))
    return _skip(y, wide(x_t), D).to(x_t.dtype), new.transpose(-1, -2)


# -- the forms ------------------------------------------------------------------------------
def ssd_recurrent(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None = None, initial_state: Tensor | None = None,
                  return_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """Sequential scan over time with an fp32 state: slow, and the reference for the rest."""
    return run_ssd(recurrent_core, x, dt, A, B, C, D, initial_state, return_final_state)


def ssd_quadratic(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None = None, initial_state: Tensor | None = None,
                  return_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """Quadratic form: y = (L o C B^T) (dt x) with L = exp(segsum(dt A)), all L x L."""
    return run_ssd(quadratic_core, x, dt, A, B, C, D, initial_state, return_final_state)
