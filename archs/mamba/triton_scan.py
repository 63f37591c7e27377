"""Mamba-1's selective scan as archbench's own Triton kernels (``fused_impl="triton"``): for a
GPU without mamba-ssm's CUDA build, where the chunked PyTorch scan is ~1,000x off its
roofline (results/nvidia_h200/README.md).

What each program does, after mamba_ssm's CUDA kernel (the facts, not its code): one batch
row and a block of channels, the (channels, N) state in registers, time walked step by
step - dt = softplus(delta + bias), the decay exp(dt A), the update, the C readout, the D
skip and the SiLU(z) gate in one pass - so no (L, B, D, N) tensor exists anywhere. The
forward keeps the state every ``CHUNK`` steps; the backward walks the chunks from the last,
recomputes a chunk's states from its checkpoint into a scratch buffer of its own, then runs
the adjoint back through them. Channels are independent, so the parallelism is batch x
channel blocks; the time loop is sequential (mamba_ssm also scans chunks in parallel inside
a thread block - not done here).

Layout as the CPU kernel's (archs/_scan_cpu.py): channels last, u, delta, z (B, L, E);
B, C (B, L, G, N); A (E, N); D, bias (E,); state (B, E, N). Computes in float32 whatever the
inputs (bf16 inputs are widened; float64 too - the float32 kernel is what runs).

Tested under Triton's interpreter against ``ref.selective_scan_ref`` (tests/triton_interpret/
test_mamba_triton_scan.py: outputs, last state, every gradient), and on a GPU by
``pytest -m gpu``. Imports triton: import this module only where triton is installed.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

# Steps between the states the forward keeps: the backward's scratch holds CHUNK + 1 states
# of a (BLOCK_E, N) block per program (65 x 32 x 16 floats = 130 KiB; batch x E x 65 x N floats
# in all, 52 MB at 8 x 1536 x 16). Memory beside it: the checkpoints, B x L/64 x E x N floats,
# and the dB / dC partials, (channels per group / BLOCK_E) x the size of B each (96x B's size
# at d_inner 1536: ~200 MB at L 32K, batch 1) - atomics would avoid them, at the price of
# run-to-run determinism.
CHUNK = 64
MAX_BLOCK_E = 32


def block_channels(channels_per_group: int, most: int = MAX_BLOCK_E) -> int:
    """Channels per program: a power of two <= ``most`` dividing the group's channels, so
    a block never straddles two groups of B / C (the backward sums dB, dC over its block)."""
    block = 1
    while block * 2 <= most and channels_per_group % (block * 2) == 0:
        block *= 2
    return block


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) to float32 accuracy: for exp(x) < 0.05 (x < -3, where Mamba's dt sits:
    its bias starts at softplus^-1(0.001..0.1)) a series, since log(1 + y) in float32 keeps
    only ~7 digits of 1 + y (a 1e-4 relative error at x = -7)."""
    y = tl.exp(tl.minimum(x, 20.0))
    series = y * (1.0 - y * (0.5 - y * (1.0 / 3.0 - y * (0.25 - y * 0.2))))
    return tl.where(x > 20.0, x, tl.where(y < 0.05, series, tl.log(1.0 + y)))


