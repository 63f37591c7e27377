"""Mamba-1's selective scan in tiles of time: the same contract and launch as
``triton_scan``'s kernels (``selective_scan_triton_bld(..., tile=T)``), with each program
taking T steps at once instead of one.

Why: ``triton_scan``'s programs walk time one step per iteration, so each step waits for its
loads - at batch 1 and d_inner 2048 that is 64 programs each running L dependent iterations.
Here a program loads a (T, channels, N) tile, runs the recurrence h_t = a_t h_{t-1} + b_t over
it as a parallel prefix scan (``tl.associative_scan`` of (a, b) pairs), adds the carried state
(h_t = (prod a) h_start + scanned b), and carries the tile's last state on: L / T iterations
of log2(T) scan levels. The backward runs the adjoint the same way in reverse:
lambda_t = g_t + a_{t+1} lambda_{t+1} (g_t the readout's gradient dy_t C_t) as a reverse
scan, with the gradient from the right carried in; every parameter's gradient follows
from lambda_t, h_t and a_t h_{t-1} = h_t - b_t (no division by a decay, no shifted state).
Checkpoints are the tile starts, as the sequential kernels' chunk starts.

Which of the two is faster on a GPU is for a GPU to say (``benchmarks/kernels.py --impls
triton_scan triton_scan_tiled``); both are checked against the sequential reference under
Triton's interpreter and compiled for sm_90 by the CPU test suite.
"""
from __future__ import annotations

import triton
import triton.language as tl

from archs.mamba.triton_scan import _channel_block, _softplus, _state_or_zeros

TILE = 16          # steps per tile: (TILE, BLOCK_E, N) tensors stay in registers
MAX_BLOCK_E = 4    # channels per program (a power of two dividing a group's channels)


