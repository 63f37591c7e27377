"""Resumable training (harness/resume.py): a run stopped by a signal continues from its
snapshot and ends with the same weights and result as an uninterrupted run, bit for bit."""
from __future__ import annotations

import dataclasses
import logging
import os
import signal

import pytest
import torch

from harness.sweep import Terminated, stop_signals_raise
from harness.tasks import get_task
from harness.config import TrainConfig
from harness.train import train

from tests.tiny import tiny_model

VOCAB = 11
TASK = dict(name="induction_heads", vocab=VOCAB - 1)


def _model(name: str = "mamba"):
    return tiny_model(name, VOCAB)


class SignalAt:
    """A task whose `sample` sends this process SIGTERM on the n-th call (mid-step)."""

    def __init__(self, task, n: int):
        self.task, self.n, self.calls = task, n, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def sample(self, *args, **kw):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.task.sample(*args, **kw)


def _eval_fn(model):
    gen = torch.Generator().manual_seed(5)

    def accuracy() -> float:  # draws from its own generator, which the snapshot must carry
        return float(torch.rand((), generator=gen)) * 0.0  # never reaches the target
    accuracy.generator = gen
    return accuracy


def _run(cfg: TrainConfig, tmp_path, stop_at: int | None, name: str = "mamba", **task_kw):
    task = get_task(**TASK, **task_kw)
    model = _model(name)
    path = tmp_path / "run.resume.pt"
    if stop_at is not None:
        with pytest.raises(Terminated), stop_signals_raise():
            train(model, SignalAt(task, stop_at), cfg, eval_fn=_eval_fn(model), progress=False,
                  resume_path=path, resume_identity="k")
        assert path.exists()
        model = _model(name)  # a new process: fresh weights, resumed from the snapshot
    result = train(model, task, cfg, eval_fn=_eval_fn(model), progress=False, resume_path=path,
                   resume_identity="k")
    return model, result


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(),
    dict(initial_state="passed", mixed_length=True),
    dict(initial_state="noise", optimizer="adam", weight_decay=0.0, schedule="constant", warmup_steps=0),
], ids=["adamw-cosine", "passed-mixed-length", "noise-adam"])
def test_interrupted_run_ends_bitwise_equal_to_an_uninterrupted_one(tmp_path, options):
    cfg = TrainConfig(**{**dict(steps=9, batch_size=4, seq_len=24, warmup_steps=2, eval_every=2,
                                target_acc=0.99, log_every=1), **options})
    whole_model, whole = _run(cfg, tmp_path / "whole", None)
    cut_model, cut = _run(cfg, tmp_path / "cut", stop_at=5)
    for (name, a), b in zip(whole_model.state_dict().items(), cut_model.state_dict().values()):
        assert torch.equal(a, b), name
    strip = lambda r: {k: v for k, v in dataclasses.asdict(r).items() if k != "wall_s"}  # noqa: E731
    assert strip(cut) == strip(whole)
    assert cut.steps_done == 9


def test_snapshot_sits_at_a_step_boundary(tmp_path):
    """The signal arrives while step 4's batch is drawn; the snapshot holds 4 finished steps
    (step 4 is redone from its start), not a half-updated model."""
    cfg = TrainConfig(steps=9, batch_size=4, seq_len=24, warmup_steps=2)
    with pytest.raises(Terminated), stop_signals_raise():
        train(_model(), SignalAt(get_task(**TASK), 5), cfg, progress=False,
              resume_path=tmp_path / "r.pt", resume_identity="k")
    snap = torch.load(tmp_path / "r.pt", weights_only=True)
    assert snap["step"] == 5 and snap["result"]["steps_done"] == 5 and not snap["finished"]


def test_finished_snapshot_returns_its_result_without_training(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=4, seq_len=24, warmup_steps=1)
    model = _model()
    first = train(model, get_task(**TASK), cfg, progress=False, resume_path=tmp_path / "r.pt",
                  resume_identity="k")

    class NoSampling:
        def __getattr__(self, name):
            raise AssertionError("a finished run must not train again")
    again = _model()
    result = train(again, NoSampling(), cfg, progress=False, resume_path=tmp_path / "r.pt",
                   resume_identity="k")
    assert result == first
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_snapshot_of_another_run_is_ignored_with_a_warning(tmp_path, caplog):
    cfg = TrainConfig(steps=3, batch_size=4, seq_len=24, warmup_steps=1)
    train(_model(), get_task(**TASK), cfg, progress=False, resume_path=tmp_path / "r.pt", resume_identity="a")
    (tmp_path / "bad.pt").write_bytes(b"not a snapshot")
    with caplog.at_level(logging.WARNING):
        other = train(_model(), get_task(**TASK), cfg, progress=False, resume_path=tmp_path / "r.pt",
                      resume_identity="b")
        train(_model(), get_task(**TASK), cfg, progress=False, resume_path=tmp_path / "bad.pt",
              resume_identity="b")
    assert other.steps_done == 3
    assert "belongs to another run" in caplog.text and "cannot be read" in caplog.text
    assert torch.load(tmp_path / "r.pt", weights_only=True)["identity"] == "b"


def test_stop_signal_reaches_the_launchers_handler_to_requeue(tmp_path):
    """Under submitit a SIGUSR2 (time limit, preemption) must still reach submitit's handler,
    which requeues the array task; the sweep's own handling (timeout row, snapshot) first."""
    from harness.results import make_row
    from harness.sweep import Point, SweepSettings, exit_on_terminate, run_points

    requeued = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: requeued.append(signum))
    try:
        def row(point, status="ok", reason=""):
            return make_row(status=status, reason=reason, arch="a", mode="eval", seq_len=8, env={})

        def stopped_training():
            os.kill(os.getpid(), signal.SIGUSR2)
            raise AssertionError("the signal should have stopped training")

        with pytest.raises(SystemExit) as exit_:
            exit_on_terminate(lambda: run_points([Point("p", info={})], row, row,
                                                 SweepSettings(str(tmp_path), progress=False),
                                                 before_first=stopped_training))
        assert exit_.value.code == 128 + signal.SIGUSR2 and requeued == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


@pytest.mark.slow
def test_target_loss_stops_at_the_first_window_below_it_and_resumes_exactly(tmp_path):
    from harness.train import LOSS_WINDOW
    cfg = TrainConfig(steps=400, batch_size=4, seq_len=24, warmup_steps=2, log_every=1,
                      target_loss=0.5, lr=3e-3)
    easy = dict(trigger_distance=3)  # learnt in ~100 steps
    whole_model, whole = _run(cfg, tmp_path / "whole", None, **easy)
    assert whole.stop_reason == "target loss" and whole.early_stopped
    losses = [h["loss"] for h in whole.history if "loss" in h]
    assert sum(losses[-LOSS_WINDOW:]) / LOSS_WINDOW < 0.5 <= sum(losses[-LOSS_WINDOW - 1:-1]) / LOSS_WINDOW
    assert whole.steps_done < 400
    cut_model, cut = _run(cfg, tmp_path / "cut", stop_at=LOSS_WINDOW + 7, **easy)
    assert cut.steps_done == whole.steps_done
    for a, b in zip(whole_model.state_dict().values(), cut_model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="target_loss"):
        TrainConfig(target_loss=0.0)
