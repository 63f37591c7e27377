"""Fused attention (backend "fused"): torch's scaled_dot_product_attention (FlashAttention / memory-efficient
/ cuDNN kernels on a GPU, a fused C++ kernel on the CPU), same signature as the reference. On a
CPU, causal self-attention with small heads runs archbench's own C kernel instead
(``fused_cpu``: SDPA's CPU kernel is slow for heads of a few channels).

``sdpa_backend`` forces one SDPA kernel ("flash", "efficient", "cudnn", "math") so users
can compare them; if the forced kernel cannot run the case, torch raises - we never let
it fall back silently.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from archs.attention import fused_cpu
from archs.attention.ref import causal_mask
from archs.backends import BackendUnavailableError, available, require

SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")
SDPA_CUDNN_CHOICES = ("auto", "on", "off")


def sdpa_context(kernel: str | None):
    if kernel is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    if kernel not in table:
        raise ValueError(f"unknown sdpa_backend {kernel!r}; choose one of {list(SDPA_KERNELS)} or None")
    return sdpa_kernel([table[kernel]])


def sdpa_cudnn_allowed(choice: str, device, shapes_vary: bool) -> bool | None:
    """Whether SDPA may pick its cuDNN kernel (None: not a CUDA device, no cuDNN to pick).

    ``auto`` keeps cuDNN out where the shapes vary from call to call (mixed-length training,
    an evaluation sweep over lengths): torch >= 2.9 prefers cuDNN attention on sm90/sm100
    (cuDNN >= 9.15), and cuDNN builds an execution plan for each new shape, ~55-70 ms and up
    to ~1 s when a new kernel variant compiles (flashinfer-ai/flashinfer#5245). Mixed-length
    training meets a new length most steps until it has seen them all: on an H200 the
    induction Transformer + RoPE trained 12 steps/s against ALiBi's 125 (ALiBi's float bias
    sends SDPA to the memory-efficient kernel). Flash and memory-efficient attention have
    no per-shape cost; fixed-shape loops (the cost sweeps) keep torch's choice."""
    if choice not in SDPA_CUDNN_CHOICES:
        raise ValueError(f"unknown sdpa_cudnn {choice!r}; choose one of {list(SDPA_CUDNN_CHOICES)} "
                         f"(auto: off where shapes vary)")
    if torch.device(device).type != "cuda":
        return None
    return choice == "on" or (choice == "auto" and not shapes_vary)


@contextlib.contextmanager
def sdpa_cudnn_context(allowed: bool | None):
    """SDPA without its cuDNN kernel inside (``allowed`` False), torch's own choice otherwise.
    Only cuDNN's flag is touched (process-wide, as torch keeps them; restored on exit): kernels
    an outer setting turned off stay off, and a kernel forced inside (``sdpa_backend``,
    ``sdpa_context``) still runs, since the inner context sets the kernels it names."""
    if allowed is None or allowed:
        yield
        return
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def cpu_kernel_takes(q: torch.Tensor, k: torch.Tensor, *, bias=None, mask=None, kernel=None,
                     causal: bool = True) -> bool:
    """Whether ``attention_sdpa`` hands this call to the small-head CPU kernel: plain causal
    self-attention (no bias, no mask, Lq == Lk, no forced SDPA kernel) that
    ``fused_cpu.applies`` takes."""
    return (kernel is None and bias is None and mask is None and causal
            and q.shape[-2] == k.shape[-2] and fused_cpu.applies(q, k))


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   scale: float | None = None, kernel: str | None = None,
                   causal: bool = True) -> torch.Tensor:
    """Same contract as ``attention_math``. Pure causal self-attention (Lq == Lk, no bias,
    no custom mask) uses ``is_causal=True`` so the flash kernel applies; anything else
    passes an explicit mask (SDPA's own causal mask is top-left aligned, wrong for a
    chunk that follows a cache). ``causal=False`` with no mask: no mask at all."""
    if bias is not None and torch.promote_types(q.dtype, bias.dtype) != q.dtype:
        # An fp32 ALiBi bias is ~4096 at distance 8K; cast to bf16 (SDPA's fused kernels
        # want the mask in the query dtype) it would be off by up to 16. So this case runs
        # in the bias's precision and returns q's dtype (flash_attn keeps bf16 inputs and
        # applies fp32 slopes in-kernel).
        work = torch.promote_types(q.dtype, bias.dtype)
        out = attention_sdpa(q.to(work), k.to(work), v.to(work), bias=bias.to(work), mask=mask,
                             scale=scale, kernel=kernel, causal=causal)
        return out.to(q.dtype)
    lq, lk = q.shape[-2], k.shape[-2]
    gqa = q.shape[1] != k.shape[1]
    if cpu_kernel_takes(q, k, bias=bias, mask=mask, kernel=kernel, causal=causal):
        return fused_cpu.causal_attention_cpu(q, k, v, scale)  # small heads on a CPU
    with sdpa_context(kernel):
        if bias is None and mask is None and (lq == lk or not causal):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa)
        if mask is None and causal:
            mask = causal_mask(lq, lk, q.device)
        if bias is None:
            attn_mask = mask
        else:
            attn_mask = bias.to(q.dtype) if mask is None else bias.to(q.dtype).masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale, enable_gqa=gqa)


def flash_attn_available() -> bool:
    return available("flash_attn")


def attention_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                    alibi_slopes: torch.Tensor | None = None, scale: float | None = None,
                    causal: bool = True) -> torch.Tensor:
    """FlashAttention-2/3 from the ``flash-attn`` package (CUDA, fp16/bf16 only).

    Same (B, H, L, Dh) contract as the others. flash-attn's causal mask is bottom-right
    aligned when Lq < Lk (since v2.1), which is our convention for chunks after a cache,
    and it applies ALiBi itself from the per-head slopes.
    """
    (fa,) = require("attention", "flash_attn", backend="flash_attn")
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise BackendUnavailableError(f"flash-attn runs fp16/bf16 on CUDA, got {q.dtype} on {q.device}; "
                                      f"use backend='fused' (or 'auto') here")
    # flash-attn wants (B, L, H, Dh)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    # non-causal + alibi_slopes: flash-attn biases by -slope * |i - j|, as we do
    out = fa.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal,
                             alibi_slopes=None if alibi_slopes is None else alibi_slopes.float())
    return out.transpose(1, 2)
