"""Which keys a query may see under a sliding window with attention sinks.

Positions are absolute token indices, as in training. Query at position t sees key j iff
``j <= t`` and (``t - j < window`` or ``j < n_sink``): the last ``window`` tokens (itself
included) plus the first ``n_sink`` tokens (StreamingLLM's attention sinks, Xiao et al. 2023).
Over a whole sequence that is ``archs.attention.ref.causal_mask(window=, n_sink=)``.

The blocked form and the decode cache lay the keys out differently: a *sink segment*
(positions 0..S-1) beside a contiguous *run* of recent keys [run_start, run_end) that ends
at the last query. The two masks below split the visible keys between them so each
allowed key is counted exactly once: a key inside the run is seen through the run while it
is within the window; a sink is seen through the sink segment only when the run does not
already show it (it lies before the run, or outside the window).
"""
from __future__ import annotations

import torch


def run_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, run_start: int, run_end: int,
             window: int) -> torch.Tensor:
    """Boolean, broadcast of q_pos (..., Lq, 1) against k_pos (..., 1, K): visible run keys.

    k_pos outside [run_start, run_end) are padding and never visible.
    """
    d = q_pos - k_pos
    return (d >= 0) & (d < window) & (k_pos >= run_start) & (k_pos < run_end)


def sink_mask(q_pos: torch.Tensor, sink_pos: torch.Tensor, run_start: int,
              window: int) -> torch.Tensor:
    """Boolean, broadcast of q_pos (..., Lq, 1) against sink_pos (S,): visible sink keys."""
    d = q_pos - sink_pos
    return (d >= 0) & ((sink_pos < run_start) | (d >= window))


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """ALiBi's -slope_h · (i - j) for broadcastable position grids: (H, *broadcast shape).

    ``archs.positional.ALiBi`` takes 1-D positions; blocks need a grid per block.
    """
    distance = (q_pos - k_pos).to(torch.promote_types(slopes.dtype, torch.float32))
    return -slopes.view(-1, *([1] * distance.dim())) * distance[None]
