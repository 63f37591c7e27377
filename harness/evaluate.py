"""Evaluation at a given length: loss and the task's metric over scored positions.

Long sequences can be run in chunks that carry the model's decode state
(``model.prefill``), so a recurrent model evaluates at lengths whose activations would
never fit in one pass: memory is one chunk plus the state (constant for Mamba-class
mixers; attention's KV cache still grows). Chunked and one-pass evaluation give the
same numbers (tested).
"""
from __future__ import annotations

import math
import time

import torch

from archs import SequenceTooLongError
from harness.tasks import Scores, Task
from harness.tasks.base import combine_chunks, score_parts
from harness.timing import current_deadline
from harness.train import autocast


@torch.no_grad()
def chunk_logits(model, inputs: torch.Tensor, chunk_len: int | None, amp=None):
    """Yield (start, logits (B, l, V)) over ``inputs`` (B, L): one pass, or chunks of
    ``chunk_len`` carrying the decode state - only one chunk's logits exist at a time (a
    bidirectional model always in one pass: each output needs the whole sequence)."""
    device = inputs.device
    if not chunk_len or inputs.shape[1] <= chunk_len or not getattr(model, "causal", True):
        with autocast(device, amp):
            yield 0, model(inputs).float()
        return
    state = model.init_state(inputs.shape[0])
    for start in range(0, inputs.shape[1], chunk_len):
        with autocast(device, amp):
            logits, state = model.prefill(inputs[:, start:start + chunk_len], state)
        yield start, logits.float()


def logits_for(model, inputs: torch.Tensor, chunk_len: int | None, amp=None) -> torch.Tensor:
    """(B, L) -> (B, L, V), in one pass or in chunks of ``chunk_len`` carrying state."""
    return torch.cat([logits for _, logits in chunk_logits(model, inputs, chunk_len, amp)], dim=1)


def scores_for(model, inputs: torch.Tensor, targets: torch.Tensor, chunk_len: int | None,
               amp=None) -> Scores:
    """The scores of ``inputs`` against ``targets``, chunk by chunk: memory stays one chunk's
    logits plus the state at any length (2^20 tokens x 64 sequences would be GBs of logits)."""
    return combine_chunks([score_parts(logits, targets[:, start:start + logits.shape[1]])
                           for start, logits in chunk_logits(model, inputs, chunk_len, amp)])


@torch.no_grad()
def evaluate(model, task: Task, seq_len: int, *, n_sequences: int, batch_size: int,
             generator: torch.Generator, chunk_len: int | None = None, amp=None,
             device: torch.device | str = "cpu", micro_batch: int | None = None) -> dict:
    """Metrics of ``model`` on ``n_sequences`` fresh sequences of ``seq_len`` tokens.

    Sequences are drawn ``batch_size`` at a time; the model sees them ``micro_batch`` at a
    time (default: all of them), so shrinking ``micro_batch`` to fit memory leaves the
    sequences, and hence the metrics, exactly as they were.

    Raises SequenceTooLongError before any compute if the model cannot represent the
    length (e.g. a learned position table) - the harness records that as ``skipped``.
    """
    limit = getattr(model, "max_seq_len", None)
    if limit is not None and seq_len > limit:
        raise SequenceTooLongError(f"eval length {seq_len} > the model's max_seq_len {limit}")
    model.eval()
    scores, done = Scores(), 0
    deadline = current_deadline()  # set by harness.timing.run_with_timeout, if any
    start = time.perf_counter()
    while done < n_sequences:
        if deadline is not None and done:
            # Fail as soon as the first batches show the rest cannot fit the budget.
            per_seq = (time.perf_counter() - start) / done
            deadline.check_predicted(per_seq * (n_sequences - done),
                                     f"{n_sequences - done} more sequences of {seq_len} tokens")
        b = min(batch_size, n_sequences - done)
        batch = task.sample(b, seq_len, generator, split="eval").to(device)
        for inputs, targets in zip(batch.inputs.split(micro_batch or b), batch.targets.split(micro_batch or b)):
            scores = scores + scores_for(model, inputs, targets, chunk_len, amp)
        done += b
    metrics = task.metrics(scores)
    out = {"loss": metrics["loss"], "accuracy": metrics.get("acc", math.nan),
           "n_sequences": done, "n_scored": scores.n_scored}
    for key, value in metrics.items():
        if key not in ("loss", "acc"):
            out[key] = value
    return out
