"""Training a count-based model (``archs.counting``): one counting pass over the batches a
neural model would train on. ``harness.train.train`` hands such a model here, so every
caller (the extrapolation app, scripts) trains both kinds through one function."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.tasks import IGNORE_INDEX, Task
from harness.config import TrainConfig
from harness.train import TrainResult, set_threads, training_batch


def count_training_tokens(model: torch.nn.Module, task: Task, cfg: TrainConfig, device: torch.device | str = "cpu",
                          *, progress: bool = True) -> TrainResult:
    """Train a count-based model (``archs.counting``): the batches ``train`` would draw for
    the same seed - steps x batch_size x seq_len tokens, mixed lengths included - each passed
    to ``model.count`` once. Every ``log_every`` steps the history records the model's loss
    on the batch about to be counted (unseen so far, like a neural model's loss before its
    step). Options that shape gradient steps (lr, schedule, optimizer, clipping) do nothing;
    a start state other than zero is refused (a count table has no recurrent state)."""
    if cfg.initial_state != "zero":
        raise ValueError(f"train.initial_state={cfg.initial_state!r} starts sequences from a recurrent "
                         f"state; {getattr(model, 'arch_name', type(model).__name__)} is trained by "
                         f"counting and has none. Use train.initial_state=zero.")
    device = torch.device(device)
    set_threads(cfg.threads)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    model.to(device).eval()
    result, start = TrainResult(), time.perf_counter()
    for step in tqdm(range(cfg.steps), desc=f"count {getattr(model, 'arch_name', '')}", disable=not progress,
                     dynamic_ncols=True, leave=False):
        batch = training_batch(task, cfg, gen).to(device)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                loss = F.cross_entropy(model(batch.inputs).flatten(0, 1), batch.targets.flatten(),
                                       ignore_index=IGNORE_INDEX).item()
            result.final_loss = loss
            result.history.append({"step": step, "loss": loss, "tokens": result.tokens_seen})
        model.count(batch.inputs, batch.targets)
        result.steps_done = step + 1
        result.tokens_seen += batch.inputs.numel()
        if cfg.time_budget_s is not None and time.perf_counter() - start > cfg.time_budget_s:
            result.early_stopped, result.stop_reason = True, "time budget"
            break
    result.wall_s = time.perf_counter() - start
    return result