@triton.jit
def _linear_step(a1, b1, a2, b2):
    """(a, b) pairs of x -> a x + b, composed: first (a1, b1), then (a2, b2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _tile_inputs(u_ptr, dt_ptr, B_ptr, C_ptr, t, mt, u_base, s_ul, bc_base, s_bl, e, me, g_off, mn, bias, A,
                 SOFTPLUS: tl.constexpr):
    """A tile's u and dt_raw (T, E), dt (0 past the end: no decay there), B and C (T, N), the
    decays a and inputs b (T, E, N)."""
    rows = u_base + t[:, None] * s_ul + e[None, :]
    m_te = mt[:, None] & me[None, :]
    u = tl.load(u_ptr + rows, mask=m_te, other=0.0)
    dt_raw = tl.load(dt_ptr + rows, mask=m_te, other=0.0) + bias[None, :]
    dt = _softplus(dt_raw) if SOFTPLUS else dt_raw
    dt = tl.where(m_te, dt, 0.0)
    m_tn = mt[:, None] & mn[None, :]
    bc = bc_base + t[:, None] * s_bl + g_off[None, :]
    Bt = tl.load(B_ptr + bc, mask=m_tn, other=0.0)
    Ct = tl.load(C_ptr + bc, mask=m_tn, other=0.0)
    a = tl.exp(dt[:, :, None] * A[None, :, :])
    b = (dt * u)[:, :, None] * Bt[:, None, :]
    return rows, m_te, u, dt_raw, dt, Bt, Ct, a, b


@triton.jit
def _tile_fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                     out_ptr, last_ptr, ckpt_ptr, L, E, N, CPG, n_chunks,
                     s_ub, s_ul, s_bb, s_bl,
                     CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr):
    pid_e, b, e, n, me, mn, m2, en, A, g_off, Dv, bias, state_base = _channel_block(
        E, N, CPG, A_ptr, D_ptr, bias_ptr, BLOCK_E, BLOCK_N, HAS_D, HAS_BIAS)
    h = _state_or_zeros(h0_ptr, state_base + en, m2, HAS_H0, BLOCK_E, BLOCK_N)
    u_base, bc_base = b * s_ub, b * s_bb
    steps = tl.arange(0, CHUNK)
    for c in range(0, n_chunks):
        if SAVE:
            tl.store(ckpt_ptr + (b * n_chunks + c) * E * N + en, h, mask=m2)
        t = c * CHUNK + steps.to(tl.int64)
        mt = t < L
        rows, m_te, u, dt_raw, dt, Bt, Ct, a, bb = _tile_inputs(
            u_ptr, dt_ptr, B_ptr, C_ptr, t, mt, u_base, s_ul, bc_base, s_bl, e, me, g_off, mn, bias, A, SOFTPLUS)
        a_cum, b_cum = tl.associative_scan((a, bb), 0, _linear_step)
        hs = a_cum * h[None, :, :] + b_cum                        # (T, E, N): every state of the tile
        y = tl.sum(hs * Ct[:, None, :], axis=2) + Dv[None, :] * u
        if HAS_Z:
            zt = tl.load(z_ptr + rows, mask=m_te, other=0.0)
            y = y * zt * tl.sigmoid(zt)
        tl.store(out_ptr + rows, y, mask=m_te)
        # past the end a = 1 and b = 0: the last row is the state after the last real step
        h = tl.sum(tl.where((steps == CHUNK - 1)[:, None, None], hs, 0.0), axis=0)
    tl.store(last_ptr + state_base + en, h, mask=m2)


@triton.jit
def _tile_bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
                     gout_ptr, glast_ptr, scratch_ptr,
                     du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dh0_ptr, dbias_ptr,
                     L, E, N, CPG, n_chunks, n_blocks,
                     s_ub, s_ul, s_bb, s_bl, s_pl,
                     CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_GLAST: tl.constexpr, SOFTPLUS: tl.constexpr):
    """``_scan_bwd_kernel``'s outputs (scratch_ptr and n_blocks unused: the tile's states are
    recomputed in registers)."""
    pid_e, b, e, n, me, mn, m2, en, A, g_off, Dv, bias, state_base = _channel_block(
        E, N, CPG, A_ptr, D_ptr, bias_ptr, BLOCK_E, BLOCK_N, HAS_D, HAS_BIAS)
    # the gradient flowing into the state at the end of the current tile, from the right
    carry = _state_or_zeros(glast_ptr, state_base + en, m2, HAS_GLAST, BLOCK_E, BLOCK_N)
    dA_acc = tl.zeros([BLOCK_E, BLOCK_N], tl.float32)
    dD_acc = tl.zeros([BLOCK_E], tl.float32)
    dbias_acc = tl.zeros([BLOCK_E], tl.float32)
    u_base, bc_base = b * s_ub, b * s_bb
    part_base = ((pid_e % (CPG // BLOCK_E)) * tl.num_programs(1) + b) * L * s_pl
    steps = tl.arange(0, CHUNK)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        t = c * CHUNK + steps.to(tl.int64)
        mt = t < L
        rows, m_te, u, dt_raw, dt, Bt, Ct, a, bb = _tile_inputs(
            u_ptr, dt_ptr, B_ptr, C_ptr, t, mt, u_base, s_ul, bc_base, s_bl, e, me, g_off, mn, bias, A, SOFTPLUS)
        h_start = tl.load(ckpt_ptr + (b * n_chunks + c) * E * N + en, mask=m2, other=0.0)
        a_cum, b_cum = tl.associative_scan((a, bb), 0, _linear_step)
        hs = a_cum * h_start[None, :, :] + b_cum
        g = tl.load(gout_ptr + rows, mask=m_te, other=0.0)
        if HAS_Z:
            zt = tl.load(z_ptr + rows, mask=m_te, other=0.0)
            sz = tl.sigmoid(zt)
            y = tl.sum(hs * Ct[:, None, :], axis=2) + Dv[None, :] * u      # before the gate
            tl.store(dz_ptr + rows, g * y * sz * (1.0 + zt * (1.0 - sz)), mask=m_te)
            dy = g * zt * sz
        else:
            dy = g
        # lambda_t = dy_t C_t + a_{t+1} lambda_{t+1}: the next step's decay (1 at the tile's
        # last step, whose successor's contribution is the carry; 1 past the end)
        t1 = t + 1
        m1 = (t1 < L)[:, None] & me[None, :] & (steps < CHUNK - 1)[:, None]
        dt1 = tl.load(dt_ptr + u_base + t1[:, None] * s_ul + e[None, :], mask=m1, other=0.0) + bias[None, :]
        dt1 = _softplus(dt1) if SOFTPLUS else dt1
        a_next = tl.where(m1[:, :, None], tl.exp(dt1[:, :, None] * A[None, :, :]), 1.0)
        injected = dy[:, :, None] * Ct[:, None, :]
        c_cum, lam = tl.associative_scan((a_next, injected), 0, _linear_step, reverse=True)
        lam = lam + c_cum * carry[None, :, :]
        d_decay = lam * (hs - bb)                                 # dL/d(dt A) through a_t h_{t-1}
        dA_acc += tl.sum(d_decay * dt[:, :, None], axis=0)
        dhB = tl.sum(lam * Bt[:, None, :], axis=2)
        ddt = tl.sum(d_decay * A[None, :, :], axis=2) + dhB * u
        tl.store(du_ptr + rows, dhB * dt + dy * Dv[None, :], mask=m_te)
        dD_acc += tl.sum(dy * u, axis=0)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(m_te, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        tl.store(ddt_ptr + rows, ddt, mask=m_te)
        m_tn = mt[:, None] & mn[None, :]
        part = part_base + t[:, None] * s_pl + g_off[None, :]
        tl.store(dB_ptr + part, tl.sum(lam * (dt * u)[:, :, None], axis=1), mask=m_tn)
        tl.store(dC_ptr + part, tl.sum(dy[:, :, None] * hs, axis=1), mask=m_tn)
        # into the previous tile: a_s lambda_s of this tile's first step
        carry = tl.sum(tl.where((steps == 0)[:, None, None], a * lam, 0.0), axis=0)
    tl.store(dh0_ptr + state_base + en, carry, mask=m2)
    tl.store(dA_ptr + state_base + en, dA_acc, mask=m2)
    tl.store(dD_ptr + b * E + e, dD_acc, mask=me)
    tl.store(dbias_ptr + b * E + e, dbias_acc, mask=me)
