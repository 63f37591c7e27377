"""Vectorised random draws shared by the tasks; every tensor lives on the generator's device.

Sampling k distinct items per row is done with top-k of random keys (the Gumbel-top-k
trick): O(n) per row, no Python loop over the batch, so a 2^16-long sequence costs
about as much as writing it.
"""

from __future__ import annotations

import torch


def randint(low: int, high: int, size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform int64 in [low, high), on the generator's device."""
    return torch.randint(low, high, size, generator=generator, device=generator.device)


def uniform(size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform float32 in [0, 1), on the generator's device."""
    return torch.rand(size, generator=generator, device=generator.device)


def distinct(batch: int, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, k) distinct indices from range(n) per row, in uniformly random order."""
    if k > n:
        raise ValueError(f"cannot draw {k} distinct items from {n}")
    # topk of i.i.d. uniform keys is a uniform random k-subset, ordered by key: a random order.
    return uniform((batch, n), generator).topk(k, dim=-1).indices


def distinct_sorted(batch: int, n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, k) distinct indices from range(n) per row, ascending."""
    return distinct(batch, n, k, generator).sort(dim=-1).values


def weighted_distinct(
    log_weights: torch.Tensor, batch: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """(batch, k) draws without replacement from range(n) with P(i) ∝ exp(log_weights[i]).

    Columns come in draw order: column 0 is distributed as a first draw, column 1 as a
    second draw, ... (Gumbel-top-k, the same law as numpy's sequential
    `choice(replace=False, p=...)`).
    """
    n = log_weights.shape[-1]
    if k > n:
        raise ValueError(f"cannot draw {k} distinct items from {n}")
    # Gumbel noise -log(-log U); clamp keeps U away from 0 and 1 where the logs blow up.
    u = uniform((batch, n), generator).clamp_(1e-12, 1.0 - 1e-7)
    keys = log_weights.to(u.device) - torch.log(-torch.log(u))
    return keys.topk(k, dim=-1, sorted=True).indices
