"""The common interface of every task: a `Batch` of tokens, a `Task` that samples them,
the scores computed from a model's logits, and the registry `get_task(name, **kw)`.

Every task is generated on the fly from a `torch.Generator`: the same generator state
gives the same batch, on the generator's device, with no files and no downloads. A task
is a dataclass of its parameters (validated when built, so a typo fails before any
compute); the sequence length is chosen per call, which is what "train short, test long"
needs: one task object, sampled at L for training and at k*L for evaluation.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

import torch
import torch.nn.functional as F

# The ignore value of torch.nn.functional.cross_entropy: targets equal to it are not scored.
IGNORE_INDEX = -100
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Batch:
    """Tokens fed to the model and the targets its logits are scored against.

    `targets[b, t]` is what the model should predict from `inputs[b, : t + 1]`;
    IGNORE_INDEX where position t is not scored.
    """

    inputs: torch.Tensor  # (B, L) int64
    targets: torch.Tensor  # (B, L) int64, IGNORE_INDEX where not scored

    @property
    def scored(self) -> torch.Tensor:
        """(B, L) bool mask of the scored positions."""
        return self.targets != IGNORE_INDEX

    @property
    def num_scored(self) -> int:
        return int(self.scored.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.inputs.to(device), self.targets.to(device))


@dataclass
class Scores:
    """Sums over scored positions, so evaluations can be accumulated batch by batch.

    `+` merges two Scores; `Task.metrics(scores)` turns them into the reported numbers.
    """

    loss_sum: float = 0.0  # summed cross-entropy, nats
    n_scored: int = 0
    n_correct: int = 0
    n_seq: int = 0  # sequences with at least one scored position
    n_seq_correct: int = 0  # ... whose every scored position is right

    def __add__(self, other: Scores) -> Scores:
        return Scores(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n_scored if self.n_scored else math.nan

    @property
    def acc(self) -> float:
        return self.n_correct / self.n_scored if self.n_scored else math.nan

    @property
    def seq_acc(self) -> float:
        return self.n_seq_correct / self.n_seq if self.n_seq else math.nan


@torch.no_grad()
def score_parts(logits: torch.Tensor, targets: torch.Tensor) -> tuple[Scores, torch.Tensor, torch.Tensor]:
    """Position sums of logits (B, L, V) against targets (B, L), and per sequence whether it
    has a scored position and whether every one is right (B,), so the scores of a sequence
    seen in several chunks combine exactly (``combine_chunks``)."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not match targets {tuple(targets.shape)}: "
            "expected logits (B, L, V) for targets (B, L)"
        )
    scored = targets != IGNORE_INDEX
    # Loss and argmax only where scored: long evaluations score a handful of positions.
    rows = scored.nonzero()[:, 0]
    picked, wanted = logits[scored].float(), targets[scored]
    loss_sum = F.cross_entropy(picked, wanted, reduction="sum")
    right = picked.argmax(dim=-1) == wanted
    any_wrong = torch.zeros(targets.shape[0], dtype=torch.bool, device=targets.device)
    any_wrong[rows[~right]] = True
    sums = Scores(loss_sum=float(loss_sum), n_scored=int(scored.sum()), n_correct=int(right.sum()))
    return sums, scored.any(dim=-1), ~any_wrong


def combine_chunks(parts: list[tuple[Scores, torch.Tensor, torch.Tensor]]) -> Scores:
    """The Scores of sequences whose positions were scored in several chunks."""
    sums = sum((p[0] for p in parts), Scores())
    has_scored = torch.stack([p[1] for p in parts]).any(dim=0)
    all_right = torch.stack([p[2] for p in parts]).all(dim=0)
    return dataclasses.replace(sums, n_seq=int(has_scored.sum()),
                               n_seq_correct=int((all_right & has_scored).sum()))


@torch.no_grad()
def score_logits(logits: torch.Tensor, targets: torch.Tensor) -> Scores:
    """Scores of logits (B, L, V) against targets (B, L): loss and argmax accuracy.

    Only positions whose target is not IGNORE_INDEX count.
    """
    return combine_chunks([score_parts(logits, targets)])


