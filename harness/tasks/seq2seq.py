"""Sequence to sequence: a source string, a separator, then the target string it maps to.

    inputs:   [P]  s_1 .. s_n  SEP  t_1 .. t_n
    targets:  ignored ........  t_1  t_2 .. E        (the n + 1 positions from SEP on)

with n = (L - 1) // 2 (one pad P at the start when L is even), letters uniform over
``alphabet`` (ids 0 .. alphabet-1), P = alphabet, E (end) = alphabet + 1 and SEP =
alphabet + 2, the vocabulary's last id (where archs' encoder-decoder looks for it by
default). ``op`` says what the target is:

* ``reverse``  t = s reversed;
* ``sort``     t = s sorted ascending;
* ``map``      a copy through a fixed permutation of the alphabet (t_i = π(s_i)), drawn from
               ``mapping_seed``, which the model must learn.

A decoder-only model reads the whole sequence (the "prefix" form); an encoder-decoder
encodes s_1 .. s_n (and the pad) and decodes from SEP. The target is teacher-forced and
the end token is scored, as in ``copy``. Train short, test long: the source grows with L,
so a model trained at L evaluated at k·L maps k-times longer strings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.tasks._random import randint
from harness.tasks.base import IGNORE_INDEX, Batch, Task, register_task

OPS = ("reverse", "sort", "map")


@register_task("seq2seq")
@dataclass
class Seq2Seq(Task):
    op: str = "reverse"
    alphabet: int = 16
    mapping_seed: int = 0  # op=map: the permutation's seed (part of the task's identity)

    layout = "seq2seq"
    default_seq_len = 64

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"seq2seq: op must be one of {OPS}, got {self.op!r}")
        if self.alphabet < 2:
            raise ValueError(f"seq2seq: alphabet must be >= 2, got {self.alphabet}")

    @property
    def pad(self) -> int:
        return self.alphabet

    @property
    def eos(self) -> int:
        return self.alphabet + 1

    @property
    def separator(self) -> int:
        return self.alphabet + 2

    @property
    def vocab_size(self) -> int:
        return self.alphabet + 3

    def min_len(self) -> int:
        return 3  # s SEP t: a one-letter source

    @staticmethod
    def source_len(seq_len: int) -> int:
        return (seq_len - 1) // 2

    def mapping(self) -> torch.Tensor:
        """op=map: the permutation π of the alphabet, (alphabet,) int64."""
        return torch.randperm(self.alphabet, generator=torch.Generator().manual_seed(self.mapping_seed))

    def _target(self, source: torch.Tensor) -> torch.Tensor:
        if self.op == "reverse":
            return source.flip(1)
        if self.op == "sort":
            return source.sort(dim=1).values
        return self.mapping().to(source.device)[source]

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        n = self.source_len(seq_len)
        device = generator.device
        source = randint(0, self.alphabet, (batch_size, n), generator)
        target = self._target(source)

        def column(token: int, width: int = 1) -> torch.Tensor:
            return torch.full((batch_size, width), token, dtype=torch.long, device=device)

        pad = seq_len - 1 - 2 * n  # 0 or 1
        inputs = torch.cat([column(self.pad, pad), source, column(self.separator), target], dim=1)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, pad + n:] = torch.cat([target, column(self.eos)], dim=1)
        return Batch(inputs, targets)
