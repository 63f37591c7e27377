"""Running the Hydra apps from tests: composed configs (in-process) and the CLI (a subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys

from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from tests.paths import CONF, ROOT

SMOKE = ["bench=smoke", "progress=false", "model.target_params=20000"]
EXTRAP = ["train=smoke", "eval=smoke", "progress=false", "task=induction_heads",
          "model.d_model=16", "model.n_layers=1"]


def compose(overrides, config="cost"):
    """The app's config as the command line would compose it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config, overrides=overrides)


def cli(app, args, cwd, **popen) -> subprocess.Popen:
    """``python -m harness.<app> ARGS`` in ``cwd``, stdout and stderr together."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen([sys.executable, "-m", f"harness.{app}", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
