"""Causal softmax attention, the textbook way: materialise the (Lq, Lk) score matrix.

This is the numerical truth the fused paths are compared with, and the honest
quadratic-memory baseline the cost harness measures as backend "ref" (formerly "math").

Layout: q (B, H, Lq, Dh); k, v (B, Hkv, Lk, Dh) with H a multiple of Hkv (grouped-query
attention). Queries are the *last* Lq positions of the Lk keys (a decode step or a
prefill chunk after a cache), so query i sits at absolute key index Lk - Lq + i.
"""
from __future__ import annotations

import math

import torch
from einops import repeat


def causal_mask(lq: int, lk: int, device: torch.device | str | None = None,
                window: int | None = None, n_sink: int = 0) -> torch.Tensor:
    """Boolean (Lq, Lk) mask, True where query i may attend key j.

    window: attend only to the last ``window`` keys (incl. itself); n_sink: the first
    ``n_sink`` keys stay visible regardless (StreamingLLM's attention sinks).
    """
    q_pos = torch.arange(lk - lq, lk, device=device)[:, None]  # (Lq, 1) absolute positions
    k_pos = torch.arange(lk, device=device)[None, :]  # (1, Lk)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= (q_pos - k_pos < window) | (k_pos < n_sink)
    return allowed


def expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, Hkv, L, Dh) -> (B, H, L, Dh) by sharing each kv head with H/Hkv query heads."""
    groups = n_heads // x.shape[1]
    return x if groups == 1 else repeat(x, "b g l d -> b (g r) l d", r=groups)


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                   bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   scale: float | None = None, causal: bool = True) -> torch.Tensor:
    """softmax(q kᵀ · scale + bias, masked) v, with scores and softmax in float32
    (float64 for float64 inputs).

    bias: additive (H, Lq, Lk) (ALiBi); mask: boolean (Lq, Lk), default causal (none when
    ``causal`` is False: every query sees every key, as in an encoder).
    """
    lq, lk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k, v = expand_kv(k, q.shape[1]), expand_kv(v, q.shape[1])
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(acc), k.to(acc)) * scale  # (B, H, Lq, Lk)
    if bias is not None:
        scores = scores + bias.to(acc)
    if mask is None and causal:
        mask = causal_mask(lq, lk, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v.to(acc)).to(q.dtype)
