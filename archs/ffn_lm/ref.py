"""The fixed-window definition: each position sees the last ``window`` inputs, concatenated.

Bengio et al. (2003), "A Neural Probabilistic Language Model": the next word is predicted
from the concatenated embeddings of the previous n - 1 words. In the LM shell the output at
position t predicts token t + 1, so the window ends at t itself: x_{t-window+1}, ..., x_t,
oldest first, with the ``window - 1`` inputs before the sequence taken from ``history``
(zeros at the start of a sequence, the previous chunk's last inputs when decoding).
"""
from __future__ import annotations

import torch
from einops import rearrange


def window_inputs(x: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """(B, L, D) inputs after (B, window - 1, D) earlier ones -> (B, L, window * D): row t is
    the concatenation [x_{t-window+1}, ..., x_t] (oldest first)."""
    window = history.shape[1] + 1
    full = torch.cat([history.to(x.dtype), x], dim=1)  # (B, window - 1 + L, D)
    # unfold: (B, L, D, window), one slice of `window` consecutive positions per output
    slices = full.unfold(1, window, 1)
    return rearrange(slices, "b l d w -> b l (w d)")


def window_inputs_loop(x: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """The same, one position at a time (what the tests compare ``window_inputs`` with)."""
    window = history.shape[1] + 1
    full = torch.cat([history.to(x.dtype), x], dim=1)
    rows = [full[:, t:t + window].flatten(1) for t in range(x.shape[1])]
    return torch.stack(rows, dim=1)
