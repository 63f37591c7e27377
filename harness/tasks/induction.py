"""Induction heads (Mamba paper, Gu & Dao 2023, §4.1.2 and App. E.1).

The model sees random tokens in which a special token S appears twice: once at a random
position p followed by a token A, and again as the last input. It must answer A:

    position:  0 .. p-1     p   p+1   p+2 .. L-2    L-1
    inputs:    random       S   A     random        S
    targets:   ignored ...                          A      (only the last position scored)

Random tokens are uniform over `vocab` ordinary tokens (0 .. vocab-1; the Mamba paper
uses 16); S = vocab, so the model vocabulary is vocab + 1. S never appears elsewhere, so
the answer is unambiguous. This is the layout of the generator in HazyResearch/safari
(`generate_induction_head`, the H3/Hyena codebase the task comes from): S at a uniform
position before the final query, the copied token appended after the final S. The
Mamba paper trains at L = 256 and evaluates up to 2^20.

`trigger_frac` restricts the first S to the first fraction of the sequence: 1.0 (the
default, as in safari) lets it fall anywhere; 0.5 forces every answer to be recalled from
at least half a sequence back, a harsher test of long recall.

`trigger_distance` = d fixes the first S at position L-1-d, i.e. d tokens before the
query (the final S at L-1), for every sample: 2 <= d <= L-1 (d = 2 puts the answer A
just before the query; d = L-1 puts S at position 0), so min_len() becomes d+1. It
measures recall by distance rather than by sequence length: with the trigger uniform,
"accuracy at length L" mixes every distance up to L-2. It excludes `trigger_frac`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.tasks._random import randint
from harness.tasks.base import IGNORE_INDEX, Batch, Task, register_task


@register_task("induction_heads")
@dataclass
class InductionHeads(Task):
    vocab: int = 16  # ordinary tokens; the Mamba paper's setting
    trigger_frac: float = 1.0  # first S lies in the first trigger_frac of the sequence (safari: 1.0)
    trigger_distance: int | None = None  # first S exactly d tokens before the query; None = random

    distance_meaning = "tokens from the first S (trigger) to the query S at the last position"

    default_seq_len = 256  # the Mamba paper's training length
    _shrink_hint = "trigger_distance"

    def __post_init__(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"induction_heads: vocab must be >= 2, got {self.vocab}")
        if not 0.0 < self.trigger_frac <= 1.0:
            raise ValueError(
                f"induction_heads: trigger_frac must be in (0, 1], got {self.trigger_frac}"
            )
        if self.trigger_distance is not None:
            d = self.trigger_distance
            if isinstance(d, bool) or not isinstance(d, int) or d < 2:
                raise ValueError(
                    f"induction_heads: trigger_distance must be an int >= 2 (the answer sits "
                    f"between the trigger and the query) or None, got {d!r}"
                )
            if self.trigger_frac != 1.0:
                raise ValueError(
                    "induction_heads: trigger_distance fixes the trigger, trigger_frac restricts a "
                    "random one; set only one of them (trigger_frac=1.0 with trigger_distance)"
                )

    @property
    def vocab_size(self) -> int:
        return self.vocab + 1

    @property
    def special_token(self) -> int:
        return self.vocab

    def min_len(self) -> int:
        # S, A, S: the shortest sequence that still asks the question; a fixed trigger
        # distance d needs the trigger at L-1-d >= 0.
        return 3 if self.trigger_distance is None else max(3, self.trigger_distance + 1)

    def _trigger_positions(self, seq_len: int) -> int:
        """Number of allowed positions for the first S: 0 .. count-1."""
        # p + 1 (the answer) must stay before the final S at L - 1, so p <= L - 3.
        return max(1, math.floor(self.trigger_frac * (seq_len - 2)))

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        rows = torch.arange(batch_size, device=generator.device)
        inputs = randint(0, self.vocab, (batch_size, seq_len), generator)
        if self.trigger_distance is None:
            trigger = randint(0, self._trigger_positions(seq_len), (batch_size,), generator)
        else:
            trigger = torch.full((batch_size,), seq_len - 1 - self.trigger_distance, device=generator.device)
        inputs[rows, trigger] = self.special_token
        inputs[:, -1] = self.special_token
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[:, -1] = inputs[rows, trigger + 1]
        return Batch(inputs, targets)
