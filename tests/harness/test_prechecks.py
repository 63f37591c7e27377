"""Checks before compute, and messages (issue 24): settings that cannot work are refused
before any training or measurement, naming the key and the fix; failures outside the
harness (a missing extra, a SLURM job that can never start) say what to do."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from harness import cluster, cost, extrapolate
from harness.checks import data_memory_bytes
from tests.apps import COST_SMOKE, EXTRAP_SMOKE, cli, compose
from tests.paths import ROOT


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(extrapolate, "train", lambda *a, **k: pytest.fail("trained before the check"))


@pytest.mark.slow
def test_a_vocab_smaller_than_the_tasks_is_refused_before_training(tmp_path, no_training):
    cfg = compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1", f"results_dir={tmp_path}", "arch=lstm",
                  "model.vocab_size=4")
    with pytest.raises(ValueError, match=r"model.vocab_size=4 is smaller than the vocabulary of task"):
        extrapolate.run(cfg)
    assert not list(tmp_path.rglob("*.jsonl"))


def test_trigger_distances_that_fit_no_length_are_refused(tmp_path, no_training):
    cfg = compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1", f"results_dir={tmp_path}", "arch=lstm",
                  "eval.seq_lens=[32,64]", "eval.trigger_distances=[8,500]")
    with pytest.raises(ValueError, match=r"eval.trigger_distances 500 .* fit in no evaluation length"):
        extrapolate.run(cfg)


@pytest.mark.slow
def test_an_empty_results_dir_is_refused_and_nothing_lands_here(tmp_path):
    with pytest.raises(ValueError, match="results_dir is empty"):
        cost.run(compose("cost", *COST_SMOKE, "results_dir=", "arch=lstm"))
    args = [*COST_SMOKE, "arch=lstm", "bench.modes=[forward]", "bench.seq_lens=[16]", "results_dir="]
    proc = cli("cost", args, tmp_path)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "results_dir is empty" in out, out[-2000:]
    assert not list(tmp_path.rglob("*.jsonl"))


@pytest.mark.slow
def test_a_memory_cap_below_what_the_process_uses_is_refused(tmp_path, no_training):
    used_gb = data_memory_bytes() / 2**30
    cfg = compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1", f"results_dir={tmp_path}", "arch=lstm",
                  f"eval.cpu_memory_limit_gb={used_gb / 2:.3f}")
    with pytest.raises(ValueError, match=r"eval.cpu_memory_limit_gb: .* below what this process already uses"):
        extrapolate.run(cfg)
    with pytest.raises(ValueError, match=r"bench.cpu_memory_limit_gb: .* already uses"):
        cost.run(compose("cost", *COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm",
                         f"bench.cpu_memory_limit_gb={used_gb / 2:.3f}"))


_BUILD_UNDER_A_TIGHT_CAP = textwrap.dedent("""
    import sys
    from harness import cost
    from harness.allocator import release_freed_memory
    from harness.checks import data_memory_bytes
    from tests.apps import COST_SMOKE, compose
    release_freed_memory()
    cap = (data_memory_bytes() + 48 * 2**20) / 2**30
    cfg = compose("cost", *COST_SMOKE, f"results_dir={sys.argv[1]}", "arch=lstm",
                  "model.target_params=30000000", f"bench.cpu_memory_limit_gb={cap:.3f}")
    try:
        cost.run(cfg)
    except ValueError as exc:
        print("REFUSED:", exc)
    else:
        print("BUILT")
""")


@pytest.mark.slow
def test_a_model_that_cannot_be_built_under_the_cap_says_so(tmp_path):
    """Room for the process, not for a 30M-parameter model (120 MB of weights). In a fresh
    interpreter: in this one, free heap kept by earlier tests (harness/allocator.py) can hold
    the model inside the cap, and a oneDNN LSTM that then fails under the cap stays broken for
    every later test of the process."""
    proc = subprocess.run([sys.executable, "-c", _BUILD_UNDER_A_TIGHT_CAP, str(tmp_path)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert "REFUSED: " in proc.stdout and "building the model ran out of memory under this cap" in proc.stdout, \
        proc.stdout[-2000:] + proc.stderr[-2000:]


# --- a launcher whose extra is missing --------------------------------------------------------

_WITHOUT_CLUSTER_EXTRA = textwrap.dedent("""
    import pkgutil, runpy, sys
    HIDDEN = ("hydra_plugins.hydra_submitit_launcher", "hydra_plugins.hydra_joblib_launcher", "submitit")

    class Hide:  # as if `pip install archbench[cluster]` had not been run
        def find_spec(self, name, path=None, target=None):
            if name.startswith(HIDDEN):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, Hide())
    walk = pkgutil.walk_packages
    pkgutil.walk_packages = lambda *a, **k: (m for m in walk(*a, **k) if not m.name.startswith(HIDDEN))
    sys.argv = ["harness.cost", *sys.argv[1:]]
    runpy.run_module("harness.cost", run_name="__main__", alter_sys=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["slurm_cpu", "joblib"])
def test_a_launcher_without_the_cluster_extra_names_the_extra(tmp_path, launcher):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _WITHOUT_CLUSTER_EXTRA, "-m", f"hydra/launcher={launcher}",
                           *COST_SMOKE, "arch=lstm", f"results_dir={tmp_path / 'r'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "pip install 'archbench[cluster]'" in out, out[-3000:]
    assert not (tmp_path / "r").exists()


# --- a SLURM job that can never start ---------------------------------------------------------

def _fake_slurm(monkeypatch, reason: str) -> list[tuple[str, ...]]:
    """SLURM client commands answering like a 2-CPU, 3.9 GB node whose array 42 asks 4 CPUs, 8 GB."""
    calls: list[tuple[str, ...]] = []
    answers = {
        "squeue": f"PENDING|{reason}\nPENDING|{reason}\n",
        "scontrol show job": ("JobId=42 ArrayJobId=42 JobState=PENDING Reason=PartitionConfig Partition=debug "
                              "NumNodes=1 NumCPUs=4 MinCPUsNode=4 MinMemoryNode=8G TimeLimit=01:00:00\n"),
        "scontrol show partition": "PartitionName=debug MaxNodes=UNLIMITED MaxTime=UNLIMITED State=UP\n",
        "sinfo": "2|3900\n", "scancel": ""}

    def slurm(*command: str) -> str:
        calls.append(command)
        return next(text for prefix, text in answers.items() if " ".join(command).startswith(prefix))

    monkeypatch.setattr(cluster, "_slurm", slurm)
    return calls


def test_a_job_array_that_can_never_start_is_cancelled_with_the_request_and_limits(monkeypatch):
    calls = _fake_slurm(monkeypatch, "PartitionConfig")
    with pytest.raises(cluster.SlurmJobCannotStart) as info:
        cluster.PendingWatch().check("42_1")
    message = str(info.value)
    for part in ("Reason=PartitionConfig", "asks 4 CPUs, 8G memory", "at most 2 CPUs and 3900 MB",
                 "hydra.launcher.cpus_per_task=2", "hydra.launcher.mem_gb=3", "partition 'debug'"):
        assert part in message, (part, message)
    assert ("scancel", "42") in calls


@pytest.mark.parametrize("reason", ["Resources", "Priority", "JobArrayTaskLimit", "None"])
def test_a_job_waiting_for_resources_is_waited_for(monkeypatch, reason):
    calls = _fake_slurm(monkeypatch, reason)
    watch = cluster.PendingWatch()
    watch.check("42_0")
    watch.check("42_1")  # the same array, asked again within PENDING_CHECK_S: not re-queried
    assert [c[0] for c in calls] == ["squeue"]
