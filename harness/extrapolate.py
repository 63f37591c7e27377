"""Train short, test long: train an architecture on a task at one length, evaluate it at
1x, 2x, 4x, ... that length, one result row per evaluation length.

    python -m harness.extrapolate arch=mamba task=induction_heads
    python -m harness.extrapolate -m experiment=induction_extrapolation          # the Mamba paper's protocol
    python -m harness.extrapolate -m arch=transformer,mamba train.seed=0,1,2 eval.seq_lens=[256,1024,4096]

Same row store, resume semantics and launchers as the cost sweep: a trained model is
kept as a weights-only checkpoint keyed by a hash of everything that shaped it, so a
re-run evaluates new lengths without training again; evaluation points already in
``results_dir`` are skipped unless ``force=true``. A length the model cannot represent
(a learned position table) is a ``skipped`` row, an OOM an ``oom`` row (and longer
lengths are skipped), a diverged training run a ``diverged`` row per length.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig

from archs import SequenceTooLongError
from archs.attention.fused import sdpa_cudnn_allowed, sdpa_cudnn_context
from harness.atomic import DiskFullError
from harness.build import build
from harness.checks import (absolute_dir, building_under_cap, check_writable_dir, validate_eval, validate_figures,
                            validate_model)
from harness.claims import check_stale_s
from harness.cluster import start_app
from harness.config import CONF_DIR, ExtrapolateConfig, to_container
from harness.devices import resolve_device
from harness.env import device_name
from harness.evaluate import evaluate
from harness.results import atomic_write, clean_stale_temps, load_rows_where, point_key
from harness.sweep import Point, SweepSettings, exit_on_terminate, run_points
from harness.tasks import Task, get_task
from harness.timing import classify_exception, free_memory, job_limits, run_with_timeout
from harness.train import TrainResult, batch_loss, factor_columns, load_identified, save_checkpoint, train
from harness.training_run import TrainingRun
from harness.training_run import as_extrapolate_config as _as_schema  # the app's entry check, like cost._as_schema

log = logging.getLogger(__name__)


class Experiment(TrainingRun):
    """One (architecture, task, training run) - built and identified by ``TrainingRun`` -
    trained or loaded, then evaluated at every length (and trigger distance)."""

    def __init__(self, cfg: ExtrapolateConfig):
        super().__init__(cfg)
        self.trained_result: TrainResult | None = None

    # -- training (or loading) -------------------------------------------------------------
    def _eval_fn(self):
        gen = torch.Generator().manual_seed(self.cfg.eval.seed + 1)

        def early_stop_accuracy() -> float:
            return evaluate(self.model, self.task, self.cfg.train.seq_len, n_sequences=64,
                            batch_size=self.cfg.train.batch_size, generator=gen, amp=self.amp,
                            device=self.device)["accuracy"]
        early_stop_accuracy.generator = gen  # part of a resume snapshot
        return early_stop_accuracy

    def trained(self) -> TrainResult:
        ckpt = self.checkpoint()
        if ckpt and self.cfg.force:
            self._resume_path().unlink(missing_ok=True)  # force=true trains from step 0
        if ckpt and ckpt.exists() and not self.cfg.force:
            # Another run's file, or a truncated one: an error naming it and force=true.
            identity = load_identified(self.model, ckpt, self.train_key)
            self.model.to(self.device)
            log.info("loaded %s", ckpt)
            return TrainResult(**identity["result"])  # this run's numbers, saved with its weights
        start = time.perf_counter()
        try:
            # a run stopped by a time limit or a signal continues from its snapshot
            result = train(self.model, self.task, self.cfg.train, self.device,
                           eval_fn=self._eval_fn(), progress=self.cfg.progress,
                           resume_path=self._resume_path(), resume_identity=self.train_key)
        except DiskFullError:
            raise  # the environment, not the model: stop with the message naming the path
        except Exception as exc:  # noqa: BLE001 - a training OOM / error becomes rows, not a crash
            status, reason = classify_exception(exc)
            free_memory(exc)
            self.model.zero_grad(set_to_none=True)
            log.warning("%s: training failed (%s); every eval length gets a %s row", self.built.label, reason, status)
            return TrainResult(status=status, reason=reason, wall_s=time.perf_counter() - start)
        broken = self._broken_by_last_update() if result.status == "ok" else None
        if broken:
            result.status, result.reason = "diverged", broken
        if ckpt and result.history:
            # the training curve (loss every train.log_every steps, lr, eval accuracy): when
            # a long run learned - or that it never left chance, or how it diverged - is half
            # of a study's answer, so it is kept for every run (weights only for an ok one)
            atomic_write(ckpt.with_suffix(".history.csv"), pd.DataFrame(result.history).to_csv(index=False))
        if ckpt and result.status == "ok":
            save_checkpoint(self.model, ckpt, {"key": self.train_key, "settings": self.train_settings,
                                               "result": result.summary()})
            atomic_write(ckpt.with_suffix(".json"), json.dumps({"key": self.train_key, **result.summary()}))
        if ckpt:
            self._resume_path().unlink(missing_ok=True)  # the checkpoint holds the result now
        return result

    def _resume_path(self) -> Path | None:
        """The resume snapshot beside the checkpoint (none without a checkpoint_dir)."""
        ckpt = self.checkpoint()
        return ckpt.with_suffix(".resume.pt") if ckpt else None

    def _broken_by_last_update(self) -> str | None:
        """Why the model after training is broken, or None. The loop checks the loss before
        each update; this checks what the last one left: finite weights, a finite loss."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return f"non-finite weights after the last update (train.lr={self.cfg.train.lr:g})"
        t = self.cfg.train
        batch = self.task.sample(min(8, t.batch_size), t.seq_len, torch.Generator().manual_seed(t.seed)).to(self.device)
        self.model.eval()
        with torch.no_grad():  # the training loss, on a batch, after the last update
            loss = batch_loss(self.model, batch.inputs, batch.targets, self.amp, self.device, 0.0)[1].item()
        if not math.isfinite(loss):
            return f"the trained model gives a non-finite loss ({loss}) (train.lr={t.lr:g})"
        return None

    # -- evaluation --------------------------------------------------------------------------
    def settings(self, eval_len: int, distance: int | None = None) -> dict[str, Any]:
        e = self.cfg.eval
        out = {"train_key": self.train_key, "eval_seq_len": eval_len, "n_sequences": e.n_sequences,
               "eval_seed": e.seed, "chunk_len": e.chunk_len, "device": device_name(self.device),
               "limits": {"time_budget_s": e.time_budget_s, "cpu_memory_limit_gb": e.cpu_memory_limit_gb}}
        if distance is not None:  # absent otherwise: keys made before the axis stay valid
            out["trigger_distance"] = distance
        return out

    def key(self, eval_len: int, distance: int | None = None) -> str:
        at = "" if distance is None else f"-d{distance}"
        return point_key(self.settings(eval_len, distance),
                         f"{self.built.label}-{self.task.name}-s{self.cfg.train.seed}-{eval_len}{at}")

    def row(self, eval_len: int, distance: int | None, trained: TrainResult, status: str = "ok", reason: str = "",
            **metrics) -> dict:
        """The row of the point (``eval_len``, trigger ``distance``; None: as the task places it)."""
        e, t = self.cfg.eval, self.cfg.train
        return self.built.row(
            self.device, eval_len, status=status, reason=reason, settings=self.settings(eval_len, distance),
            point_key=self.key(eval_len, distance), experiment=self.cfg.experiment, figures=self.cfg.figures,
            batch=self._eval_batch(eval_len), dtype=str(self.amp or torch.float32).replace("torch.", ""),
            mode="eval", time_budget_s=e.time_budget_s, cpu_memory_limit_gb=e.cpu_memory_limit_gb,
            task=self.task.name, task_params=json.dumps(self.task.params(), sort_keys=True),
            train_seq_len=t.seq_len, eval_seq_len=eval_len, seed=t.seed, train_key=self.train_key,
            train_status=trained.status, train_steps=trained.steps_done, train_loss=trained.final_loss,
            train_tokens=trained.tokens_seen, train_wall_s=trained.wall_s, early_stopped=trained.early_stopped,
            train_stop_reason=trained.stop_reason,
            # may SDPA pick cuDNN attention (None: not on CUDA) - archs.attention.fused.sdpa_cudnn_allowed
            train_sdpa_cudnn=trained.sdpa_cudnn, eval_sdpa_cudnn=self.eval_sdpa_cudnn(),
            # the target early stopping aimed at (None: no target checked), so a report can say
            # that a model trained to the end never reached it (harness.report.series.training_flags)
            train_target_acc=t.target_acc if t.eval_every else None,
            eval_chunk_len=e.chunk_len, state_bytes=self.model.expected_state_bytes(1, eval_len),
            trigger_distance=distance, train_trigger_distance=getattr(self.task, "trigger_distance", None),
            **factor_columns(t), **metrics)

    def eval_task(self, distance: int | None) -> Task:
        """The training task, with its trigger at ``distance`` when one is given."""
        return self.task if distance is None else self.task.at_distance(distance)

    def _eval_batch(self, eval_len: int) -> int:
        return max(1, min(self.cfg.eval.n_sequences, self.cfg.eval.batch_tokens // eval_len))

    def eval_sdpa_cudnn(self) -> bool | None:
        # the sweep meets each length once: a new shape, for cuDNN attention a new plan
        return sdpa_cudnn_allowed(self.cfg.eval.sdpa_cudnn, self.device, shapes_vary=True)

    def _evaluate(self, eval_len: int, distance: int | None, batch: int, micro: int, gen) -> dict:
        e = self.cfg.eval
        with sdpa_cudnn_context(self.eval_sdpa_cudnn()):
            return evaluate(self.model, self.eval_task(distance), eval_len, n_sequences=e.n_sequences,
                            batch_size=batch, micro_batch=micro, generator=gen, chunk_len=e.chunk_len,
                            amp=self.amp, device=self.device)

    def evaluate_at(self, eval_len: int, distance: int | None, trained: TrainResult) -> dict:
        """One point's row. An OOM halves the batch the model sees and retries (the
        sequences drawn stay the same, so do the metrics); at 1 it is an ``oom`` row."""
        e = self.cfg.eval
        batch = micro = self._eval_batch(eval_len)
        while True:
            start = time.perf_counter()
            gen = torch.Generator().manual_seed(e.seed)
            try:
                metrics = run_with_timeout(lambda: self._evaluate(eval_len, distance, batch, micro, gen),
                                           e.time_budget_s)
                elapsed_ms = 1e3 * (time.perf_counter() - start)
                if "loss" in metrics and not math.isfinite(metrics["loss"]):
                    # non-finite logits: the weights are broken, not the model bad at this length
                    return self.row(eval_len, distance, trained, "diverged", f"eval loss is {metrics['loss']} at "
                                    f"length {eval_len}: the trained model gives non-finite logits",
                                    time_ms=elapsed_ms, micro_batch=micro, **metrics)
                if "loss" in metrics:
                    metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
                return self.row(eval_len, distance, trained, time_ms=elapsed_ms, micro_batch=micro, **metrics)
            except SequenceTooLongError as exc:
                return self.row(eval_len, distance, trained, "skipped", str(exc))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a row
                status, reason = classify_exception(exc)
                free_memory(exc)
                if status == "oom" and micro > 1:
                    log.info("%s L=%d: out of memory at micro-batch %d, retrying with %d",
                             self.built.label, eval_len, micro, micro // 2)
                    micro //= 2
                    continue
                return self.row(eval_len, distance, trained, status, reason, micro_batch=micro)

    def run(self) -> None:
        """Every (eval length, trigger distance) is a point of ``harness.sweep.run_points``:
        first each length with the task as configured (the length axis), then each
        ``eval.trigger_distances`` entry at every length long enough to hold it. The model is
        trained (or loaded) once, just before the first point that needs measuring."""
        points = []
        for distance in [None, *(self.cfg.eval.trigger_distances or [])]:
            task = self.task if distance is None else self.task.at_distance(distance)
            at = "" if distance is None else f" d={distance}"
            lengths = [n for n in sorted(set(self.cfg.eval.seq_lens)) if n >= task.min_len()]
            if distance is not None and self.cfg.eval.distance_at == "shortest":
                lengths = lengths[:1]
            points += [Point(self.key(n, distance), group=f"eval{at}",
                             info={"eval_seq_len": n, "distance": distance},
                             desc=f"L={n}{at}", at=f"eval_seq_len={n}") for n in lengths]

        def train_once() -> None:
            self.trained_result = self.trained()

        def measure(point: Point) -> dict:
            n, distance, trained = point.info["eval_seq_len"], point.info["distance"], self.trained_result
            if trained.status != "ok":
                return self.row(n, distance, trained, trained.status, f"training {trained.status}: {trained.reason}")
            return self.evaluate_at(n, distance, trained)

        def failure(point: Point, status: str, reason: str) -> dict:
            return self.row(point.info["eval_seq_len"], point.info["distance"],
                            self.trained_result or TrainResult(status="skipped"), status, reason)

        settings = SweepSettings(results_dir=self.cfg.results_dir, force=self.cfg.force,
                                 claim_stale_s=self.cfg.claim_stale_s, progress=False,
                                 desc=f"{self.built.label} {self.task.name}")
        # A failed training gives its status to every length; only oom/timeout of an
        # evaluation skips the longer ones (within the same distance).
        run_points(points, measure, failure, settings, before_first=train_once,
                   skips_longer=lambda row: row["status"] in ("oom", "timeout") and row["train_status"] == "ok")


def check_trigger_distances(task: Task, distances: list[int], seq_lens: list[int]) -> None:
    """Every ``eval.trigger_distances`` entry must be a knob of the task and fit at least
    one evaluation length; one that fits none would silently give no rows."""
    too_long = []
    for d in distances:
        need = task.at_distance(d).min_len()  # no such knob, or a bad distance: fails here, named
        if need > max(seq_lens):
            too_long.append(f"{d} (needs >= {need} tokens)")
    if too_long:
        raise ValueError(f"eval.trigger_distances {', '.join(too_long)} fit in no evaluation length "
                         f"(eval.seq_lens={sorted(seq_lens)}), so they would give no rows; add a longer "
                         f"length to eval.seq_lens or drop those distances")


def run(cfg: DictConfig | ExtrapolateConfig) -> pd.DataFrame:
    """Train (or load) and evaluate one architecture config; return its rows."""
    cfg = _as_schema(cfg)
    validate_eval(cfg.eval)
    validate_model(cfg.model)
    validate_figures(cfg.figures)
    task = get_task(**to_container(cfg.task))  # bad task parameters fail before any compute
    task.sample(1, cfg.train.seq_len, torch.Generator().manual_seed(0))  # the task's own length check
    too_short = [n for n in cfg.eval.seq_lens if n < task.min_len()]
    if too_short:
        raise ValueError(f"eval.seq_lens has {too_short}, shorter than the task's min_len={task.min_len()} "
                         f"for {task.params()}")
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < task.vocab_size:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the vocabulary of task "
                         f"{task.name} ({task.vocab_size} tokens): its tokens would index past the "
                         f"embedding. Set model.vocab_size >= {task.vocab_size}, or null for the task's own")
    build(cfg.arch, cfg.model, cfg.model.vocab_size or task.vocab_size, validate_only=True)
    check_trigger_distances(task, cfg.eval.trigger_distances or [], cfg.eval.seq_lens)
    check_stale_s(cfg.claim_stale_s)
    device = resolve_device(cfg.device)
    check_writable_dir(cfg.results_dir, "results_dir")
    if cfg.checkpoint_dir:
        check_writable_dir(cfg.checkpoint_dir, "checkpoint_dir")
        clean_stale_temps(cfg.checkpoint_dir)  # a save cut by a kill left a (full-size) temp file
    # The cap and train.threads hold for this job only: the next job of a multirun starts afresh.
    with job_limits(device, cfg.eval.cpu_memory_limit_gb):
        torch.manual_seed(cfg.train.seed)
        with building_under_cap(cfg.eval.cpu_memory_limit_gb, "eval.cpu_memory_limit_gb"):
            experiment = Experiment(cfg)
        experiment.run()
    return load_rows_where(cfg.results_dir, label=experiment.built.label, train_key=experiment.train_key)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="extrapolate")
def _app(cfg: DictConfig) -> None:
    cfg.results_dir = absolute_dir(cfg.results_dir, "results_dir")
    if cfg.checkpoint_dir:
        cfg.checkpoint_dir = absolute_dir(cfg.checkpoint_dir, "checkpoint_dir")
    df = exit_on_terminate(lambda: run(cfg))
    if not df.empty:
        log.info("%d evaluation rows in %s", len(df), cfg.results_dir)


def main() -> None:
    """The command line (``python -m harness.extrapolate``, ``archbench-extrapolate``): what Hydra needs is
    set up here (``harness.cluster.start_app``), not when this module is imported."""
    start_app(_app)


if __name__ == "__main__":
    main()
