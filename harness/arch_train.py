"""``arch.train``: an architecture's own training options, merged over ``train``.

One multirun over architectures can then train each its own way: the demo trains Mamba
with state passing (``conf/arch/induction/mamba_state_passing.yaml``) beside attention,
which has no recurrent state to pass on and refuses the option. Only the extrapolation
app reads them (``harness.build.split_arch`` drops them, so a cost sweep ignores them).

Each key is stated in one place: a ``train.KEY`` set away from its default to a value other
than ``arch.train.KEY`` (on the command line, by a lengen variant) is refused, because the
architecture's value would win and it would be silently ignored.
"""
from __future__ import annotations

import copy
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from harness.checks import merge_over
from harness.config import TrainConfig, to_container


def _check(train: TrainConfig, overrides: Any) -> None:
    """``overrides`` (the ``arch.train`` mapping) are valid train keys and values, and none
    of them would silently replace a ``train.KEY`` that was set to something else."""
    merged = merge_over(train, overrides, "arch.train")
    default = TrainConfig()
    clash = [k for k in to_container(overrides)
             if getattr(train, k) != getattr(default, k) and getattr(train, k) != getattr(merged, k)]
    if clash:
        pairs = "; ".join(f"train.{k}={getattr(train, k)!r} vs arch.train.{k}={getattr(merged, k)!r}" for k in clash)
        raise ValueError(f"the arch config sets its own training options and they disagree with `train`: {pairs}. "
                         f"The architecture's value would win and train.* be ignored, so set each key in one "
                         f"place: `arch.train.{clash[0]}=...` on the command line, or an arch config without "
                         f"a `train:` block (arch files with one are variants of their own: do not combine "
                         f"them with a lengen= variant)")


def move_arch_train(cfg: Any) -> Any:
    """The config (composed, or an ExtrapolateConfig built in code) with ``arch.train`` moved
    into ``train`` before anything else is resolved, so an interpolation of ``train.*``
    elsewhere (a learned position table sized ``${train.seq_len}``) sees the architecture's
    value. A config without ``arch.train`` is returned as it is."""
    if "train" not in cfg.arch:
        return cfg
    cfg = copy.deepcopy(cfg) if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    node = cfg.arch.train
    overrides = to_container(node)                                   # resolved: to check
    raw = OmegaConf.to_container(node, resolve=False) if isinstance(node, DictConfig) else node
    with open_dict(cfg):
        cfg.arch.pop("train")
    if overrides is None:  # an empty `train:` block
        return cfg
    _check(merge_over(TrainConfig(), to_container(cfg.train), "train"), overrides)
    with open_dict(cfg):
        for key, value in raw.items():
            cfg.train[key] = value
    return cfg
