"""Passkey retrieval: a number hidden at some depth in filler text, asked for at the end.

The token-level version of the passkey test (Mohtashami & Jaggi 2023, "Landmark
Attention"; used for state-size studies such as "Stuffed Mamba", Chen et al. 2024, with a
5-digit key): a haystack of filler holds the needle `K d1 .. dn`; the sequence ends with
the query Q and the model must spell the digits, each fed back before the next:

    inputs:    filler .. K d1 .. dn .. filler   Q   d1  ..  d_{n-1}
    targets:   ignored ......................  d1   d2  ..  d_n       (n_digits scored)

Tokens: digits 0-9 are ids 0-9, K = 10, Q = 11, filler ids 12 .. 12 + filler_vocab - 1.
`filler="pattern"` repeats one fixed pseudo-random sequence of `filler_period` filler
tokens (the same for every sample and seed, like the classic repeated "The grass is
green. The sky is blue..." sentences), indexed by absolute position, so the only
surprise in the haystack is the needle; `filler="random"` draws every filler token
afresh (harder: the haystack is noise).

`depth` places the needle start at round(depth * (H - n_digits - 1)) of the haystack of
H = L - n_digits tokens: 0.0 = at the start (longest recall), 1.0 = just before the query.
`depth=None` (default) draws it uniformly per sample.

`trigger_distance` = d fixes the key K exactly d tokens before the query Q (K at
L - n_digits - d, Q at L - n_digits) for every sample: d >= n_digits + 1 (the needle
must end before Q), and min_len() grows to d + n_digits. It excludes `depth`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.tasks._random import randint
from harness.tasks.base import IGNORE_INDEX, Batch, Task, register_task

FILLER_MODES = ("pattern", "random")
# The fixed filler pattern comes from its own generator, never the caller's: it is part
# of the task definition, not of the sample.
_PATTERN_SEED = 1234


@register_task("passkey")
@dataclass
class Passkey(Task):
    n_digits: int = 5  # Stuffed Mamba's 5-digit passkey
    depth: float | None = None  # needle depth in [0, 1]; None = uniform per sample
    filler: str = "pattern"  # fixed repeated filler, as in the classic test
    filler_vocab: int = 16  # distinct filler tokens
    filler_period: int = 64  # length of the repeated filler pattern
    trigger_distance: int | None = None  # K exactly d tokens before Q; None = as `depth` says

    distance_meaning = "tokens from the key K to the query Q"

    default_seq_len = 1024
    _shrink_hint = "n_digits"

    KEY = 10
    QUERY = 11
    FIRST_FILLER = 12

    def __post_init__(self) -> None:
        if self.n_digits < 1:
            raise ValueError(f"passkey: n_digits must be >= 1, got {self.n_digits}")
        if self.depth is not None and not 0.0 <= self.depth <= 1.0:
            raise ValueError(f"passkey: depth must be in [0, 1] or None (random), got {self.depth}")
        if self.trigger_distance is not None:
            d = self.trigger_distance
            if isinstance(d, bool) or not isinstance(d, int) or d < self.n_digits + 1:
                raise ValueError(
                    f"passkey: trigger_distance must be an int >= n_digits + 1 = {self.n_digits + 1} "
                    f"(the needle K d1..dn ends before the query) or None, got {d!r}"
                )
            if self.depth is not None:
                raise ValueError("passkey: trigger_distance and depth both place the needle; set only one")
        if self.filler not in FILLER_MODES:
            raise ValueError(f"passkey: filler must be one of {FILLER_MODES}, got {self.filler!r}")
        if self.filler_vocab < 1 or self.filler_period < 1:
            raise ValueError(
                f"passkey: filler_vocab and filler_period must be >= 1, got "
                f"{self.filler_vocab} and {self.filler_period}"
            )

    @property
    def vocab_size(self) -> int:
        return self.FIRST_FILLER + self.filler_vocab

    def min_len(self) -> int:
        # Needle (K + digits) with no filler, then Q and the fed-back digits; a fixed
        # distance d needs K at L - n_digits - d >= 0.
        shortest = 2 * self.n_digits + 1
        return shortest if self.trigger_distance is None else max(shortest, self.trigger_distance + self.n_digits)

    def filler_pattern(self) -> torch.Tensor:
        """(filler_period,) the fixed filler sequence of pattern mode."""
        g = torch.Generator().manual_seed(_PATTERN_SEED)
        return self.FIRST_FILLER + torch.randint(0, self.filler_vocab, (self.filler_period,), generator=g)

    def _haystack(self, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
        if self.filler == "random":
            return self.FIRST_FILLER + randint(0, self.filler_vocab, (batch_size, length), generator)
        pattern = self.filler_pattern().to(generator.device)
        positions = torch.arange(length, device=generator.device) % self.filler_period
        return pattern[positions].expand(batch_size, length).clone()

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        n = self.n_digits
        device = generator.device
        digits = randint(0, 10, (batch_size, n), generator)
        hay_len = seq_len - n  # everything before Q
        inputs = torch.empty((batch_size, seq_len), dtype=torch.long, device=device)
        inputs[:, :hay_len] = self._haystack(batch_size, hay_len, generator)

        last_start = hay_len - (n + 1)  # the needle K d1..dn must fit in the haystack
        if self.trigger_distance is not None:
            start = torch.full((batch_size,), hay_len - self.trigger_distance, device=device)
        elif self.depth is None:
            start = randint(0, last_start + 1, (batch_size,), generator)
        else:
            start = torch.full((batch_size,), round(self.depth * last_start), device=device)
        needle = torch.cat([torch.full((batch_size, 1), self.KEY, device=device), digits], dim=1)  # (B, n+1)
        cols = start.unsqueeze(1) + torch.arange(n + 1, device=device)  # (B, n+1) needle positions
        inputs.scatter_(1, cols, needle)

        inputs[:, hay_len] = self.QUERY
        inputs[:, hay_len + 1 :] = digits[:, :-1]
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, hay_len:] = digits
        return Batch(inputs, targets)
