"""Selective copying (Mamba paper, Gu & Dao 2023, §4.1.1, Table 1, App. E.1).

`n_data` data tokens are scattered at random (sorted) positions among noise tokens; then
`n_data` marker tokens follow, and at the i-th marker the model must output the i-th data
token, in order:

    position:  0 ............ L-n_data-1   L-n_data ... L-1
    inputs:    noise with n_data data      M  M  ...  M
               tokens at random places
    targets:   ignored                     d1 d2 ...  d_n     (the n_data marker positions)

Token ids follow the S4 repository's `torch_copying_data(..., variable=True)` generator
that the Mamba paper's task comes from: noise = 0, data tokens uniform in 1 .. data_vocab,
marker = data_vocab + 1, so vocab_size = data_vocab + 2. The defaults (16 data tokens,
vocabulary 16 including noise and marker) are the paper's; it trains at L = 4096.
Answers are not fed back (every answer position reads the marker), so each target is
predicted from the context alone, as in the paper.

`trigger_distance` = d fixes the first data token exactly d tokens before the first
marker (at L - n_data - d); the other n_data - 1 data tokens stay random (sorted) in
the d - 1 places between them. So d is the longest distance any datum is carried before
its recall starts: d >= n_data, and min_len() grows to d + n_data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.tasks._random import distinct_sorted, randint
from harness.tasks.base import IGNORE_INDEX, Batch, Task, register_task


@register_task("selective_copy")
@dataclass
class SelectiveCopy(Task):
    n_data: int = 16  # data tokens to remember (Mamba paper)
    data_vocab: int = 14  # distinct data tokens; 14 + noise + marker = the paper's vocab of 16
    trigger_distance: int | None = None  # first datum exactly d tokens before the first marker

    distance_meaning = "tokens from the first data token to the first marker"

    default_seq_len = 4096  # the Mamba paper's length
    _shrink_hint = "n_data"

    NOISE = 0

    def __post_init__(self) -> None:
        if self.n_data < 1:
            raise ValueError(f"selective_copy: n_data must be >= 1, got {self.n_data}")
        if self.data_vocab < 1:
            raise ValueError(f"selective_copy: data_vocab must be >= 1, got {self.data_vocab}")
        d = self.trigger_distance
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < self.n_data):
            raise ValueError(
                f"selective_copy: trigger_distance must be an int >= n_data = {self.n_data} (all "
                f"data tokens lie within it) or None, got {d!r}"
            )

    @property
    def vocab_size(self) -> int:
        return self.data_vocab + 2

    @property
    def marker_token(self) -> int:
        return self.data_vocab + 1

    def min_len(self) -> int:
        # The data tokens with no noise between them, then the markers.
        d = self.trigger_distance
        return 2 * self.n_data if d is None else max(2 * self.n_data, d + self.n_data)

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        n = self.n_data
        body = seq_len - n  # the scattered region before the markers
        data = randint(1, self.data_vocab + 1, (batch_size, n), generator)
        if self.trigger_distance is None:
            places = distinct_sorted(batch_size, body, n, generator)  # (B, n) ascending
        else:
            first = body - self.trigger_distance
            rest = first + 1 + distinct_sorted(batch_size, self.trigger_distance - 1, n - 1, generator)
            places = torch.cat([torch.full((batch_size, 1), first, device=generator.device), rest], dim=1)
        inputs = torch.full((batch_size, seq_len), self.NOISE, dtype=torch.long, device=generator.device)
        inputs.scatter_(1, places, data)
        inputs[:, body:] = self.marker_token
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, body:] = data
        return Batch(inputs, targets)
