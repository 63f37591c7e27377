"""Multi-query associative recall, MQAR (Zoology, Arora et al. 2023).

Key–value pairs first, then queries of earlier keys; at each queried key the model must
output that key's value:

    position:  0  1  2  3 ... 2n-2 2n-1 | 2n .............................. L-1
    inputs:    k1 v1 k2 v2 ...  kn  vn  | slots of two tokens: [k_j  x] or [x  x]
    targets:   ignored                  | v_j at the position of each queried k_j

with n = num_kv_pairs and x a noise token. This follows HazyResearch/zoology
`zoology/data/multiquery_ar.py`:

* keys are distinct, uniform in 1 .. vocab_size//2 - 1; values distinct, uniform in
  vocab_size//2 .. vocab_size-1 (token 0 is the "zero" filler);
* the remainder after the pairs is cut into (L - 2n) // 2 two-token slots (one extra
  noise token at the end when that length is odd); a query occupies the first token of a
  slot and its answer is the *target* there — the value itself is not fed back;
* slots for the queries are drawn without replacement with P(slot i) ∝ (i+1)^(power_a-1):
  power_a = 0.01 (zoology's default) puts most queries soon after the pairs with a heavy
  tail; power_a = 1 is uniform over the remainder. As in zoology, the j-th draw takes the
  j-th queried key (queried keys keep their context order), so early keys tend to be asked
  first;
* noise tokens are uniform over the whole vocabulary (zoology's `random_non_queries=True`)
  or all 0 (`noise="zero"`).

`num_queries` (default: all pairs, as in zoology) asks a random subset of the keys.
Train short, test long: the pairs stay the same while the query remainder grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.tasks._random import distinct, distinct_sorted, randint, weighted_distinct
from harness.tasks.base import IGNORE_INDEX, Batch, Task, register_task

NOISE_MODES = ("random", "zero")


@register_task("mqar")
@dataclass
class MQAR(Task):
    vocab_size: int = 8192  # zoology's default: a large vocabulary separates architectures
    num_kv_pairs: int = 8  # zoology's default
    num_queries: int | None = None  # None: every key once, as in zoology
    power_a: float = 0.01  # query-slot power law (zoology); 1.0 = uniform
    noise: str = "random"  # zoology's random_non_queries=True

    default_seq_len = 256
    _shrink_hint = "num_kv_pairs / num_queries"

    def __post_init__(self) -> None:
        v, n = self.vocab_size, self.num_kv_pairs
        if n < 1:
            raise ValueError(f"mqar: num_kv_pairs must be >= 1, got {n}")
        if v < 4:
            raise ValueError(f"mqar: vocab_size must be >= 4, got {v}")
        if n > self.num_keys_available:
            raise ValueError(
                f"mqar: vocab_size={v} gives only {self.num_keys_available} distinct keys "
                f"(1 .. vocab_size//2 - 1) for num_kv_pairs={n}; use vocab_size >= {2 * n + 2} "
                "or fewer pairs"
            )
        if self.num_queries is not None and not 1 <= self.num_queries <= n:
            raise ValueError(
                f"mqar: num_queries must be in 1 .. num_kv_pairs={n} (each queried key is "
                f"distinct), got {self.num_queries}"
            )
        if not self.power_a > 0:
            raise ValueError(f"mqar: power_a must be > 0 (1.0 = uniform), got {self.power_a}")
        if self.noise not in NOISE_MODES:
            raise ValueError(f"mqar: noise must be one of {NOISE_MODES}, got {self.noise!r}")

    @property
    def num_keys_available(self) -> int:
        return self.vocab_size // 2 - 1

    @property
    def queries(self) -> int:
        return self.num_kv_pairs if self.num_queries is None else self.num_queries

    def min_len(self) -> int:
        # The pairs, then one two-token slot per query.
        return 2 * self.num_kv_pairs + 2 * self.queries

    def _slot_log_weights(self, slots: int, device: torch.device) -> torch.Tensor:
        """log P(slot i) up to a constant: (power_a - 1) * log(i + 1), zoology's power law."""
        ranks = torch.arange(1, slots + 1, dtype=torch.float32, device=device)
        return (self.power_a - 1.0) * ranks.log()

    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        b, n, q, v = batch_size, self.num_kv_pairs, self.queries, self.vocab_size
        device = generator.device
        rows = torch.arange(b, device=device).unsqueeze(1)  # (B, 1), broadcasts over queries
        keys = 1 + distinct(b, self.num_keys_available, n, generator)  # (B, n)
        values = v // 2 + distinct(b, v - v // 2, n, generator)  # (B, n)
        context = torch.stack([keys, values], dim=-1).flatten(1)  # (B, n, 2) -> (B, 2n): k v k v

        # Which pairs are queried (in context order), and in which slots (in draw order).
        asked = distinct_sorted(b, n, q, generator) if q < n else torch.arange(n, device=device).expand(b, n)
        slots = (seq_len - 2 * n) // 2
        slot = weighted_distinct(self._slot_log_weights(slots, device), b, q, generator)  # (B, q)
        query_pos = 2 * n + 2 * slot  # first token of each chosen slot

        if self.noise == "random":
            inputs = randint(0, v, (b, seq_len), generator)
        else:
            inputs = torch.zeros((b, seq_len), dtype=torch.long, device=device)
        inputs[:, : 2 * n] = context
        inputs[rows, query_pos] = keys.gather(1, asked)
        targets = torch.full_like(inputs, IGNORE_INDEX)
        targets[rows, query_pos] = values.gather(1, asked)
        return Batch(inputs, targets)