@triton.jit
def _channel_block(E, N, CPG, A_ptr, D_ptr, bias_ptr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
                   HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A program's channel block pid_e and batch row b (int64: offsets past 2^31), its
    channels e, state entries n, their masks, the (E, N) offsets of its block, its A, D and
    bias, the offsets of its group's entries in a row of B / C, and where its (E, N) states
    start (state_base)."""
    pid_e = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    n = tl.arange(0, BLOCK_N)
    me, mn = e < E, n < N
    m2 = me[:, None] & mn[None, :]
    en = e[:, None] * N + n[None, :]
    A = tl.load(A_ptr + en, mask=m2, other=0.0)
    g_off = (pid_e * BLOCK_E // CPG) * N + n
    Dv = tl.load(D_ptr + e, mask=me, other=0.0) if HAS_D else tl.zeros([BLOCK_E], tl.float32)
    bias = tl.load(bias_ptr + e, mask=me, other=0.0) if HAS_BIAS else tl.zeros([BLOCK_E], tl.float32)
    return pid_e, b, e, n, me, mn, m2, en, A, g_off, Dv, bias, b * E * N


@triton.jit
def _state_or_zeros(ptr, offsets, mask, PRESENT: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr):
    """A (BLOCK_E, BLOCK_N) state block from ``ptr`` (an initial state, a last state's
    gradient), or zeros where that input is absent."""
    if PRESENT:
        return tl.load(ptr + offsets, mask=mask, other=0.0)
    return tl.zeros([BLOCK_E, BLOCK_N], tl.float32)


@triton.jit
def _step_inputs(u_ptr, dt_ptr, B_ptr, row, bc_row, g_off, me, mn, bias, SOFTPLUS: tl.constexpr):
    """Step t's u, delta + bias, dt (softplus'd or not) and B (the group's N entries)."""
    u = tl.load(u_ptr + row, mask=me, other=0.0)
    dt_raw = tl.load(dt_ptr + row, mask=me, other=0.0) + bias
    dt = _softplus(dt_raw) if SOFTPLUS else dt_raw
    Bt = tl.load(B_ptr + bc_row + g_off, mask=mn, other=0.0)
    return u, dt_raw, dt, Bt


@triton.jit
def _scan_fwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
                     out_ptr, last_ptr, ckpt_ptr, L, E, N, CPG, n_chunks,
                     s_ub, s_ul, s_bb, s_bl,
                     CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr):
    pid_e, b, e, n, me, mn, m2, en, A, g_off, Dv, bias, state_base = _channel_block(
        E, N, CPG, A_ptr, D_ptr, bias_ptr, BLOCK_E, BLOCK_N, HAS_D, HAS_BIAS)
    h = _state_or_zeros(h0_ptr, state_base + en, m2, HAS_H0, BLOCK_E, BLOCK_N)
    u_base, bc_base = b * s_ub, b * s_bb
    for c in range(0, n_chunks):
        if SAVE:
            tl.store(ckpt_ptr + (b * n_chunks + c) * E * N + en, h, mask=m2)
        t_end = tl.minimum(c * CHUNK + CHUNK, L)
        for t32 in range(c * CHUNK, t_end):
            t = t32.to(tl.int64)  # t * stride in int64: one batch row may pass 2^31 elements
            row = u_base + t * s_ul + e
            u, dt_raw, dt, Bt = _step_inputs(u_ptr, dt_ptr, B_ptr, row, bc_base + t * s_bl, g_off, me, mn,
                                             bias, SOFTPLUS)
            Ct = tl.load(C_ptr + bc_base + t * s_bl + g_off, mask=mn, other=0.0)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            y = tl.sum(h * Ct[None, :], axis=1) + Dv * u
            if HAS_Z:
                zt = tl.load(z_ptr + row, mask=me, other=0.0)
                y = y * zt * tl.sigmoid(zt)
            tl.store(out_ptr + row, y, mask=me)
    tl.store(last_ptr + state_base + en, h, mask=m2)


