"""Causal depthwise conv1d in the channels-last (B, L, E) layout, continuing a prefix.

The short convolution of Mamba and Mamba-2 (d_conv = 4 taps per channel), for the
parallel form, prefill chunks and single decode steps alike (the one PyTorch version;
``causal_conv1d``'s CUDA kernels are the fused one). nn.Conv1d wants (B, E, L), i.e.
two transposes each way; autograd through K shifted multiply-adds allocates and
zero-fills a full-size gradient per tap. This Function does K fused multiply-adds per
direction into one buffer, and carries the K-1 inputs before x (the decode / prefill
conv state), so chunked evaluation equals one pass.
"""
from __future__ import annotations

import torch
from torch import Tensor


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
