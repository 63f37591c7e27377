"""The selective-scan C kernel (_scan_cpu.c) every CPU ``fused`` backend runs: Mamba-1's
scan (archs/mamba/fused_cpu.py) and Mamba-2's SSD (archs/mamba2/fused_cpu.py), the way
``_ssd.py`` is the chunked core both linear attention and Mamba-2 share - so importing one
family never loads another.

Built at first use by ``archs._native`` (float32 and float64), and unavailable - with the
reason - where no C compiler exists. What the kernel fuses: dt = softplus(delta + bias), the
decay exp(dt A), the recurrence, the C readout, the D skip and the SiLU(z) gate, forward and
backward, with the state in registers and no (L, B, N, D) tensor anywhere.
"""
from __future__ import annotations

import ctypes
import math
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import is_in_torch_dispatch_mode
from torch.utils.flop_counter import register_flop_formula

from archs import _native
from archs.backends import BackendUnavailableError
from archs.precision import acc_dtype

SOURCE = Path(__file__).with_name("_scan_cpu.c")
# Steps between the states the forward pass keeps for the backward (which recomputes the
# rest): memory is L / CHUNK states, the backward's buffers ~2 x CHUNK x N vectors of 64
# bytes a thread. Longer chunks spread each chunk's fixed work (its checkpoint, the per-step
# inputs the state blocks share) over more steps; measured alone at the induction preset
# ((8, 256, 128 channels), one thread, alternating runs, 2026-12-04), the backward took:
#   Mamba-1 (N = 16, a decay per entry): 16 steps 4.2-4.8 ms, 32 steps 3.7-4.6 (8: 1.1-1.5x slower);
#   Mamba-2 (N = 64, one decay per channel): 16 steps 5.6-6.0 ms, 64 steps 4.5-5.4, 128 and
#   256 no better than 64.
CHUNK = 32                # a decay per state entry (Mamba-1)
SCALAR_DECAY_CHUNK = 64   # one decay per channel, shared by its N entries (Mamba-2's SSD)
VECTOR_BYTES = 64  # VBYTES in _scan_cpu.c: a task owns this many bytes' worth of channels


class ScanDims(ctypes.Structure):
    """Mirror of ``scan_dims`` in _scan_cpu.c (sizes, then (batch, time) element strides)."""
    _fields_ = ([(n, ctypes.c_int64) for n in ("batch", "seqlen", "dim", "dstate", "groups", "chunk")]
                + [(f"s_{n}", ctypes.c_int64 * 2) for n in ("u", "dt", "z", "B", "C", "out")]
                + [(n, ctypes.c_int64) for n in ("nthreads", "softplus", "scalar_decay", "bc_sum")])


def _library(dtype: torch.dtype) -> ctypes.CDLL:
    try:
        return _native.load(SOURCE, dtype, {"scan_fwd": (ScanDims, 12), "scan_bwd": (ScanDims, 20)})
    except _native.NativeKernelUnavailable as exc:
        raise BackendUnavailableError(
            f"backend 'fused' on a CPU runs a C kernel that cannot be built here: {exc}. "
            f"Use backend='chunked' (or 'auto', which records what it ran)") from None


def cpu_kernel_available() -> bool:
    """True when the float32 kernel builds and loads on this machine."""
    return _native.unavailable_reason(SOURCE) is None


def require_cpu_kernel() -> None:
    _library(torch.float32)


def _strides(t: Tensor | None) -> tuple[int, int]:
    return (0, 0) if t is None else (t.stride(0), t.stride(1))


def _inner_contiguous(t: Tensor | None, dims: int = 1) -> Tensor | None:
    """``t`` with its last ``dims`` dimensions packed (a copy only when they are not)."""
    if t is None:
        return None
    packed = t[(0,) * (t.dim() - dims)].is_contiguous() if t.numel() else True
    return t if packed else t.contiguous()


