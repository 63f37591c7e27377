"""Selective scan (Mamba-1 S6), the numerical truth: a plain loop over time in fp32.

Layout follows mamba_ssm's ``selective_scan_fn`` so the three backends are swappable:

    u, delta, z : (B, D, L)      inputs, step sizes, gate
    A           : (D, N)         diagonal state matrix (negative real)
    B, C        : (B, N, L)      input-dependent, or grouped (B, G, N, L) with D % G == 0
    D, delta_bias : (D,)

Per channel d and state n the recurrence is

    dt_t  = softplus(delta_t + delta_bias)            (softplus optional)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t   = <C_t, h_t> + D * u_t ;   out_t = y_t * silu(z_t)

Everything here is written for reading, not speed; ``chunked.py`` is the fast version and
is tested against this file.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from archs.precision import acc_dtype, up


def check_scan_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                      D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
                      initial_state: Tensor | None) -> None:
    """Raise ValueError naming the offending argument when shapes do not line up."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, seqlen), got shape {tuple(u.shape)}")
    batch, dim, seqlen = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, d_state), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported; pass a real (dim, d_state) A")
    d_state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok3 = t.dim() == 3 and t.shape == (batch, d_state, seqlen)
        ok4 = (t.dim() == 4 and t.shape[0] == batch and t.shape[2:] == (d_state, seqlen)
               and dim % t.shape[1] == 0)
        if not (ok3 or ok4):
            raise ValueError(
                f"{name} must be (batch, d_state, seqlen)=({batch}, {d_state}, {seqlen}) or "
                f"grouped (batch, G, d_state, seqlen) with dim % G == 0, got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (dim,):
            raise ValueError(f"{name} must be (dim,)=({dim},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    if initial_state is not None and initial_state.shape != (batch, dim, d_state):
        raise ValueError(f"initial_state must be (batch, dim, d_state)=({batch}, {dim}, "
                         f"{d_state}), got {tuple(initial_state.shape)}")


def check_scan_inputs_bld(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
                          initial_state: Tensor | None) -> None:
    """``check_scan_inputs`` for the channels-last layout the chunked, CPU and Triton scans
    take (u, delta, z (B, L, D); B, C (B, L, N) or (B, L, G, N)), and at least one step."""
    check_scan_inputs(u.transpose(1, 2), delta.transpose(1, 2), A, B.movedim(1, -1),
                      C.movedim(1, -1), D, None if z is None else z.transpose(1, 2),
                      delta_bias, initial_state)
    if u.shape[1] == 0:
        raise ValueError("the selective scan needs seqlen >= 1")


def expand_groups(BC: Tensor, dim: int) -> Tensor:
    """(B, N, L) or grouped (B, G, N, L) -> per-channel (B, D, N, L) in fp32."""
    if BC.dim() == 3:
        return repeat(up(BC), "b n l -> b d n l", d=dim)
    return repeat(up(BC), "b g n l -> b (g h) n l", h=dim // BC.shape[1])


def discretize_dt(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """The step size actually used: softplus(delta + bias) in fp32 (both parts optional)."""
    dt = up(delta)
    if delta_bias is not None:
        dt = dt + up(delta_bias)[:, None]
    return F.softplus(dt) if delta_softplus else dt


def in_ref_layout(scan_bld, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                  D: Tensor | None = None, z: Tensor | None = None, delta_bias: Tensor | None = None,
                  delta_softplus: bool = False, initial_state: Tensor | None = None,
                  return_last_state: bool = False, **options) -> Tensor | tuple[Tensor, Tensor]:
    """A channels-last scan (u, delta, z (B, L, D); B, C (B, L, N) or (B, L, G, N); the CPU and
    Triton kernels' layout) called with ``selective_scan_ref``'s layout and signature:
    u, delta, z (B, D, L); B, C (B, N, L) or (B, G, N, L). ``options`` go to ``scan_bld``."""
    res = scan_bld(u.transpose(1, 2), delta.transpose(1, 2), A, B.movedim(-1, 1), C.movedim(-1, 1), D,
                   None if z is None else z.transpose(1, 2), delta_bias, delta_softplus, initial_state,
                   return_last_state, **options)
    if return_last_state:
        return res[0].transpose(1, 2), res[1]
    return res.transpose(1, 2)


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None = None, z: Tensor | None = None,
                       delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       initial_state: Tensor | None = None, return_last_state: bool = False,
                       ) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential selective scan. Returns out (B, D, L) in u's dtype, and the final state
    (B, D, N) in fp32 if ``return_last_state``."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    batch, dim, seqlen = u.shape
    uf = up(u)
    dt = discretize_dt(delta, delta_bias, delta_softplus)  # (B, D, L)
    Bd, Cd = expand_groups(B, dim), expand_groups(C, dim)  # (B, D, N, L)
    # Discretised transition and input for every step, (B, D, L, N).
    dA = torch.exp(torch.einsum("bdl,dn->bdln", dt, up(A)))
    dBu = torch.einsum("bdl,bdnl,bdl->bdln", dt, Bd, uf)
    h = (up(initial_state) if initial_state is not None
         else u.new_zeros(batch, dim, A.shape[1], dtype=acc_dtype(u)))
    ys = []
    # unbind (not dA[:, :, t]) so autograd stacks per-step grads once instead of
    # materialising a full zero (B, D, L, N) gradient at every step (O(L^2) backward).
    for dA_t, dBu_t, C_t in zip(dA.unbind(2), dBu.unbind(2), Cd.unbind(3)):
        h = dA_t * h + dBu_t
        ys.append(torch.einsum("bdn,bdn->bd", h, C_t))
    y = torch.stack(ys, dim=2)  # (B, D, L)
    if D is not None:
        y = y + uf * up(D)[:, None]
    if z is not None:
        y = y * F.silu(up(z))
    out = y.to(u.dtype)
    return (out, h) if return_last_state else out


def selective_state_update_ref(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor,
                               C: Tensor, D: Tensor | None = None, z: Tensor | None = None,
                               dt_bias: Tensor | None = None, dt_softplus: bool = False,
                               ) -> Tensor:
    """One decode step, mamba_ssm ``selective_state_update`` semantics: updates ``state``
    (B, D, N) IN PLACE and returns out (B, D) in x's dtype.

    x, dt, z: (B, D); A: (D, N); B, C: (B, N); D, dt_bias: (D,).
    """
    batch, dim, d_state = state.shape
    if x.shape != (batch, dim) or dt.shape != (batch, dim):
        raise ValueError(f"x and dt must be (batch, dim)=({batch}, {dim}), "
                         f"got {tuple(x.shape)} and {tuple(dt.shape)}")
    if A.shape != (dim, d_state) or B.shape != (batch, d_state) or C.shape != B.shape:
        raise ValueError(f"A must be ({dim}, {d_state}) and B, C ({batch}, {d_state}); got "
                         f"{tuple(A.shape)}, {tuple(B.shape)}, {tuple(C.shape)}")
    dt = up(dt)
    if dt_bias is not None:
        dt = dt + up(dt_bias)
    if dt_softplus:
        dt = F.softplus(dt)
    dA = torch.exp(rearrange(dt, "b d -> b d 1") * up(A))  # (B, D, N)
    dBx = rearrange(dt * up(x), "b d -> b d 1") * rearrange(up(B), "b n -> b 1 n")
    state.copy_(up(state) * dA + dBx)
    out = torch.einsum("bdn,bn->bd", up(state), up(C))
    if D is not None:
        out = out + up(x) * up(D)
    if z is not None:
        out = out * F.silu(up(z))
    return out.to(x.dtype)
