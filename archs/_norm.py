"""RMSNorm over groups of channels as one C kernel on a CPU (_norm.c), for the norms of
archs/blocks.py: ``RMSNorm`` (the blocks' pre-norms) and ``GatedRMSNorm`` without its gate
(Mamba-2's norm when its CPU scan has already applied the gate).

``rms_norm_cpu`` returns None where the kernel does not apply - another device, a dtype other
than float32/float64 (e.g. under bf16 autocast), no C compiler, ``ARCHBENCH_CPU_KERNELS=0``,
a tensor subclass such as a fake tensor (no data to hand a C function), a torch dispatch mode
(a ctypes call is invisible to it: a traced graph would miss the norm), a weight of another
shape or dtype - and the caller then runs its PyTorch form, which gives the same numbers to
float rounding (tested): a norm has no backend of its own to record, it is part of the
block's arithmetic either way.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from archs import _native

SOURCE = Path(__file__).with_name("_norm.c")


class NormDims(ctypes.Structure):
    """Mirror of ``norm_dims`` in _norm.c."""
    _fields_ = ([(n, ctypes.c_int64) for n in ("rows", "groups", "size", "s_x", "nthreads")]
                + [("eps", ctypes.c_double)])


def _library(dtype: torch.dtype) -> ctypes.CDLL:
    return _native.load(SOURCE, dtype, {"norm_fwd": (NormDims, 4), "norm_bwd": (NormDims, 6)})


class _CpuRMSNorm(torch.autograd.Function):
    """x (rows, G * S), its channels packed; weight (G * S,) or None -> (rows, G * S)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, groups: int, eps: float) -> Tensor:
        rows, channels = x.shape
        dims = NormDims(rows, groups, channels // groups, x.stride(0), torch.get_num_threads(), eps)
        out = x.new_empty(rows, channels)
        rstd = x.new_empty(rows, groups)
        p = _native.pointer
        _library(x.dtype).norm_fwd(ctypes.byref(dims), p(x), p(weight), p(out), p(rstd))
        ctx.save_for_backward(x, weight, rstd)
        ctx.dims = dims
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, weight, rstd = ctx.saved_tensors
        want_w = weight is not None and ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate
            gx, gw = _backward_in_torch(x, weight, g, ctx.dims)
            return gx, (gw if want_w else None), None, None
        g = g.contiguous()
        gx = torch.empty_like(g)
        # zeros: OpenMP may start fewer threads than asked (OMP_DYNAMIC, OMP_THREAD_LIMIT), and
        # a thread that never starts never clears its row
        gw = x.new_zeros(ctx.dims.nthreads, x.shape[1]) if want_w else None
        p = _native.pointer
        _library(x.dtype).norm_bwd(ctypes.byref(ctx.dims), p(x), p(weight), p(rstd), p(g), p(gx), p(gw))
        return gx, (gw.sum(0) if want_w else None), None, None


def _backward_in_torch(x: Tensor, weight: Tensor | None, g: Tensor, dims: NormDims
                       ) -> tuple[Tensor, Tensor | None]:
    """The kernel's backward as differentiable PyTorch ops (for a double backward, which
    nn.RMSNorm supports): g_x = rstd q - x rstd^3 mean(q x), q = g w; g_w = sum g x rstd."""
    h = x.unflatten(-1, (dims.groups, dims.size))
    gh = g.unflatten(-1, (dims.groups, dims.size))
    r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + dims.eps)
    q = gh if weight is None else gh * weight.view(dims.groups, dims.size)
    gx = r * q - h * r.pow(3) * (q * h).mean(-1, keepdim=True)
    gw = None if weight is None else (gh * h * r).sum(0).flatten()
    return gx.flatten(-2), gw


def rms_norm_cpu(x: Tensor, weight: Tensor | None, group_size: int, eps: float) -> Tensor | None:
    """RMSNorm of each group of ``group_size`` channels of x (..., C), times ``weight`` (C,);
    None where the kernel does not apply (see the module's docstring)."""
    if (type(x) is not torch.Tensor or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or x.numel() == 0 or group_size < 1 or x.shape[-1] % group_size
            or is_in_torch_dispatch_mode()):
        return None
    if weight is not None and (type(weight) not in (torch.Tensor, torch.nn.Parameter) or weight.dtype != x.dtype
                               or weight.shape != (x.shape[-1],) or not weight.is_contiguous()):
        return None  # (a weight of the wrong size: the PyTorch form raises nn.RMSNorm's error)
    try:
        _library(x.dtype)
    except _native.NativeKernelUnavailable:
        return None
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = _CpuRMSNorm.apply(x2, weight, x.shape[-1] // group_size, float(eps))
    return out.view(x.shape)
