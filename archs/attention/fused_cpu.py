"""Causal attention with small heads as one C kernel on a CPU (archs/_attention_cpu.c).

The ``fused`` attention backend on a CPU runs this kernel instead of torch's SDPA where it
applies - plain causal self-attention (Lq == Lk, no bias, no custom mask, no forced SDPA
kernel), float32 or float64, heads of at most ``ROUTE_MAX_HEAD_DIM`` channels - because SDPA's
CPU flash kernel is built for wide heads: at the induction protocol's 8-channel heads it
spends most of a training step in per-block overhead (``benchmarks/kernels.py attention``
measures the two side by side and records where the kernel stops paying).
Everywhere else, and where the kernel cannot be built (no C compiler:
``archs._native``), SDPA runs - the same fused-kernel class, so the backend word stays
``fused``; ``ARCHBENCH_CPU_KERNELS=0`` or a forced ``sdpa_backend`` times SDPA alone.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from archs import _native

SOURCE = Path(__file__).resolve().parents[1] / "_attention_cpu.c"
# Where the kernel pays, measured against SDPA's CPU flash kernel (one thread, fwd + bwd;
# results/cpu/kernels/attention_small_heads): heads of 4 and 8 channels run 2-4x faster at
# L = 64 ... 4096; at 16 channels the two tie, and SDPA's blocked products win for wider heads.
ROUTE_MAX_HEAD_DIM = 8
MAX_HEAD_DIM = 128  # the kernel's own limit (its per-row buffers live on the stack)


class AttnDims(ctypes.Structure):
    """Mirror of ``attn_dims`` in _attention_cpu.c."""
    _fields_ = ([(n, ctypes.c_int64) for n in ("batch", "heads", "kv_heads", "seqlen", "head_dim",
                                               "nthreads")] + [("scale", ctypes.c_double)]
                + [(n, ctypes.c_int64 * 3) for n in ("s_q", "s_k", "s_v", "s_o", "s_g", "s_dq", "s_dk", "s_dv")])


def _strides(t: Tensor | None) -> tuple[int, int, int]:
    """(batch, head, time) element strides of a (B, H, L, Dh) tensor (zeros for None)."""
    return (0, 0, 0) if t is None else tuple(t.stride()[:3])


def _packed_last(t: Tensor) -> Tensor:
    """t itself when its last (head_dim) axis is packed, else a copy that is."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _library(dtype: torch.dtype) -> ctypes.CDLL:
    return _native.load(SOURCE, dtype, {"attn_fwd": (AttnDims, 7), "attn_bwd": (AttnDims, 11)})


def kernel_available() -> bool:
    return _native.unavailable_reason(SOURCE) is None


class _CpuCausalAttention(torch.autograd.Function):
    """q, k, v in any layout with a packed head_dim axis (the layer's (B, L, H, Dh)
    projections seen as (B, H, L, Dh)); the output and the gradients are made in the
    same layouts, so no transposed copies are made either way."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, cos: Tensor | None,
                sin: Tensor | None) -> Tensor:
        batch, heads, seqlen, head_dim = q.shape
        out = torch.empty_like(q)  # q's strides (empty_like keeps a dense layout)
        lse = q.new_empty(batch, heads, seqlen)
        dims = AttnDims(batch, heads, k.shape[1], seqlen, head_dim, torch.get_num_threads(), scale,
                        _strides(q), _strides(k), _strides(v), _strides(out))
        p = _native.pointer
        _library(q.dtype).attn_fwd(ctypes.byref(dims), p(q), p(k), p(v), p(cos), p(sin), p(out), p(lse))
        ctx.save_for_backward(q, k, v, cos, sin, out, lse)
        ctx.dims = dims
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor):
        q, k, v, cos, sin, out, lse = ctx.saved_tensors
        g = _packed_last(g)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dims = ctx.dims
        dims.s_g[:], dims.s_dq[:], dims.s_dk[:], dims.s_dv[:] = (_strides(t) for t in (g, dq, dk, dv))
        p = _native.pointer
        _library(q.dtype).attn_bwd(ctypes.byref(dims), p(q), p(k), p(v), p(cos), p(sin), p(out),
                                   p(lse), p(g), p(dq), p(dk), p(dv))
        return dq, dk, dv, None, None, None


def applies(q: Tensor, k: Tensor) -> bool:
    """Whether the kernel takes this causal self-attention call here (the caller has checked
    that there is no bias, no mask, no forced SDPA kernel, and Lq == Lk). Never under a
    torch dispatch mode: a ctypes call is invisible to it, so FlopCounterMode
    (harness.counters) would count no attention at all and fake / meta tensors have no
    data - there SDPA runs, the same attention as ops the mode sees."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
            and k.dtype == q.dtype and q.shape[-1] <= ROUTE_MAX_HEAD_DIM
            and q.shape[1] % k.shape[1] == 0 and not is_in_torch_dispatch_mode()
            and kernel_available())


def causal_attention_cpu(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None,
                         rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Causal self-attention, q (B, H, L, Dh), k and v (B, Hkv, L, Dh) with H a multiple of
    Hkv; ``scale`` defaults to Dh ** -0.5. ``rope``: (cos, sin) tables (L, Dh/2) of
    positions 0..L-1 (``RotaryEmbedding.tables``): q and k are then rotated inside the
    kernel, as ``RotaryEmbedding`` would rotate them, and their gradients taken back through
    the rotation - no rotated copies of q and k are made. Raises ``NativeKernelUnavailable``
    where the kernel cannot be built."""
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"the CPU attention kernel takes heads of at most {MAX_HEAD_DIM} "
                         f"channels, got {q.shape[-1]}; use attention_sdpa (faster for wide heads anyway)")
    if q.shape[-2] != k.shape[-2] or q.shape[1] % k.shape[1]:
        raise ValueError(f"causal self-attention wants Lq == Lk and heads a multiple of kv heads; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    cos = sin = None
    if rope is not None:
        want = (q.shape[-2], q.shape[-1] // 2)
        cos, sin = (t.to(q.dtype).contiguous() for t in rope)
        if q.shape[-1] % 2 or tuple(cos.shape) != want or tuple(sin.shape) != want:
            raise ValueError(f"rope tables must be (L, Dh/2) = {want} for an even Dh; got "
                             f"{tuple(cos.shape)}, {tuple(sin.shape)} for q {tuple(q.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    q, k, v = (_packed_last(t) for t in (q, k, v))
    return _CpuCausalAttention.apply(q, k, v, scale, cos, sin)
