"""Sliding-window attention in O(L·window) memory: query blocks against the keys they can see.

Keys are a sink segment (positions 0..S-1) and a contiguous run of recent keys that ends at
the last query (see ``ref.py`` for how the two masks share the visible keys). Queries are
cut into blocks of ``block_size``; block b needs only the ``block_size + window - 1`` run
keys ending at its last query, plus the sinks. Blocks are folded into the batch axis, so
one attention call covers the whole sequence and the score tensor holds
L · (S + block_size + window - 1) entries instead of L².

With ``block_size=None`` there is one block of all queries: the dense form over the keys
they need, which the decode step and short prefill chunks use.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from archs.sliding_window.ref import alibi_bias, run_mask, sink_mask

# (q, k, v, *, mask=, bias=) -> out: attention_math or attention_sdpa (archs.attention).
Kernel = Callable[..., torch.Tensor]


def _block_positions(n_blk: int, bs: int, span: int, first_q: int, window: int,
                     device) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute positions: queries (n_blk, bs) and the run keys each block sees (n_blk, span)."""
    q_pos = first_q + torch.arange(n_blk * bs, device=device).view(n_blk, bs)
    starts = first_q - (window - 1) + bs * torch.arange(n_blk, device=device)  # (n_blk,)
    k_pos = starts[:, None] + torch.arange(span, device=device)[None, :]
    return q_pos, k_pos


def _unfold_run(x: torch.Tensor, offset: int, lq: int, n_blk: int, bs: int, reach: int) -> torch.Tensor:
    """(B, Hkv, R, Dh) run -> (B, Hkv, n_blk, bs + reach - 1, Dh): each block's run keys.

    Block b's keys are run[offset + b·bs - (reach-1) : offset + (b+1)·bs], zero-padded
    where that range leaves the run (the masks hide the padding).
    """
    left = max(0, reach - 1 - offset)
    right = n_blk * bs - lq
    padded = F.pad(x, (0, 0, left, right))  # (B, Hkv, left + R + right, Dh)
    first = offset + left - (reach - 1)
    blocks = padded[:, :, first:].unfold(2, bs + reach - 1, bs)  # (B, Hkv, n_blk, Dh, span)
    return rearrange(blocks, "b h n d s -> b h n s d")


def windowed_attention(q: torch.Tensor, k_run: torch.Tensor, v_run: torch.Tensor,
                       k_sink: torch.Tensor, v_sink: torch.Tensor, *, run_start: int,
                       window: int, kernel: Kernel, block_size: int | None = None,
                       slopes: torch.Tensor | None = None) -> torch.Tensor:
    """Sliding-window attention with sinks.

    q: (B, H, Lq, Dh), the queries at the last Lq positions of the run;
    k_run, v_run: (B, Hkv, R, Dh) at absolute positions run_start .. run_start + R - 1;
    k_sink, v_sink: (B, Hkv, S, Dh) at positions 0 .. S-1 (may overlap the run; the masks
    count each key once); slopes: ALiBi slopes (H,) or None. Returns (B, H, Lq, Dh).
    """
    b, _, lq, _ = q.shape
    r, s = k_run.shape[2], k_sink.shape[2]
    offset = r - lq  # index in the run of the first query
    bs = lq if block_size is None else min(block_size, lq)
    n_blk = -(-lq // bs)
    # Keys further back than the run's length do not exist: never lay out more than that.
    reach = min(window, r)
    span = bs + reach - 1
    q_pos, k_pos = _block_positions(n_blk, bs, span, run_start + offset, reach, q.device)
    sink_pos = torch.arange(s, device=q.device)
    mask = torch.cat([sink_mask(q_pos[..., None], sink_pos, run_start, window),
                      run_mask(q_pos[..., None], k_pos[:, None, :], run_start, run_start + r, window)],
                     dim=-1)  # (n_blk, bs, S + span)
    # Padded query rows (past the last query) see everything: finite, and discarded below.
    q_real = (torch.arange(n_blk * bs, device=q.device) < lq).view(n_blk, bs, 1)
    mask = mask | ~q_real

    def fold_keys(run: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
        blocks = rearrange(_unfold_run(run, offset, lq, n_blk, bs, reach), "b h n s d -> (b n) h s d")
        sinks = repeat(sink, "b h j d -> (b n) h j d", n=n_blk)
        return torch.cat([sinks, blocks], dim=2)  # (B·n_blk, Hkv, S + span, Dh)

    q_blk = rearrange(F.pad(q, (0, 0, 0, n_blk * bs - lq)), "b h (n r) d -> (b n) h r d", r=bs)
    bias = None
    if slopes is not None:
        grid_k = torch.cat([sink_pos.expand(n_blk, s), k_pos], dim=-1)  # (n_blk, S + span)
        bias = repeat(alibi_bias(slopes, q_pos[..., None], grid_k[:, None, :]),
                      "h n r k -> (b n) h r k", b=b)
    out = kernel(q_blk, fold_keys(k_run, k_sink), fold_keys(v_run, v_sink),
                 mask=repeat(mask, "n r k -> (b n) 1 r k", b=b), bias=bias)  # (B·n_blk, H, bs, Dh)
    return rearrange(out, "(b n) h r d -> b h (n r) d", b=b)[:, :, :lq]
