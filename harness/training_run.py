"""One training run of the extrapolation study, as everything that trains or reloads it sees
it: the task, the model built exactly as the run builds it, and the identity of its weights.

* ``as_extrapolate_config`` - a composed config as an ``ExtrapolateConfig`` (``arch.train``
  moved into ``train`` first, unknown keys refused);
* ``TrainingRun`` - its device, task, ``BuiltModel`` and autocast dtype; ``train_settings``
  (everything that shapes the trained weights: the settings and the code of the model and
  the task generator) and their hash ``train_key``; ``checkpoint()``, the file they name.

``harness.extrapolate.Experiment`` trains and evaluates on top of it; ``harness.probe`` loads
a run's checkpoint through it without importing the app.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.arch_train import move_arch_train
from harness.build import BuiltModel, build
from harness.checks import as_schema
from harness.config import ExtrapolateConfig, to_container
from harness.devices import resolve_device
from harness.fingerprint import code_fingerprint
from harness.results import config_hash, safe_label
from harness.tasks import Task, get_task
from harness.train import autocast_dtype, identity_settings


def as_extrapolate_config(cfg: DictConfig | ExtrapolateConfig) -> ExtrapolateConfig:
    """The config as its schema; ``+eval.seq_lenz=...`` is refused, not silently ignored."""
    cfg = move_arch_train(cfg)  # before anything is resolved
    return as_schema(cfg, ExtrapolateConfig)


class TrainingRun:
    """One (architecture, task, training settings): built on ``cfg.device``, weights untrained."""

    def __init__(self, cfg: ExtrapolateConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.task: Task = get_task(**to_container(cfg.task))
        self.built: BuiltModel = build(cfg.arch, cfg.model, cfg.model.vocab_size or self.task.vocab_size)
        self.model = self.built.model.to(self.device)  # the same module as self.built.model
        self.task.check_model(self.model)  # e.g. a bidirectional model on next-token targets
        self.amp = autocast_dtype(cfg.train.precision, self.device)
        # Everything that shapes the trained weights - settings and the code of the model and
        # the task generator - is their checkpoint's identity.
        self.train_settings: dict[str, Any] = {
            "arch": self.built.name, "arch_kwargs": self.built.kwargs, "task": self.task.params(),
            "train": identity_settings(to_container(OmegaConf.structured(cfg.train))),
            "code": code_fingerprint(self.model, self.task)}
        self.train_key = config_hash(self.train_settings)

    def checkpoint(self) -> Path | None:
        """``checkpoint_dir/<label>-<train key>.pt``, or None without a checkpoint_dir."""
        if not self.cfg.checkpoint_dir:
            return None
        # The label is the user's text (any characters): sanitised, it cannot leave the folder.
        folder = Path(self.cfg.checkpoint_dir)
        path = folder / f"{safe_label(self.built.label)}-{self.train_key}.pt"
        assert path.resolve().parent == folder.resolve(), path
        return path

