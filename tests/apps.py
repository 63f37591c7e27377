"""Running the Hydra apps from tests - the one place for it (import from here, never copy):

* ``compose(app, *overrides)`` - the app's config as its command line would compose it,
  in-process (``app`` is a primary config of conf/: "cost" or "extrapolate");
* ``cli(app, args, cwd)`` - ``python -m harness.<app> ARGS`` as a subprocess;
* ``COST_SMOKE`` / ``EXTRAP_SMOKE`` - the overrides that make each app a seconds-long run;
* ``run_cost(results_dir, *overrides)`` / ``run_extrapolate(tmp_path, *overrides)`` - compose
  with the smoke preset and run in-process: the rows (``arch=``: a dict in place of the
  ``arch`` node, for architectures registered by the test itself).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from harness.config import compose as config_compose
from tests.paths import ROOT

# conf/bench/smoke.yaml's lengths and modes, a model of ~20k parameters, no progress bars
COST_SMOKE = ["bench=smoke", "progress=false", "model.target_params=20000"]
# conf/train/smoke.yaml's few steps, conf/eval/smoke.yaml's two lengths, width 16
EXTRAP_SMOKE = ["train=smoke", "eval=smoke", "progress=false", "model.d_model=16"]


def compose(app: str, *overrides: str, hydra_config: bool = False) -> DictConfig:
    """The app's config as the command line would compose it (``harness.config.compose``;
    ``hydra_config``: with the ``hydra`` node, for launcher and sweeper settings, after the
    launcher set-up the apps' ``main()`` does)."""
    if hydra_config:
        from harness.cluster import prepare_launchers
        prepare_launchers()
    return config_compose(app, overrides, return_hydra_config=hydra_config)


def cli(app: str, args, cwd, **popen) -> subprocess.Popen:
    """``python -m harness.<app> ARGS`` in ``cwd``, stdout and stderr together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen([sys.executable, "-m", f"harness.{app}", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def run_cost(results_dir: Path, *overrides: str, arch: dict | None = None) -> pd.DataFrame:
    """``harness.cost`` on the smoke preset, its rows written to ``results_dir``."""
    from harness import cost

    cfg = compose("cost", *COST_SMOKE, f"results_dir={results_dir}", *overrides)
    if arch is not None:
        cfg.arch = arch
    return cost.run(cfg)


def run_extrapolate(tmp_path: Path, *overrides: str, arch: dict | None = None) -> pd.DataFrame:
    """``harness.extrapolate`` on the smoke preset: rows in ``tmp_path/res``, checkpoints in
    ``tmp_path/ckpt`` (an override can move either)."""
    from harness import extrapolate

    cfg = compose("extrapolate", *EXTRAP_SMOKE, f"results_dir={tmp_path / 'res'}",
                  f"checkpoint_dir={tmp_path / 'ckpt'}", *overrides)
    if arch is not None:
        cfg.arch = arch
    return extrapolate.run(cfg)
