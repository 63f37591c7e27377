"""Masked tasks for bidirectional (encoder-only) models: the answer is hidden in the input.

``mlm`` - masked language modelling on the corpus of ``lm`` (BERT, Devlin et al. 2019):
a window of text; 15% of its positions are chosen, of which 80% become [MASK], 10% a
random token and 10% stay unchanged; the model predicts the original token at every chosen
position (only those are scored: loss, accuracy, bits per byte).

``masked_recall`` - a synthetic task that needs the context right of the mask: the
induction-heads task mirrored. A special token S sits just before the [MASK]; further
right, S appears once more, followed by the answer V:

    position:  ..  q   q+1     ..  r   r+1  ..
    inputs:    ..  S   [MASK]  ..  S   V    ..        (S nowhere else)
    targets:           V                              (only q + 1 is scored)

In induction heads (S A ... S -> A) the answer lies left of the query; here it lies right
of it, so a causal model sees neither the second S nor V (chance, 1 / vocab) and a
bidirectional one must look right across the sequence. ``trigger_distance`` = d fixes
r = q + 1 + d (the second S d tokens right of the mask); by default q is uniform and r
uniform to its right. Train short, test long: a longer sequence puts the answer further away.

Targets here are not "the next token": ``targets[b, t]`` is the original token at t,
predicted from the whole corrupted sequence. A causal model may still be trained on these
tasks (it sees only what lies left of each mask); a bidirectional model may take nothing
else (``Task.check_model``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.tasks._random import distinct, randint, uniform
from harness.tasks.base import IGNORE_INDEX, Batch, Task, register_task
from harness.tasks.lm import TextLM


def bert_corrupt(clean: torch.Tensor, *, vocab: int, mask_token: int, generator: torch.Generator,
                 frac: float = 0.15, mask_prob: float = 0.8, random_prob: float = 0.1) -> Batch:
    """BERT's corruption of (B, L) tokens: round(frac * L) distinct positions per row (at
    least one); each becomes ``mask_token`` with ``mask_prob``, a uniform token of
    ``range(vocab)`` with ``random_prob``, else stays. Targets: the originals there."""
    batch, length = clean.shape
    picked = distinct(batch, length, max(1, round(frac * length)), generator)  # (B, k)
    u = uniform(tuple(picked.shape), generator)
    original = clean.gather(1, picked)
    noise = randint(0, vocab, tuple(picked.shape), generator)
    replaced = torch.where(u < mask_prob, torch.full_like(original, mask_token),
                           torch.where(u < mask_prob + random_prob, noise, original))
    inputs = clean.clone().scatter_(1, picked, replaced)
    targets = torch.full_like(clean, IGNORE_INDEX).scatter_(1, picked, original)
    return Batch(inputs, targets)


def _check_probs(name: str, frac: float, mask_prob: float, random_prob: float) -> None:
    if not 0.0 < frac <= 1.0:
        raise ValueError(f"{name}: mask_frac must be in (0, 1], got {frac}")
    if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1.0:
        raise ValueError(f"{name}: mask_prob and random_prob must be >= 0 with a sum <= 1, got "
                         f"{mask_prob} and {random_prob}")


@register_task("mlm")
@dataclass
class MaskedLM(TextLM):
    mask_frac: float = 0.15   # BERT: 15% of the positions are predicted
    mask_prob: float = 0.8    # ... of which 80% are shown as [MASK],
    random_prob: float = 0.1  # 10% as a random token, and the rest (10%) unchanged

    layout = "masked"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_probs(self.name, self.mask_frac, self.mask_prob, self.random_prob)

    @property
    def mask_token(self) -> int:
        return super().vocab_size  # one past the text's own ids

    @property
    def vocab_size(self) -> int:
        return super().vocab_size + 1

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        clean = super()._sample(batch_size, seq_len, generator, split).inputs  # (B, L) text
        return bert_corrupt(clean, vocab=self.mask_token, mask_token=self.mask_token, generator=generator,
                            frac=self.mask_frac, mask_prob=self.mask_prob, random_prob=self.random_prob)


@register_task("masked_recall")
@dataclass
class MaskedRecall(Task):
    vocab: int = 16  # ordinary tokens, as induction_heads; S = vocab, [MASK] = vocab + 1
    trigger_distance: int | None = None  # second S exactly d tokens right of the mask; None = random

    distance_meaning = "tokens from the [MASK] to the special token on its right that the answer follows"
    layout = "masked"
    default_seq_len = 256
    _shrink_hint = "trigger_distance"

    def __post_init__(self) -> None:
        if self.vocab < 2:
            raise ValueError(f"masked_recall: vocab must be >= 2, got {self.vocab}")
        d = self.trigger_distance
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise ValueError(f"masked_recall: trigger_distance must be an int >= 1 or None, got {d!r}")

    @property
    def vocab_size(self) -> int:
        return self.vocab + 2

    @property
    def special_token(self) -> int:
        return self.vocab

    @property
    def mask_token(self) -> int:
        return self.vocab + 1

    def min_len(self) -> int:
        # S [MASK] S V at the shortest; a distance d puts the second S at 1 + d
        return 4 if self.trigger_distance is None else self.trigger_distance + 3

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        rows = torch.arange(batch_size, device=generator.device)
        inputs = randint(0, self.vocab, (batch_size, seq_len), generator)  # filler and answer
        if self.trigger_distance is None:
            query = (uniform((batch_size,), generator) * (seq_len - 3)).long()  # q in [0, L-4]
            right = query + 2 + (uniform((batch_size,), generator) * (seq_len - 3 - query)).long()
        else:
            query = (uniform((batch_size,), generator) * (seq_len - 2 - self.trigger_distance)).long()
            right = query + 1 + self.trigger_distance
        answer = inputs[rows, right + 1]
        inputs[rows, query], inputs[rows, query + 1] = self.special_token, self.mask_token
        inputs[rows, right] = self.special_token
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[rows, query + 1] = answer
        return Batch(inputs, targets)
