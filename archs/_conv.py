"""Causal depthwise conv1d in the channels-last (B, L, E) layout, continuing a prefix.

The short convolution of Mamba and Mamba-2 (d_conv = 4 taps per channel), for the
parallel form, prefill chunks and single decode steps alike (the one PyTorch version;
``causal_conv1d``'s CUDA kernels are the fused one). nn.Conv1d wants (B, E, L), i.e.
two transposes each way; autograd through K shifted multiply-adds allocates and
zero-fills a full-size gradient per tap. This Function does K fused multiply-adds per
direction into one buffer, and carries the K-1 inputs before x (the decode / prefill
conv state), so chunked evaluation equals one pass. ``causal_conv1d_cpu`` is the same
conv (+ SiLU) as one C kernel (_conv.c) for the ``fused`` backends on a CPU.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from archs import _native
from archs.precision import acc_dtype


class _CausalConv(torch.autograd.Function):
    """ext (B, K-1+L, E) = [prefix; x] -> out[t] = bias + sum_k w[:, k] * ext[t + k]."""

    @staticmethod
    def forward(ctx, ext: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        taps = weight.shape[1]
        seqlen = ext.shape[1] - (taps - 1)
        out = ext[:, :seqlen] * weight[:, 0]
        for k in range(1, taps):
            out.addcmul_(ext[:, k:k + seqlen], weight[:, k])
        if bias is not None:
            out.add_(bias)
        ctx.save_for_backward(ext, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        ext, weight = ctx.saved_tensors
        taps, seqlen = weight.shape[1], g.shape[1]
        g = g.contiguous()
        g_ext = torch.zeros_like(ext)
        g_w = torch.empty_like(weight)
        prod = torch.empty_like(g)  # one reused buffer for the tap products
        for k in range(taps):
            g_ext[:, k:k + seqlen].addcmul_(g, weight[:, k])
            g_w[:, k] = torch.mul(g, ext[:, k:k + seqlen], out=prod).sum(dim=(0, 1))
        g_bias = g.sum(dim=(0, 1)) if ctx.has_bias else None
        return g_ext, g_w, g_bias


def causal_conv1d_channels_last(x: Tensor, weight: Tensor, bias: Tensor | None,
                                prefix: Tensor | None) -> tuple[Tensor, Tensor]:
    """x (B, L, E); weight (E, K); bias (E,); prefix (B, E, K-1) = the inputs before x
    (None: zeros, a fresh sequence). Returns the conv output (B, L, E), no activation,
    and the K-1 most recent inputs (B, E, K-1) for the next chunk."""
    taps = weight.shape[1]
    if prefix is None:
        prefix = x.new_zeros(x.shape[0], x.shape[2], taps - 1)
    ext = torch.cat([prefix.transpose(1, 2).to(x.dtype), x], dim=1)  # (B, K-1+L, E)
    out = _CausalConv.apply(ext, weight, bias)
    new_prefix = ext[:, ext.shape[1] - (taps - 1):].transpose(1, 2)  # (B, E, K-1)
    return out, new_prefix


# -- the same conv + SiLU as one C kernel (_conv.c), for the `fused` backends on a CPU ------
_SOURCE = Path(__file__).with_name("_conv.c")


class ConvDims(ctypes.Structure):
    """Mirror of ``conv_dims`` in _conv.c."""
    _fields_ = ([(n, ctypes.c_int64) for n in ("batch", "seqlen", "dim", "taps", "silu", "nthreads")]
                + [("s_x", ctypes.c_int64 * 2)])


def _library(dtype: torch.dtype) -> ctypes.CDLL:
    return _native.load(_SOURCE, dtype, {"conv_fwd": (ConvDims, 5), "conv_bwd": (ConvDims, 9)})


class _CpuConv(torch.autograd.Function):
    """x (B, L, E) (last dim packed), prefix (B, K-1, E), wT (K, E), bias (E,) ->
    act(conv) (B, L, E); no [prefix; x] copy is made."""

    @staticmethod
    def forward(ctx, x: Tensor, prefix: Tensor, wT: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
        batch, seqlen, dim = x.shape
        dims = ConvDims(batch, seqlen, dim, wT.shape[0], int(silu), torch.get_num_threads(),
                        (x.stride(0), x.stride(1)))
        out = x.new_empty(batch, seqlen, dim)
        p = _native.pointer
        _library(x.dtype).conv_fwd(ctypes.byref(dims), p(x), p(prefix), p(wT), p(bias), p(out))
        ctx.save_for_backward(x, prefix, wT, bias)
        ctx.dims = dims
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        x, prefix, wT, bias = ctx.saved_tensors
        g = g.contiguous()
        g_x, g_prefix = torch.empty_like(g), torch.empty_like(prefix)
        dw = x.new_empty(x.shape[0], *wT.shape)
        db = x.new_empty(x.shape[0], wT.shape[1])
        p = _native.pointer
        _library(x.dtype).conv_bwd(ctypes.byref(ctx.dims), p(x), p(prefix), p(wT), p(bias), p(g),
                                   p(g_x), p(g_prefix), p(dw), p(db))
        return g_x, g_prefix, dw.sum(0), None if bias is None else db.sum(0), None


def causal_conv1d_cpu(x: Tensor, weight: Tensor, bias: Tensor | None, prefix: Tensor | None,
                      silu: bool = False) -> tuple[Tensor, Tensor]:
    """``causal_conv1d_channels_last`` (then SiLU when ``silu``) as one C kernel on a CPU,
    computed in float32 (float64 for float64 inputs); the output has x's dtype. Raises
    ``archs._native.NativeKernelUnavailable`` where the kernel cannot be built."""
    taps = weight.shape[1]
    if taps > 16:
        raise ValueError(f"the CPU conv kernel takes at most 16 taps (KMAX in _conv.c), got {taps}")
    dtype = acc_dtype(x, weight)
    xc = x.to(dtype)
    # A row stride that is not a whole number of 64-byte vectors (Mamba-2's xBC, a slice of
    # the 388-wide in_proj output at the induction preset) makes most of the kernel's vector
    # loads straddle cache lines: fwd + bwd ran 1.7-2.1x slower than on a packed copy (one
    # thread, (8, 256, 256) of a (8, 256, 388) tensor), copy included.
    if xc.stride(-1) != 1 or (xc.stride(1) * xc.element_size()) % 64:
        xc = xc.contiguous()
    if prefix is None:
        prefix = x.new_zeros(x.shape[0], x.shape[2], taps - 1)
    pre = prefix.to(dtype).transpose(1, 2).contiguous()  # (B, K-1, E)
    out = _CpuConv.apply(xc, pre, weight.to(dtype).t().contiguous(),
                         None if bias is None else bias.to(dtype), silu)
    # the K-1 most recent inputs of [prefix; x] (B, E, K-1): fewer than K-1 new ones keep
    # the prefix's tail
    new_prefix = prefix.to(x.dtype)
    if taps > 1:
        recent = x[:, -(taps - 1):].transpose(1, 2)  # at most K-1 inputs, not the whole of x
        new_prefix = torch.cat([new_prefix, recent], dim=2)[..., -(taps - 1):]
    return out.to(x.dtype), new_prefix
