"""Copying (Jelassi et al. 2024, "Repeat After Me: Transformers are Better than State
Space Models at Copying"): a random string, a copy token, then the string again.

The string length follows the sequence length — about half of it — so a model trained
at L and evaluated at k*L must copy k times longer strings:

    inputs:    [P]  B  x1 .. xn  C  x1 .. x_{n-1}  xn
    targets:   ignored ......... x1 x2 ..  xn      E      (the n + 1 answer positions)

with n = (L - 2) // 2, x uniform over `alphabet` letters (ids 0 .. alphabet-1), and the
special tokens B (begin) = alphabet, C (copy) = alphabet+1, E (end) = alphabet+2,
P (pad) = alphabet+3; one P at the start only when L is odd. The copy is teacher-forced
(each answer token is fed back before the next), as in the paper's next-token training;
the end token is scored too, so a model must also know where the string stops.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.tasks._random import randint
from harness.tasks.base import IGNORE_INDEX, Batch, Task, register_task


@register_task("copy")
@dataclass
class Copying(Task):
    alphabet: int = 26  # letters, as in the paper's string-copying experiments

    default_seq_len = 256

    def __post_init__(self) -> None:
        if self.alphabet < 2:
            raise ValueError(f"copy: alphabet must be >= 2, got {self.alphabet}")

    @property
    def bos(self) -> int:
        return self.alphabet

    @property
    def copy_token(self) -> int:
        return self.alphabet + 1

    @property
    def eos(self) -> int:
        return self.alphabet + 2

    @property
    def pad(self) -> int:
        return self.alphabet + 3

    @property
    def vocab_size(self) -> int:
        return self.alphabet + 4

    def min_len(self) -> int:
        # B x1 C x1: a one-letter string.
        return 4

    @staticmethod
    def string_len(seq_len: int) -> int:
        return (seq_len - 2) // 2

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        n = self.string_len(seq_len)
        pad = seq_len - 2 - 2 * n  # 0 or 1
        device = generator.device
        string = randint(0, self.alphabet, (batch_size, n), generator)

        def column(token: int, width: int = 1) -> torch.Tensor:
            return torch.full((batch_size, width), token, dtype=torch.long, device=device)

        parts = [column(self.pad, pad), column(self.bos), string, column(self.copy_token), string]
        inputs = torch.cat(parts, dim=1)  # (B, L)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        answer = seq_len - n - 1  # position of C: the first answer position
        targets[:, answer:] = torch.cat([string, column(self.eos)], dim=1)
        return Batch(inputs, targets)