# -- the kernel as two registered ops ---------------------------------------------------------
# Registered with torch's dispatcher (torch.library custom ops) so that a TorchDispatchMode
# sees them: FlopCounterMode counts them with the formulas below (a ctypes call is invisible
# to it: a fused CPU Mamba counted no scan FLOPs at all while its row said the count was
# complete), and they have fake (meta) versions. Outside a dispatch mode _CpuScan calls the
# same functions directly: the custom-op path cost ~0.5-0.8 ms per call here (a quarter of
# the forward kernel at the induction preset). Absent optional outputs come back as empty
# tensors (an op returns tensors, not None).

def _dims(u: Tensor, dt: Tensor, z: Tensor | None, Bm: Tensor, Cm: Tensor, out: Tensor,
          At: Tensor, softplus: bool, chunk: int) -> ScanDims:
    batch, seqlen, dim = u.shape
    groups, dstate = Bm.shape[2], Bm.shape[3]
    scalar_decay = _scalar_decay(At, dstate)
    threads = torch.get_num_threads()
    return ScanDims(batch, seqlen, dim, dstate, groups, chunk, _strides(u), _strides(dt),
                    _strides(z), _strides(Bm), _strides(Cm), _strides(out),
                    threads, int(softplus), int(scalar_decay), int(_bc_sum(batch, groups, threads)))


def _scalar_decay(At: Tensor, dstate: int) -> bool:
    """The kernel's scalar mode: At (1, D) is one decay per channel, shared by its N > 1 state
    entries (Mamba-2's per-head decay); the default checkpoint chunk follows the same test."""
    return At.shape[0] == 1 and dstate > 1


def _bc_sum(batch: int, groups: int, threads: int) -> bool:
    """Whether the backward sums dB and dC over a group's tiles itself (one thread per group
    and sequence) instead of writing a partial per tile for the caller to add: where there
    are at least as many (sequence, group) units as threads. The partials are (tiles, B, L,
    G, N), 8 MB a call for Mamba-2 at the induction preset, and their sum 0.2 ms."""
    return batch * groups >= threads


