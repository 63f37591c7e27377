"""Sweeps through a real SLURM (``hydra/launcher=slurm_cpu``): every point once, time limits
and cancellations become data, extrapolation runs too, array tasks split the work.

Needs a running cluster (``scripts/slurm-local.sh start``; ``.ci/run`` starts one) - the
tests skip with the reason otherwise. On a cluster without accounting (the local one),
submitit cannot see a job that SLURM killed or cancelled (no ``sacct``), so the tests that
end jobs that way wait for the job to leave the queue and then stop the Hydra process
themselves, as a user would press Ctrl-C before re-running.
"""
from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from harness.report.collect import collect
from harness.results import load_rows
from tests.apps import COST_SMOKE, EXTRAP_SMOKE, cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]  # real jobs: minutes, not seconds

COST_FORWARD = [*COST_SMOKE, "bench.modes=[forward]"]


def _launcher(name: str, sweep_dir: Path, timeout_min: int = 5) -> list[str]:
    # One CPU and 1 GB per job: both cores of a 2-core node run an array task each.
    return ["-m", "hydra/launcher=slurm_cpu", f"hydra.launcher.name={name}",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
            f"hydra.launcher.timeout_min={timeout_min}", f"hydra.sweep.dir={sweep_dir}"]


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the sweep did not finish within {timeout:.0f} s:\n{out[-3000:]}")
    return out


def _queued(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", f"--name={name}", "-o", "%i %T"], capture_output=True, text=True,
                         timeout=30)
    return out.stdout.split("\n") if out.stdout.strip() else []


def _wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> str:
    """Stop the Hydra process (it cannot learn that SLURM ended its job without sacct)."""
    if proc.poll() is None:
        proc.terminate()
    out, _ = proc.communicate(timeout=60)
    return out


def _array_tasks(sweep: Path) -> list[str]:
    """The SLURM array tasks that ran (submitit names their folders <job id>_<task id>)."""
    return [p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name)]


def _point_files(results: Path) -> list[Path]:
    return [p for p in results.rglob("*.jsonl") if not any(part.startswith(".") for part in p.parts)] \
        if results.exists() else []


def test_cost_sweep_returns_every_point_exactly_once(tmp_path, job_name):
    results, sweep = tmp_path / "res", tmp_path / "mr"
    args = [*_launcher(job_name, sweep), *COST_FORWARD, "arch=lstm,mamba", "bench.seq_lens=[32,64]",
            f"results_dir={results}"]
    out = _finish(cli("cost", args, tmp_path), timeout=180)
    df = load_rows(results)
    points = Counter(zip(df["arch"], df["mode"], df["seq_len"]))
    assert points == {(a, "forward", n): 1 for a in ("lstm", "mamba") for n in (32, 64)}, out[-3000:]
    assert (df["status"] == "ok").all() and df["point_key"].is_unique
    # Two SLURM array tasks of one job ran them (submitit's folders are named by SLURM job id).
    tasks = _array_tasks(sweep)
    assert len(tasks) == 2 and len({t.split("_")[0] for t in tasks}) == 1, tasks
    assert "Bypassing sacct error" not in out  # harness.cluster keeps submitit quiet without accounting
    # harness.report.collect merges the one results_dir.
    parquet, _, n = collect(results, tmp_path / "merged")
    assert n == 4 and len(pd.read_parquet(parquet)) == 4


def test_job_over_its_time_limit_becomes_timeout_rows(tmp_path, job_name):
    # One point that keeps timing for 5 minutes under a 1-minute SLURM limit (the shortest
    # SLURM has). signal_delay_s=0: no early SIGUSR2 (SLURM may send it up to a minute
    # early, i.e. before the point starts), so the point is cut by SLURM's SIGTERM at the
    # limit (the local cluster's KillWait=5 s, OverTimeLimit=0) - and must be a timeout row.
    results, sweep = tmp_path / "res", tmp_path / "mr"
    args = [*_launcher(job_name, sweep, timeout_min=1), "hydra.launcher.signal_delay_s=0", *COST_FORWARD,
            "arch=lstm", "bench.seq_lens=[32]", "bench.min_run_time=300", "bench.time_budget_s=600",
            f"results_dir={results}"]
    proc = cli("cost", args, tmp_path)
    _wait_until(lambda: _queued(job_name), 60, "the job to be queued")
    _wait_until(lambda: not _queued(job_name) or proc.poll() is not None, 180, "SLURM to end the job")
    out = _stop(proc)
    df = load_rows(results)
    assert len(df) == 1, f"the point in flight should be one row:\n{out[-3000:]}"
    row = df.iloc[0]
    assert row["status"] == "timeout" and row["seq_len"] == 32, row.to_dict()
    assert "SIGTERM" in str(row["reason"]), row["reason"]


