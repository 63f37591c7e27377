"""Count tables of an n-gram model as sorted tensors (no Python dicts: they save with the
weights, move with ``.to``, and look up with ``torch.searchsorted``).

A k-gram (w_1, ..., w_k) is the integer  w_1 V^(k-1) + ... + w_(k-1) V + w_k  (V the
vocabulary): the newest token is the least significant digit, so
  * its history (w_1 .. w_(k-1)) is  key // V, and every k-gram after history h lies in
    [h V, h V + V) - one contiguous run of the sorted table;
  * dropping its oldest token (the suffix Kneser-Ney's lower orders use) is  key % V^(k-1).
"""
from __future__ import annotations

import torch

IGNORE_INDEX = -100  # harness.tasks' unscored target (archs never import the harness)


def history_ids(context: torch.Tensor, first_pos: int, length: int, order: int, vocab: int) -> torch.Tensor:
    """Histories of the order-``order`` grams at ``length`` positions, as integers.

    ``context`` (B, order_max - 1 + length) holds ``order_max - 1`` tokens before the
    positions, then the positions' own tokens; position i's history is its last
    ``order - 1`` tokens, itself included (the LM shell's position i predicts token i + 1).
    Returns (B, length) ids, -1 where the sequence (which starts at ``first_pos`` for the
    first position) has fewer than ``order - 1`` tokens so far.
    """
    lead = context.shape[1] - length
    ids = torch.zeros(context.shape[0], length, dtype=torch.long, device=context.device)
    for lag in range(order - 1):  # lag 0 = the position's own token = least significant digit
        ids += context[:, lead - lag: lead - lag + length].long() * vocab ** lag
    positions = first_pos + torch.arange(length, device=context.device)
    return torch.where(positions >= order - 2, ids, torch.full_like(ids, -1))


def gram_keys(inputs: torch.Tensor, targets: torch.Tensor, order: int, vocab: int) -> torch.Tensor:
    """Keys of the order-``order`` grams a batch holds: (history of position i, target i)
    at every scored position with a full history (a sequence's first positions have none)."""
    pad = torch.zeros(inputs.shape[0], max(order - 2, 0), dtype=inputs.dtype, device=inputs.device)
    hist = history_ids(torch.cat([pad, inputs], dim=1), 0, inputs.shape[1], order, vocab)
    keep = (hist >= 0) & (targets != IGNORE_INDEX)
    return hist[keep] * vocab + targets[keep].long()


def merge(keys: torch.Tensor, counts: torch.Tensor, new_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted unique keys, counts) with ``new_keys`` (one occurrence each) added."""
    every = torch.cat([keys, new_keys])
    weight = torch.cat([counts, torch.ones_like(new_keys)])
    merged, inverse = torch.unique(every, sorted=True, return_inverse=True)
    total = torch.zeros_like(merged).scatter_add_(0, inverse, weight)
    return merged, total


def continuation_counts(keys: torch.Tensor, longer_keys: torch.Tensor, order: int, vocab: int) -> torch.Tensor:
    """N1+(. g) for each order-``order`` gram g in ``keys``: how many distinct tokens precede
    it among the order-(``order`` + 1) grams (Kneser-Ney's lower-order counts)."""
    suffixes, n_left = torch.unique(longer_keys % vocab ** order, return_counts=True)
    out = torch.zeros_like(keys)
    if len(suffixes) and len(keys):
        at = torch.searchsorted(keys, suffixes)  # every suffix is itself a counted gram
        out[at] = n_left
    return out


def absolute_discount(counts: torch.Tensor) -> float:
    """Ney et al.'s estimate D = n1 / (n1 + 2 n2) from the grams seen once and twice (0.5
    when nothing was seen once: a table too small to estimate from)."""
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    return n1 / (n1 + 2 * n2) if n1 else 0.5


def dense_rows(histories: torch.Tensor, keys: torch.Tensor, counts: torch.Tensor, vocab: int) -> torch.Tensor:
    """(U,) history ids -> (U, V) counts of each next token after them (float32)."""
    rows = torch.zeros(len(histories), vocab, dtype=torch.float32, device=keys.device)
    if not len(keys) or not len(histories):
        return rows
    lo = torch.searchsorted(keys, histories * vocab)
    hi = torch.searchsorted(keys, histories * vocab + vocab)
    n = hi - lo  # grams stored after each history
    row = torch.repeat_interleave(torch.arange(len(histories), device=keys.device), n)
    starts = torch.repeat_interleave(lo - (torch.cumsum(n, 0) - n), n)
    entry = starts + torch.arange(int(n.sum()), device=keys.device)  # index into keys
    rows[row, keys[entry] % vocab] = counts[entry].float()
    return rows