class Task(ABC):
    """A source of (inputs, targets) batches at any sequence length >= min_len().

    Subclasses are dataclasses of their parameters; they set `name`, `default_seq_len`,
    implement `vocab_size`, `min_len` and `_sample`, and validate in `__post_init__`.
    """

    name: ClassVar[str]
    default_seq_len: ClassVar[int]
    # Whether "every scored position of a sequence right" is a meaningful number.
    has_seq_acc: ClassVar[bool] = True
    # Parameter to shrink when seq_len is too short, named in the error message.
    _shrink_hint: ClassVar[str] = ""
    # What `trigger_distance` measures for this task ("" = the task has no distance knob).
    # Tasks with the knob have a dataclass field `trigger_distance: int | None` (None = the
    # task's own random placement) and grow `min_len()` so the distance always fits.
    distance_meaning: ClassVar[str] = ""
    # Where the answers are, which decides the models that may take the task (check_model):
    # "next_token": the target at t is the input at t + 1 - a causal model's job, which a
    #   bidirectional model would just read off its input;
    # "masked": the targets are hidden in the inputs (a [MASK]), so a model may see the
    #   whole input - bidirectional (encoder-only) models fit, causal ones see the left only;
    # "seq2seq": next tokens after a separator (source SEP target): decoder-only models read
    #   it as their "prefix" form, encoder-decoders split it at the separator.
    layout: ClassVar[str] = "next_token"

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Model vocabulary this task needs, special tokens included."""

    @abstractmethod
    def min_len(self) -> int:
        """Shortest valid sequence length for these parameters."""

    @abstractmethod
    def _sample(self, batch_size: int, seq_len: int, generator: torch.Generator, split: str) -> Batch:
        """Draw a batch; arguments already validated."""

    def max_len(self, split: str = "train") -> int | None:
        """Longest valid sequence length (None: unbounded)."""
        return None

    def sample(
        self, batch_size: int, seq_len: int, generator: torch.Generator, split: str = "train"
    ) -> Batch:
        """A batch of `batch_size` sequences of `seq_len` tokens, on `generator.device`.

        `split` matters only for tasks drawn from a fixed corpus ("train" | "eval");
        synthetic tasks draw fresh sequences every call, so use separate generators
        (seeds) for training and evaluation instead.
        """
        self._check_request(batch_size, seq_len, generator, split)
        return self._sample(batch_size, seq_len, generator, split)

    @classmethod
    def has_distance(cls) -> bool:
        return bool(cls.distance_meaning)

    def at_distance(self, distance: int | None) -> Task:
        """This task with its trigger fixed ``distance`` tokens before the query (None: as
        configured); what the distance measures is the task's ``distance_meaning``."""
        if not self.has_distance():
            with_knob = [n for n, c in _TASKS.items() if c.has_distance()]
            raise ValueError(
                f"{self.name} has no trigger_distance knob; tasks with one: {', '.join(sorted(with_knob))}"
            )
        if distance is None:
            return self
        return dataclasses.replace(self, trigger_distance=distance)  # type: ignore[type-var]

    def check_model(self, model: Any) -> None:
        """Raise ValueError if ``model`` cannot take this task fairly (see ``layout``): a
        bidirectional model on targets it sees, an encoder-decoder without a separator."""
        arch = getattr(model, "arch_name", type(model).__name__)
        masked = [n for n, c in _TASKS.items() if c.layout == "masked"]
        if not getattr(model, "causal", True) and self.layout != "masked":
            raise ValueError(
                f"{self.name}: its targets are the next inputs, which the bidirectional {arch} "
                f"(causal=false) sees in its input; use a masked task ({', '.join(sorted(masked))}) "
                f"or model.causal=true")
        separator = getattr(model, "separator", None)
        if separator is None:
            return
        if self.layout != "seq2seq":
            seq2seq = [n for n, c in _TASKS.items() if c.layout == "seq2seq"]
            raise ValueError(f"{self.name}: the encoder-decoder {arch} needs a source, a separator and "
                             f"a target; use a sequence-to-sequence task ({', '.join(sorted(seq2seq))})")
        if separator != getattr(self, "separator", None):
            raise ValueError(f"{self.name}: {arch} splits at token {separator} but the task's separator "
                             f"is {getattr(self, 'separator', None)}; build it with the task's vocabulary "
                             f"(model.vocab_size=null) or separator={getattr(self, 'separator', None)}")

    def params(self) -> dict[str, Any]:
        """The task's parameters, for result rows and config hashes.

        An unset ``trigger_distance`` is left out, so hashes (checkpoint and result keys)
        made before the knob existed stay the same."""
        params = {"name": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]
        if params.get("trigger_distance", 0) is None:
            del params["trigger_distance"]
        return params

    def metrics(self, scores: Scores) -> dict[str, float]:
        """Reported numbers from accumulated scores: loss (nats), acc, seq_acc."""
        out = {"loss": scores.loss, "acc": scores.acc}
        if self.has_seq_acc:
            out["seq_acc"] = scores.seq_acc
        return out

    def _check_request(self, batch_size: int, seq_len: int, generator: Any, split: str) -> None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"{self.name}: generator must be a torch.Generator, got {type(generator).__name__}; "
                "use torch.Generator().manual_seed(seed)"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{self.name}: batch_size must be a positive int, got {batch_size!r}")
        if split not in SPLITS:
            raise ValueError(f"{self.name}: split must be one of {SPLITS}, got {split!r}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int):
            raise ValueError(f"{self.name}: seq_len must be an int, got {seq_len!r}")
        shortest = self.min_len()
        if seq_len < shortest:
            hint = f" or reduce {self._shrink_hint}" if self._shrink_hint else ""
            raise ValueError(
                f"{self.name}: seq_len={seq_len} is shorter than min_len={shortest} for "
                f"{self.params()}; use seq_len >= {shortest}{hint}"
            )
        longest = self.max_len(split)
        if longest is not None and seq_len > longest:
            raise ValueError(
                f"{self.name}: seq_len={seq_len} is longer than max_len={longest} of the "
                f"{split!r} split; use seq_len <= {longest}"
            )


# ---------------------------------------------------------------------------- registry

_TASKS: dict[str, type[Task]] = {}
T = TypeVar("T", bound=type[Task])


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator adding a Task subclass to the registry under `name`."""

    def add(cls: T) -> T:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is already registered by {_TASKS[name].__qualname__}")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return add


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build a registered task from its name and parameters (e.g. a Hydra `task:` node)."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}")
    cls = _TASKS[name]
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(
            f"task {name!r} has no parameter(s) {unknown}; its parameters: {sorted(fields)}"
        )
    return cls(**kwargs)