def test_scancel_mid_sweep_then_rerun_completes_without_duplicates(tmp_path, job_name):
    results, sweep = tmp_path / "res", tmp_path / "mr"
    lengths = [16, 24, 32, 40, 48, 56, 64, 72]
    args = [*_launcher(job_name, sweep), *COST_FORWARD, "arch=lstm",
            f"bench.seq_lens=[{','.join(map(str, lengths))}]", "bench.min_run_time=0.5", f"results_dir={results}"]
    proc = cli("cost", args, tmp_path)
    _wait_until(lambda: len(_point_files(results)) >= 2 or proc.poll() is not None, 120, "two measured points")
    subprocess.run(["scancel", f"--name={job_name}"], check=True, timeout=30)
    _wait_until(lambda: not _queued(job_name), 60, "the cancelled job to leave the queue")
    out = _stop(proc)
    done = len(load_rows(results).query("status == 'ok'"))
    assert 2 <= done < len(lengths), f"the cancel should land mid-sweep ({done} done):\n{out[-2000:]}"

    out = _finish(cli("cost", args, tmp_path), timeout=180)  # the same command again
    df = load_rows(results)
    assert sorted(df["seq_len"]) == lengths, out[-3000:]
    assert df["point_key"].is_unique and (df["status"] == "ok").all(), df[["seq_len", "status", "reason"]]


def test_extrapolation_sweep_trains_and_evaluates_through_slurm(tmp_path, job_name):
    results, sweep = tmp_path / "res", tmp_path / "mr"
    args = [*_launcher(job_name, sweep), *EXTRAP_SMOKE, "arch=lstm", "train.seed=0,1",
            f"results_dir={results}", f"checkpoint_dir={tmp_path / 'ckpt'}"]
    out = _finish(cli("extrapolate", args, tmp_path), timeout=240)
    df = load_rows(results)
    assert Counter(zip(df["seed"], df["eval_seq_len"])) == {
        (s, n): 1 for s in (0, 1) for n in (32, 64)}, out[-3000:]
    assert (df["status"] == "ok").all() and df["accuracy"].between(0, 1).all()
    assert len(list((tmp_path / "ckpt").rglob("*.pt"))) == 2, "each job trains its own model"
    assert len(_array_tasks(sweep)) == 2


def test_two_array_tasks_never_measure_the_same_point(tmp_path, job_name):
    # Two array tasks with the same points (progress does not enter a point's key) run at
    # once on the two cores; claims must give each point to exactly one of them.
    results, sweep = tmp_path / "res", tmp_path / "mr"
    lengths = [16, 24, 32, 40]
    args = [*_launcher(job_name, sweep), *COST_FORWARD, "arch=lstm", "progress=false,true",
            f"bench.seq_lens=[{','.join(map(str, lengths))}]", "bench.min_run_time=1", f"results_dir={results}"]
    out = _finish(cli("cost", args, tmp_path), timeout=180)
    df = load_rows(results)
    assert sorted(df["seq_len"]) == lengths and df["point_key"].is_unique, out[-3000:]
    # Every job logs each point it measured ("... forward L=32: ok"): across both, once per point.
    measured = Counter()
    for log in sweep.glob("*/cost.log"):
        measured.update(int(n) for n in re.findall(r"forward L=(\d+): \w+", log.read_text()))
    assert len(list(sweep.glob("*/cost.log"))) == 2, "both array tasks should have run"
    assert measured == {n: 1 for n in lengths}, measured


def test_a_job_that_can_never_start_stops_the_sweep_with_the_fix(tmp_path, job_name):
    # slurm_cpu asks 4 CPUs per task; the local node has 2: the array would sit PENDING
    # (Reason=PartitionConfig) forever. The sweep must stop, say why, and cancel the array.
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0])
    if cpus >= 4:
        pytest.skip(f"the node has {cpus} CPUs: slurm_cpu's 4 CPUs fit")
    args = ["-m", "hydra/launcher=slurm_cpu", f"hydra.launcher.name={job_name}", f"hydra.sweep.dir={tmp_path / 'mr'}",
            *COST_FORWARD, "arch=lstm,mamba", "bench.seq_lens=[32]", f"results_dir={tmp_path / 'res'}"]
    out = _finish(cli("cost", args, tmp_path), timeout=120)
    for part in ("Reason=PartitionConfig", "asks 4 CPUs", f"at most {cpus} CPUs",
                 f"hydra.launcher.cpus_per_task={cpus}", "was cancelled"):
        assert part in out, (part, out[-3000:])
    _wait_until(lambda: not _queued(job_name), 30, "the hopeless array to leave the queue")
