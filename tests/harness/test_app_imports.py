"""Importing an app changes nothing in the process; its ``main()`` sets up what Hydra needs.

A library user (a notebook, the probe, another app) imports ``harness.cost`` or
``harness.extrapolate`` for ``run``; that import must not register configs, patch submitit,
add logging filters or resolvers, or set environment variables - only the command line does.
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

from harness import probe
from harness.fingerprint import _imported_modules
from tests.paths import ROOT

_SCRIPT = textwrap.dedent("""
    import copyreg, json, logging, os, sys
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    def paths(node, prefix=""):
        out = []
        for key, value in node.items():
            out += paths(value, f"{prefix}{key}/") if isinstance(value, dict) else [prefix + key]
        return out

    def loggers():  # the root logger, the project's and submitit's (libraries set up their own)
        found = {"": logging.getLogger()} | {n: l for n, l in logging.root.manager.loggerDict.items()
                                            if isinstance(l, logging.Logger)
                                            and n.split(".")[0] in ("harness", "archs", "submitit", "hydra")}
        return {n: [l.level, len(l.filters), len(l.handlers)] for n, l in found.items()}

    def slurm_done_patched():
        try:
            from submitit.slurm.slurm import SlurmJob
        except ImportError:
            return False
        return bool(getattr(SlurmJob.done, "_watches_pending", False))

    def state():
        return {"environ": dict(os.environ), "configs": sorted(paths(ConfigStore.instance().repo)),
                "pickle_reducers": sorted(map(str, copyreg.dispatch_table)),
                "resolver": OmegaConf.has_resolver("archbench_missing_extra"),
                "slurm_done_patched": slurm_done_patched(), "loggers": loggers()}

    import torch, pandas  # noqa: E401,F401 - what third-party imports do is theirs, not the apps'
    before = state()
    import harness.cost, harness.extrapolate, harness.probe  # noqa: E401
    after = state()
    changed = {k: [before[k], after[k]] for k in before if k != "loggers" and before[k] != after[k]}
    set_up = {n: v for n, v in after["loggers"].items() if v != before["loggers"].get(n, [0, 0, 0])}
    if set_up:  # a level, a filter or a handler put on a logger
        changed["loggers"] = set_up
    # What main() sets up, run without launching anything (--cfg job prints the config).
    sys.argv = ["harness.cost", "--cfg", "job", "bench=smoke"]
    harness.cost.main()
    print("STATE " + json.dumps({"changed_by_import": changed,
                                 "cost_schema_after_main": "cost_schema.yaml" in ConfigStore.instance().repo,
                                 "submitit_filtered_after_main": bool(logging.getLogger("submitit").filters)}))
""")


def test_importing_the_apps_has_no_side_effects_and_main_sets_up():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("STATE ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-3000:]
    state = json.loads(line.removeprefix("STATE "))
    assert state["changed_by_import"] == {}, state["changed_by_import"]
    assert state["cost_schema_after_main"] and state["submitit_filtered_after_main"], state


def test_the_probe_does_not_import_the_extrapolation_app():
    """It rebuilds a run's model through harness.training_run, the piece both share."""
    imported = _imported_modules(probe, inspect.getsource(probe))
    assert "harness.training_run" in imported
    assert not any(name == "harness.extrapolate" or name.startswith("harness.extrapolate.")
                   for name in imported), sorted(imported)
