"""Fault injection through the apps (issue 10): every case that once lost, corrupted or
silently reused data, reproduced end to end with tiny sizes and asserted fixed - the row, the
message, the re-measurement, the unchanged completed files.

This is the one place for faults that cross modules (an app, its sweep, its results folder,
its checkpoints). A fault of one module is tested in that module's file: test_sweep.py,
test_claims.py, test_atomic.py, test_collect.py, test_fingerprint.py, test_checkpoints.py,
test_prechecks.py (checks before compute); see tests/README.md."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import cost, extrapolate
from harness.results import ResultStore, load_rows, make_row, point_files
from harness.train import CheckpointError, load_checkpoint

from tests.apps import COST_SMOKE, EXTRAP_SMOKE, cli, compose
from tests.paths import ROOT


def _sums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in point_files(folder)}


# --- 1. memory caps / time budgets: restored after each job, part of the key -------------

@pytest.mark.slow
def test_memory_cap_does_not_leak_into_the_next_job_and_is_in_the_key(tmp_path):
    res = tmp_path / "res"
    args = ["-m", "arch=transformer_math", *COST_SMOKE, "bench.seq_lens=[4096]", "bench.modes=[forward]",
            "bench.cpu_memory_limit_gb=0.4,null", f"results_dir={res}", f"hydra.sweep.dir={tmp_path / 'mr'}"]
    out, _ = cli("cost", args, tmp_path).communicate(timeout=240)
    df = load_rows(res)
    by_cap = {(None if pd.isna(c) else c): s for c, s in zip(df["cpu_memory_limit_gb"], df["status"])}
    assert by_cap == {0.4: "oom", None: "ok"}, out[-3000:]
    assert df["point_key"].nunique() == 2  # the cap is part of the resume key
    before = _sums(res)
    # Without force, the uncapped request reuses the uncapped row only (nothing re-measured).
    out, _ = cli("cost", args[1:7] + ["bench.cpu_memory_limit_gb=null", f"results_dir={res}"],
                  tmp_path).communicate(timeout=240)
    assert _sums(res) == before, out[-2000:]


@pytest.mark.slow
def test_limits_are_restored_after_run(tmp_path):
    import resource

    before = resource.getrlimit(resource.RLIMIT_DATA)
    cfg = compose("cost", *COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "bench.modes=[forward]",
                  "bench.seq_lens=[16]", "bench.cpu_memory_limit_gb=64", "bench.threads=1")
    threads = torch.get_num_threads()
    cost.run(cfg)
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    assert torch.get_num_threads() == threads


@pytest.mark.slow
def test_time_budget_is_in_the_key(tmp_path):
    base = [*COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "bench.modes=[forward]", "bench.seq_lens=[16]"]
    cost.run(compose("cost", *base, "bench.time_budget_s=1e-6"))
    df = cost.run(compose("cost", *base))
    assert sorted(df["status"]) == ["ok", "timeout"]  # the generous budget measured again


@pytest.mark.slow
def test_compile_allowance_is_in_the_key_where_it_can_matter(tmp_path):
    """With two warm-up calls the allowance can turn a timeout into a row (GPU presets); with
    one it cannot, and CPU keys stay as they were."""
    base = [*COST_SMOKE, "arch=lstm", "bench.modes=[forward]", "bench.seq_lens=[16]"]
    for warmup, points in ((2, 2), (1, 1)):
        out = tmp_path / f"warmup{warmup}"
        for allowance in (0, 300):
            df = cost.run(compose("cost", *base, f"results_dir={out}", f"bench.warmup={warmup}",
                                  f"bench.compile_allowance_s={allowance}"))
        assert df["point_key"].nunique() == points, warmup
        assert (df["first_call_ms"] > 0).all()


# --- 2. corrupt / truncated point files ---------------------------------------------------

@pytest.mark.slow
def test_corrupt_point_files_are_moved_aside_and_remeasured(tmp_path, caplog):
    args = [*COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "bench.modes=[forward]",
            "bench.seq_lens=[16,24,32]"]
    cost.run(compose("cost", *args))
    files = point_files(tmp_path)
    assert len(files) == 3
    truncated, garbage, intact = files
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbage.write_bytes(b"\x00\xff\xfe binary garbage")
    intact_sum = hashlib.sha256(intact.read_bytes()).hexdigest()
    with pytest.warns(RuntimeWarning, match="corrupt result file"):
        df = cost.run(compose("cost", *args))
    assert len(df) == 3 and set(df["status"]) == {"ok"}
    assert hashlib.sha256(intact.read_bytes()).hexdigest() == intact_sum  # not re-measured
    for bad in (truncated, garbage):
        assert bad.exists() and json.loads(bad.read_text())["status"] == "ok"  # re-measured
        assert bad.with_name(bad.name + ".corrupt").exists()
    assert truncated.name in caplog.text and garbage.name in caplog.text


# --- 3. training OOM / error -> rows --------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind,status", [("oom", "oom"), ("error", "error")])
def test_training_failure_becomes_a_row_for_every_eval_length(tmp_path, failing_arch, kind, status):
    cfg = compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1", f"results_dir={tmp_path}",
                  f"checkpoint_dir={tmp_path / 'ck'}", "eval.seq_lens=[32,64,128]")
    cfg.arch = {"name": failing_arch, "fail_at": 8, "kind": kind}
    df = extrapolate.run(cfg)
    assert sorted(df["eval_seq_len"]) == [32, 64, 128]
    assert set(df["status"]) == {status} and set(df["train_status"]) == {status}
    assert all(r.startswith(f"training {status}:") for r in df["reason"])
    # ... and the sweep goes on: the next architecture trains and evaluates.
    cfg.arch = {"name": "lstm"}
    assert set(extrapolate.run(cfg)["status"]) == {"ok"}


# --- 4. collect / plot validate rows ---------------------------------------------------------

def _bad_results(folder: Path) -> dict[str, str]:
    store = ResultStore(folder)
    good = make_row(arch="a", mode="forward", seq_len=16, env={})
    store.write(good, "good")
    (folder / "garbage.jsonl").write_bytes(b"\x89PNG\x00\xff")
    (folder / "list.jsonl").write_text("[1, 2, 3]\n")
    (folder / "status.jsonl").write_text(json.dumps({**good, "status": "weird"}) + "\n")
    (folder / "nocore.jsonl").write_text(json.dumps({"arch": "a", "mode": "x", "status": "ok"}) + "\n")
    return {"garbage.jsonl": "not UTF-8", "list.jsonl:1": "not a JSON object", "status.jsonl:1": "weird",
            "nocore.jsonl:1": "core column"}


@pytest.mark.slow
def test_collect_and_plot_reject_bad_rows_by_file_and_line(tmp_path):
    expected = _bad_results(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for app in ("collect", "plot"):
        proc = subprocess.run([sys.executable, "-m", f"harness.report.{app}", str(tmp_path)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        for where, why in expected.items():
            assert re.search(re.escape(where) + r".*" + why, proc.stderr), (app, where, proc.stderr)
    assert len(pd.read_csv(tmp_path / "results.csv")) == 1
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 1
    assert "Status counts" in (tmp_path / "report.md").read_text()


# --- 5. checks before compute ---------------------------------------------------------------

def test_plus_added_unknown_key_is_rejected(tmp_path):
    cfg = compose("cost", *COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "+bench.seq_lenz=[999]")
    with pytest.raises(ValueError, match=r"bench\.seq_lenz.*did you mean bench\.seq_lens"):
        cost.run(cfg)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_results_dir_that_is_a_file_and_bad_device_fail_clearly(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="results_dir=.* is a file"):
        cost.run(compose("cost", *COST_SMOKE, f"results_dir={a_file}", "arch=lstm"))
    with pytest.raises(ValueError, match="cannot be written"):
        cost.run(compose("cost", *COST_SMOKE, f"results_dir={a_file / 'sub'}", "arch=lstm"))
    with pytest.raises(ValueError, match="device='tpu'.*use device=auto"):
        cost.run(compose("cost", *COST_SMOKE, f"results_dir={tmp_path / 'r'}", "arch=lstm", "device=tpu"))


def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path, monkeypatch):
    a_file = tmp_path / "ck"
    a_file.write_text("x")
    monkeypatch.setattr(extrapolate, "train", lambda *a, **k: pytest.fail("trained before the check"))
    cfg = compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1", f"results_dir={tmp_path / 'r'}",
                  f"checkpoint_dir={a_file}", "arch=lstm")
    with pytest.raises(ValueError, match="checkpoint_dir=.* is a file"):
        extrapolate.run(cfg)


@pytest.mark.slow
def test_truncated_checkpoint_names_file_and_force(tmp_path):
    cfg = compose("extrapolate", *EXTRAP_SMOKE, "model.n_layers=1", f"results_dir={tmp_path / 'r'}",
                  f"checkpoint_dir={tmp_path / 'ck'}", "arch=lstm", "eval.seq_lens=[32]")
    extrapolate.run(cfg)
    (ckpt,) = (tmp_path / "ck").glob("*.pt")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    cfg.eval.seq_lens = [64]  # a new length: the checkpoint is loaded
    with pytest.raises(CheckpointError) as info:
        extrapolate.run(cfg)
    assert str(ckpt) in str(info.value) and "force=true" in str(info.value)
    assert "weights_only" not in str(info.value)
    model = torch.nn.Linear(2, 2)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="force=true"):
        load_checkpoint(model, ckpt)


# --- 6. concurrent sweeps split the work via claims -----------------------------------------

@pytest.mark.slow
def test_two_sweeps_into_one_folder_measure_every_point_once(tmp_path):
    res = tmp_path / "res"
    args = [*COST_SMOKE, f"results_dir={res}", "arch=lstm", "bench.modes=[forward,decode]",
            "bench.seq_lens=[16,24,32,40,48,56]", "bench.min_run_time=0.2"]
    procs = [cli("cost", args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    measured = [re.findall(r"\[harness\.sweep\]\[INFO\] - (\w+ L=\d+): ok", out) for out in outs]
    everything = measured[0] + measured[1]
    assert sorted(everything) == sorted(set(everything)) and len(everything) == 12, outs
    assert all(measured), "both processes should have done part of the work"
    assert len(load_rows(res)) == 12 and not (res / ".claims").exists()


# --- SIGTERM / SIGUSR2: the point in flight -> timeout row, the rest re-measured ---------------

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_stop_signal_writes_a_timeout_row_and_a_rerun_completes(tmp_path, sig):
    res = tmp_path / "res"
    args = [*COST_SMOKE, f"results_dir={res}", "arch=lstm", "bench.modes=[forward]",
            "bench.seq_lens=[16,24,32,40]", "bench.min_run_time=1.0", "bench.warmup=1"]
    proc = cli("cost", args, tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not list(res.glob("*.jsonl")):
        time.sleep(0.05)
    time.sleep(0.4)  # well inside the next point's 1 s of timing
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, out[-3000:]
    rows = load_rows(res)
    cut = rows[rows["status"] == "timeout"]
    assert len(cut) == 1 and signal.Signals(sig).name in cut["reason"].iloc[0], out[-3000:]
    assert len(rows) < 4 and not (res / ".claims").exists()  # the rest: unclaimed, no rows
    if sig == signal.SIGUSR2:
        return  # the re-run is the same for both signals
    out, _ = cli("cost", args, tmp_path).communicate(timeout=240)
    rows = load_rows(res)
    assert len(rows) == 4 and set(rows["status"]) == {"ok"} and rows["point_key"].is_unique, out[-3000:]


# --- figures are declared by the experiment, not guessed ------------------------------------

@pytest.mark.slow
def test_declared_figures_are_recorded_and_drawn(tmp_path):
    from harness.report.plot import cost_figures, declared_figures

    cfg = compose("cost", *COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "bench.modes=[forward,decode]",
                  "bench.seq_lens=[16,32]", "figures=[time_vs_length]")
    df = cost.run(cfg)
    assert declared_figures(df) == {"time_vs_length"}
    assert list(cost_figures(df)) == ["time_vs_length"]
    assert {"time_vs_length", "decode_vs_context"} <= set(cost_figures(df.drop(columns="figures")))
    with pytest.raises(ValueError, match="unknown figure"):
        cost.run(compose("cost", *COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "figures=[nope]"))