def _scan_fwd(u: Tensor, dt: Tensor, At: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor | None,
              z: Tensor | None, h0: Tensor | None, bias: Tensor | None, softplus: bool,
              chunk: int, save: bool) -> tuple[Tensor, Tensor, Tensor]:
    """-> out (B, L, E), last state (B, E, N), the per-chunk checkpoints the backward needs
    (B, ceil(L / chunk), N, E) when ``save``, else empty."""
    batch, seqlen, dim = u.shape
    dstate = Bm.shape[3]
    out = u.new_empty(batch, seqlen, dim)
    last = u.new_empty(batch, dim, dstate)
    ckpt = u.new_empty(batch, -(-seqlen // chunk), dstate, dim) if save else u.new_empty(0)
    dims = _dims(u, dt, z, Bm, Cm, out, At, softplus, chunk)
    p = _native.pointer
    _library(u.dtype).scan_fwd(ctypes.byref(dims), p(u), p(dt), p(At), p(Bm), p(Cm), p(D), p(z),
                               p(h0), p(bias), p(out), p(last), p(ckpt) if save else None)
    return out, last, ckpt


# Explicit schemas: no reliance on how a torch version infers them from the annotations.
_scan_fwd_op = torch.library.custom_op(
    "archbench::cpu_scan_fwd", _scan_fwd, mutates_args=(),
    schema="(Tensor u, Tensor dt, Tensor At, Tensor Bm, Tensor Cm, Tensor? D, Tensor? z, "
           "Tensor? h0, Tensor? bias, bool softplus, int chunk, bool save) -> (Tensor, Tensor, Tensor)")


@_scan_fwd_op.register_fake
def _(u, dt, At, Bm, Cm, D, z, h0, bias, softplus, chunk, save):
    batch, seqlen, dim = u.shape
    dstate = Bm.shape[3]
    ckpt = u.new_empty(batch, -(-seqlen // chunk), dstate, dim) if save else u.new_empty(0)
    return u.new_empty(batch, seqlen, dim), u.new_empty(batch, dim, dstate), ckpt


def _scan_bwd(u: Tensor, dt: Tensor, At: Tensor, Bm: Tensor, Cm: Tensor, D: Tensor | None,
              z: Tensor | None, bias: Tensor | None, ckpt: Tensor, g_out: Tensor,
              g_last: Tensor | None, softplus: bool, chunk: int) -> list[Tensor]:
    """-> [du, ddelta, dz, dAt, dB, dC, dD, dh0, dbias]: the partial sums of the kernel
    reduced here; dz, dD and dbias empty where z, D and bias are None."""
    batch, seqlen, dim = u.shape
    groups, dstate = Bm.shape[2], Bm.shape[3]
    tiles = -(-(dim // groups) // (VECTOR_BYTES // u.element_size()))  # tasks per group
    du, ddt = torch.empty_like(g_out), torch.empty_like(g_out)
    dz = torch.empty_like(g_out) if z is not None else None
    dAt = u.new_empty(batch, At.shape[0], dim)
    dD = u.new_empty(batch, dim) if D is not None else None
    dims = _dims(u, dt, z, Bm, Cm, g_out, At, softplus, chunk)
    dB = u.new_empty(*(() if dims.bc_sum else (tiles,)), batch, seqlen, groups, dstate)
    dC = torch.empty_like(dB)
    dh0 = u.new_empty(batch, dim, dstate)
    dbias = u.new_empty(batch, dim) if bias is not None else None
    p = _native.pointer
    _library(u.dtype).scan_bwd(ctypes.byref(dims), p(u), p(dt), p(At), p(Bm), p(Cm), p(D), p(z),
                               p(ckpt), p(g_out), p(g_last), p(bias), p(du), p(ddt), p(dz),
                               p(dAt), p(dD), p(dB), p(dC), p(dh0), p(dbias))

    def given(t: Tensor | None) -> Tensor:  # a distinct empty tensor each: returns may not alias
        return u.new_empty(0) if t is None else t

    return [du, ddt, given(dz), dAt.sum(0), dB if dims.bc_sum else dB.sum(0), dC if dims.bc_sum else dC.sum(0),
            given(None if dD is None else dD.sum(0)), dh0,
            given(None if dbias is None else dbias.sum(0))]


_scan_bwd_op = torch.library.custom_op(
    "archbench::cpu_scan_bwd", _scan_bwd, mutates_args=(),
    schema="(Tensor u, Tensor dt, Tensor At, Tensor Bm, Tensor Cm, Tensor? D, Tensor? z, "
           "Tensor? bias, Tensor ckpt, Tensor g_out, Tensor? g_last, bool softplus, int chunk) "
           "-> Tensor[]")


@_scan_bwd_op.register_fake
def _(u, dt, At, Bm, Cm, D, z, bias, ckpt, g_out, g_last, softplus, chunk):
    dim = u.shape[2]
    return [torch.empty_like(u), torch.empty_like(u), u.new_empty(0 if z is None else u.shape),
            torch.empty_like(At), torch.empty_like(Bm), torch.empty_like(Cm),
            u.new_empty(0 if D is None else dim), u.new_empty(u.shape[0], dim, Bm.shape[3]),
            u.new_empty(0 if bias is None else dim)]


# FLOPs as the recurrent references count them (archs/mamba/ref.py, archs/mamba2/ref.py): the
# readout sum_n C h is a (B L E) x N contraction, 2 B L E N forward and twice that backward;
# the decay, the state update and the gate are elementwise, which FlopCounterMode counts as
# zero everywhere. So a row's counted FLOPs no longer depend on which scan ran.
# (FlopCounterMode hands a formula its tensors' shapes.)
@register_flop_formula(torch.ops.archbench.cpu_scan_fwd)
def _scan_fwd_flops(u_shape, dt, At, B_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * math.prod(u_shape) * B_shape[3]


@register_flop_formula(torch.ops.archbench.cpu_scan_bwd)
def _scan_bwd_flops(u_shape, dt, At, B_shape, *args, out_shape=None, **kwargs) -> int:
    return 4 * math.prod(u_shape) * B_shape[3]


class _CpuScan(torch.autograd.Function):
    """u, delta, z (B, L, E); At (N, E), or (1, E) for a decay shared by the N entries;
    Bm, Cm (B, L, G, N); D, bias (E,); h0 (B, E, N); dt = softplus(delta + bias) when
    ``softplus``. Returns out (B, L, E), last state (B, E, N)."""

    @staticmethod
    def forward(ctx, u, dt, At, Bm, Cm, D, z, h0, bias, softplus, chunk):
        save = any(ctx.needs_input_grad)
        fwd = _scan_fwd_op if is_in_torch_dispatch_mode() else _scan_fwd
        out, last, ckpt = fwd(u, dt, At, Bm, Cm, D, z, h0, bias, softplus, chunk, save)
        if save:
            ctx.save_for_backward(u, dt, At, Bm, Cm, D, z, bias, ckpt)
        ctx.softplus, ctx.chunk = softplus, chunk
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, g_last):
        u, dt, At, Bm, Cm, D, z, bias, ckpt = ctx.saved_tensors
        g_out = g_out.contiguous()  # same strides as `out`, a fresh contiguous tensor
        g_last = None if g_last is None else g_last.contiguous()
        bwd = _scan_bwd_op if is_in_torch_dispatch_mode() else _scan_bwd
        du, ddt, dz, dAt, dB, dC, dD, dh0, dbias = bwd(
            u, dt, At, Bm, Cm, D, z, bias, ckpt, g_out, g_last, ctx.softplus, ctx.chunk)
        return (du, ddt, dAt, dB, dC, None if D is None else dD, None if z is None else dz,
                dh0 if ctx.needs_input_grad[7] else None, None if bias is None else dbias,
                None, None)


def default_chunk(At: Tensor, B: Tensor) -> int:
    """Steps between checkpoints when the caller names none: SCALAR_DECAY_CHUNK for a decay
    shared by a channel's state entries (At (1, D) with N > 1: the kernel's scalar mode), else
    CHUNK."""
    return SCALAR_DECAY_CHUNK if _scalar_decay(At, B.shape[-1]) else CHUNK


def _grouped(BC: Tensor) -> Tensor:
    """(B, L, N) or (B, L, G, N) -> (B, L, G, N) with (G, N) packed."""
    return _inner_contiguous(BC.unsqueeze(2) if BC.dim() == 3 else BC, dims=2)


def scan_channels_last(u: Tensor, delta: Tensor, At: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None,
                       delta_softplus: bool, initial_state: Tensor | None,
                       return_last_state: bool, block_len: int | None
                       ) -> Tensor | tuple[Tensor, Tensor]:
    """The scan without input checks, channels last (u, delta, z (B, L, D); B, C (B, L, N) or
    (B, L, G, N)), A given transposed: At (N, D), or (1, D)
    for a decay each channel shares across its N state entries (Mamba-2's per-head decay:
    the kernel then takes one exp per step instead of N)."""
    if u.shape[1] == 0:
        raise ValueError("the selective scan needs seqlen >= 1")
    if u.device.type != "cpu":
        raise BackendUnavailableError(f"the CPU scan kernel got a tensor on '{u.device}'")
    dtype = acc_dtype(u, delta, At, B, C, D, z, delta_bias, initial_state)

    def cast(t: Tensor | None, dims: int = 1) -> Tensor | None:
        return _inner_contiguous(None if t is None else t.to(dtype), dims)

    h0 = None if initial_state is None else initial_state.to(dtype).contiguous()
    out, last = _CpuScan.apply(cast(u), cast(delta), At.to(dtype).contiguous(),
                               _grouped(B.to(dtype)), _grouped(C.to(dtype)), cast(D), cast(z),
                               h0, cast(delta_bias), bool(delta_softplus),
                               block_len or default_chunk(At, B))
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out