@triton.jit
def _scan_bwd_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr,
                     gout_ptr, glast_ptr, scratch_ptr,
                     du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dh0_ptr, dbias_ptr,
                     L, E, N, CPG, n_chunks, n_blocks,
                     s_ub, s_ul, s_bb, s_bl, s_pl,
                     CHUNK: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                     HAS_GLAST: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Every gradient of one (batch row, channel block); dA, dD, dbias per batch row and
    dB, dC per block of a group (partial sums the wrapper adds up: deterministic, no atomics)."""
    pid_e, b, e, n, me, mn, m2, en, A, g_off, Dv, bias, state_base = _channel_block(
        E, N, CPG, A_ptr, D_ptr, bias_ptr, BLOCK_E, BLOCK_N, HAS_D, HAS_BIAS)
    dh = _state_or_zeros(glast_ptr, state_base + en, m2, HAS_GLAST, BLOCK_E, BLOCK_N)
    dA_acc = tl.zeros([BLOCK_E, BLOCK_N], tl.float32)
    dD_acc = tl.zeros([BLOCK_E], tl.float32)
    dbias_acc = tl.zeros([BLOCK_E], tl.float32)
    # this program's scratch: CHUNK + 1 states, [0] the chunk's start, [i + 1] after its step i
    blk = tl.arange(0, BLOCK_E)[:, None] * BLOCK_N + n[None, :]
    scratch = scratch_ptr + (b * n_blocks + pid_e) * (CHUNK + 1) * BLOCK_E * BLOCK_N + blk
    u_base, bc_base = b * s_ub, b * s_bb
    # dB / dC partials: one per block of a group, so each (partial, group) slot is written once
    part_base = ((pid_e % (CPG // BLOCK_E)) * tl.num_programs(1) + b) * L * s_pl
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        t0 = c * CHUNK
        t_end = tl.minimum(t0 + CHUNK, L)
        h = tl.load(ckpt_ptr + (b * n_chunks + c) * E * N + en, mask=m2, other=0.0)
        tl.store(scratch, h)
        for t32 in range(t0, t_end):                      # recompute the chunk's states
            t = t32.to(tl.int64)
            u, dt_raw, dt, Bt = _step_inputs(u_ptr, dt_ptr, B_ptr, u_base + t * s_ul + e, bc_base + t * s_bl,
                                             g_off, me, mn, bias, SOFTPLUS)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :]
            tl.store(scratch + (t - t0 + 1) * BLOCK_E * BLOCK_N, h)
        tl.debug_barrier()
        for tt in range(0, t_end - t0):                   # the adjoint, back through them
            t = (t_end - 1 - tt).to(tl.int64)
            i = t - t0
            h_t = tl.load(scratch + (i + 1) * BLOCK_E * BLOCK_N)
            h_prev = tl.load(scratch + i * BLOCK_E * BLOCK_N)
            row = u_base + t * s_ul + e
            u, dt_raw, dt, Bt = _step_inputs(u_ptr, dt_ptr, B_ptr, row, bc_base + t * s_bl, g_off, me, mn,
                                             bias, SOFTPLUS)
            Ct = tl.load(C_ptr + bc_base + t * s_bl + g_off, mask=mn, other=0.0)
            g = tl.load(gout_ptr + row, mask=me, other=0.0)
            if HAS_Z:
                zt = tl.load(z_ptr + row, mask=me, other=0.0)
                sz = tl.sigmoid(zt)
                y = tl.sum(h_t * Ct[None, :], axis=1) + Dv * u      # before the gate
                tl.store(dz_ptr + row, g * y * sz * (1.0 + zt * (1.0 - sz)), mask=me)
                dy = g * zt * sz
            else:
                dy = g
            dh += dy[:, None] * Ct[None, :]
            dh = tl.where(m2, dh, 0.0)
            tl.store(dC_ptr + part_base + t * s_pl + g_off, tl.sum(dy[:, None] * h_t, axis=0), mask=mn)
            decay = tl.exp(dt[:, None] * A)
            d_decay = dh * h_prev * decay                 # d/d(dt A) of the decay term
            dhB = tl.sum(dh * Bt[None, :], axis=1)
            ddt = tl.sum(d_decay * A, axis=1) + dhB * u
            dA_acc += d_decay * dt[:, None]
            tl.store(dB_ptr + part_base + t * s_pl + g_off, tl.sum(dh * (dt * u)[:, None], axis=0), mask=mn)
            tl.store(du_ptr + row, dhB * dt + dy * Dv, mask=me)
            dD_acc += dy * u
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_raw)
            dbias_acc += ddt
            tl.store(ddt_ptr + row, ddt, mask=me)
            dh = dh * decay
        tl.debug_barrier()                                # before the next chunk's recompute
    tl.store(dh0_ptr + state_base + en, dh, mask=m2)
    tl.store(dA_ptr + state_base + en, dA_acc, mask=m2)
    tl.store(dD_ptr + b * E + e, dD_acc, mask=me)
    tl.store(dbias_ptr + b * E + e, dbias_acc, mask=me)


def _flags(D, z, bias) -> dict:
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=bias is not None)


def _kernels(tiled: bool, channels_per_group: int):
    """(forward kernel, backward kernel, steps per checkpoint, channels per program) of the
    step-by-step form or the tiled one (archs/mamba/triton_scan_tiled.py)."""
    if not tiled:
        return _scan_fwd_kernel, _scan_bwd_kernel, CHUNK, block_channels(channels_per_group)
    from archs.mamba import triton_scan_tiled as tiles
    return (tiles._tile_fwd_kernel, tiles._tile_bwd_kernel, tiles.TILE,
            block_channels(channels_per_group, tiles.MAX_BLOCK_E))


class _TritonScan(torch.autograd.Function):
    """u, dt, z (B, L, E) float32 with (L, E) packed; A (E, N); Bm, Cm (B, L, G, N) packed;
    D, bias (E,); h0 (B, E, N); ``tiled``: the tiled kernels. Returns out (B, L, E), last
    state (B, E, N)."""

    @staticmethod
    def forward(ctx, u, dt, A, Bm, Cm, D, z, h0, bias, softplus, tiled):
        batch, seqlen, dim = u.shape
        groups, dstate = Bm.shape[2], Bm.shape[3]
        fwd, _, chunk, block_e = _kernels(tiled, dim // groups)
        n_chunks = triton.cdiv(seqlen, chunk)
        save = any(ctx.needs_input_grad)
        out, last = torch.empty_like(u), u.new_empty(batch, dim, dstate)
        ckpt = u.new_empty(batch, n_chunks, dim, dstate) if save else u.new_empty(1)
        grid = (triton.cdiv(dim, block_e), batch)
        fwd[grid](
            u, dt, A, Bm, Cm, D, z, bias, h0, out, last, ckpt, seqlen, dim, dstate, dim // groups,
            n_chunks, u.stride(0), u.stride(1), Bm.stride(0), Bm.stride(1), CHUNK=chunk,
            BLOCK_E=block_e, BLOCK_N=triton.next_power_of_2(dstate), HAS_H0=h0 is not None,
            SOFTPLUS=softplus, SAVE=save, **_flags(D, z, bias))
        if save:
            ctx.save_for_backward(u, dt, A, Bm, Cm, D, z, bias, ckpt)
        ctx.softplus, ctx.has_h0, ctx.tiled = softplus, h0 is not None, tiled
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_last):
        u, dt, A, Bm, Cm, D, z, bias, ckpt = ctx.saved_tensors
        batch, seqlen, dim = u.shape
        groups, dstate = Bm.shape[2], Bm.shape[3]
        _, bwd, chunk, block_e = _kernels(ctx.tiled, dim // groups)
        block_n = triton.next_power_of_2(dstate)
        n_blocks, n_chunks = triton.cdiv(dim, block_e), ckpt.shape[1]
        g_out = g_out.contiguous()
        g_last = None if g_last is None else g_last.contiguous()
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else u.new_empty(1)
        dA = u.new_empty(batch, dim, dstate)
        # partial sums over channel blocks: one per block of a group (B / C are shared by a group)
        dBp = u.new_empty((dim // groups) // block_e, batch, seqlen, groups, dstate)
        dCp = torch.empty_like(dBp)
        dD, dbias = u.new_empty(batch, dim), u.new_empty(batch, dim)
        dh0 = u.new_empty(batch, dim, dstate)
        # the step-by-step form's recomputed states (the tiled one keeps a tile's in registers)
        scratch = u.new_empty(1 if ctx.tiled else batch * n_blocks * (chunk + 1) * block_e * block_n)
        bwd[(n_blocks, batch)](
            u, dt, A, Bm, Cm, D, z, bias, ckpt, g_out, g_last, scratch,
            du, ddt, dz, dA, dBp, dCp, dD, dh0, dbias, seqlen, dim, dstate, dim // groups,
            # the partials' own row stride: B's can be anything along a dimension of size 1
            n_chunks, n_blocks, u.stride(0), u.stride(1), Bm.stride(0), Bm.stride(1), groups * dstate,
            CHUNK=chunk, BLOCK_E=block_e, BLOCK_N=block_n, HAS_GLAST=g_last is not None,
            SOFTPLUS=ctx.softplus, **_flags(D, z, bias))
        return (du, ddt, dA.sum(0), dBp.sum(0), dCp.sum(0), None if D is None else dD.sum(0),
                dz if z is not None else None, dh0 if ctx.has_h0 else None,
                None if bias is None else dbias.sum(0), None, None)


def selective_scan_triton_bld(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                              D: Tensor | None = None, z: Tensor | None = None,
                              delta_bias: Tensor | None = None, delta_softplus: bool = False,
                              initial_state: Tensor | None = None, return_last_state: bool = False,
                              tiled: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """``fused_cpu.selective_scan_cpu_bld``'s contract on a GPU (or under Triton's
    interpreter): u, delta, z (B, L, E); B, C (B, L, N) or grouped (B, L, G, N); A (E, N);
    out (B, L, E) in u's dtype, the last state (B, E, N) in float32. ``tiled``: the kernels
    that take TILE steps at once by a parallel scan (archs/mamba/triton_scan_tiled.py)."""
    from archs.mamba.ref import check_scan_inputs_bld

    check_scan_inputs_bld(u, delta, A, B, C, D, z, delta_bias, initial_state)

    def f32(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(torch.float32).contiguous()

    def grouped(t: Tensor) -> Tensor:
        return f32(t.unsqueeze(2) if t.dim() == 3 else t)

    Bm, Cm = grouped(B), grouped(C)
    if Bm.shape != Cm.shape:  # the kernel reads C where it reads B
        raise ValueError(f"the Triton scan needs B and C in the same groups, got B {tuple(B.shape)} and "
                         f"C {tuple(C.shape)}; expand the ungrouped one to (batch, L, G, N)")
    out, last = _TritonScan.apply(f32(u), f32(delta), f32(A), Bm, Cm, f32(D), f32(z),
                                  f32(initial_state), f32(delta_bias), bool(delta_softplus), bool(tiled))
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                          D: Tensor | None = None, z: Tensor | None = None,
                          delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          initial_state: Tensor | None = None, return_last_state: bool = False,
                          tiled: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """``selective_scan_ref``'s signature and layout: u, delta, z (B, D, L); B, C (B, N, L)."""
    from archs.mamba.ref import in_ref_layout

    return in_ref_layout(selective_scan_triton_bld, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                         initial_state, return_last_state, tiled=tiled)
