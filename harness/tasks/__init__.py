"""Tasks for the "train short, test long" experiment, generated on the fly from a seed.

    from harness.tasks import get_task
    task = get_task("induction_heads")            # or a Hydra node: get_task(**cfg.task)
    batch = task.sample(64, 256, torch.Generator().manual_seed(0))
    scores = score_logits(model(batch.inputs), batch.targets)
    task.metrics(scores)                           # {"loss", "acc", "seq_acc"} (+ "bpb" for lm)

Registered names: induction_heads, selective_copy, mqar, passkey, copy, lm; for bidirectional
(encoder-only) models mlm and masked_recall; for sequence to sequence seq2seq.
"""

from harness.tasks.base import (
    IGNORE_INDEX,
    Batch,
    Scores,
    Task,
    get_task,
    list_tasks,
    register_task,
    score_logits,
)

# Importing the task modules registers them.
from harness.tasks.copying import Copying
from harness.tasks.induction import InductionHeads
from harness.tasks.lm import TextLM, nats_to_bpb
from harness.tasks.masked import MaskedLM, MaskedRecall, bert_corrupt
from harness.tasks.mqar import MQAR
from harness.tasks.passkey import Passkey
from harness.tasks.selective_copy import SelectiveCopy
from harness.tasks.seq2seq import Seq2Seq

__all__ = [
    "IGNORE_INDEX",
    "MQAR",
    "Batch",
    "Copying",
    "InductionHeads",
    "MaskedLM",
    "MaskedRecall",
    "Passkey",
    "Scores",
    "SelectiveCopy",
    "Seq2Seq",
    "Task",
    "TextLM",
    "bert_corrupt",
    "get_task",
    "list_tasks",
    "nats_to_bpb",
    "register_task",
    "score_logits",
]
