"""The cost sweep app: composition, rows, failures as rows, resume, kill-and-resume,
max_len search, multirun (glob and submitit_local), and bad overrides."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from harness import cost
from harness.results import CORE_COLUMNS, load_rows

from tests.apps import COST_SMOKE, cli, compose, run_cost
from tests.configs import assert_option_applied, group_options  # noqa: E402
from tests.paths import ROOT  # noqa: E402

FIXED_WIDTH = ["model.match=width", "model.d_model=4"]


# --- composition -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("bench", group_options("bench"))
def test_every_bench_preset_composes_and_validates(bench):
    from harness.checks import validate_bench
    raw = compose("cost", f"bench={bench}")
    assert_option_applied(raw.bench, ROOT / "conf" / "bench" / f"{bench}.yaml")
    validate_bench(cost._as_schema(raw).bench)


# --- measuring ---------------------------------------------------------------------------

@pytest.mark.slow
def test_sweep_rows_have_the_stable_core(tmp_path):
    df = run_cost(tmp_path, "arch=lstm")
    assert list(df.columns[: len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
    assert len(df) == 6 and set(df["status"]) == {"ok"}
    assert set(df["mode"]) == {"forward", "train_step", "decode"}
    assert (df["time_ms"] > 0).all() and (df["tokens_per_s"] > 0).all()
    assert (df["time_ms_p10"] <= df["time_ms"]).all() and (df["time_ms"] <= df["time_ms_p90"]).all()
    assert df["params"].nunique() == 1 and abs(df["params"].iloc[0] - 20000) / 20000 < 0.1
    assert df["state_bytes"].nunique() == 1  # LSTM state is constant in context length
    assert (df["flops_analytic"] > 0).all() and (df["peak_mem_bytes"] >= 0).all()
    for col in ("env.torch", "env.git_commit", "config_hash", "timestamp", "arch.d_model"):
        assert col in df.columns


@pytest.mark.slow
def test_attention_state_grows_with_context(tmp_path):
    df = run_cost(tmp_path, "arch=transformer", "bench.modes=[decode]")
    by_len = df.set_index("seq_len")["state_bytes"]
    assert by_len[64] > by_len[32]


@pytest.mark.slow
def test_oom_becomes_a_row_and_longer_lengths_are_skipped(tmp_path, failing_arch):
    df = run_cost(tmp_path, "bench.seq_lens=[32,64,128]", "bench.modes=[forward]", *FIXED_WIDTH,
                  arch={"name": failing_arch, "fail_at": 64, "kind": "oom"})
    status = df.set_index("seq_len")["status"].to_dict()
    assert status == {32: "ok", 64: "oom", 128: "skipped"}
    reasons = df.set_index("seq_len")["reason"]
    assert "out of memory" in reasons[64] and "oom at seq_len=64" in reasons[128]


@pytest.mark.slow
def test_error_becomes_a_row_and_the_sweep_goes_on(tmp_path, failing_arch):
    df = run_cost(tmp_path, "bench.seq_lens=[32,64,128]", "bench.modes=[forward,train_step]", *FIXED_WIDTH,
                  arch={"name": failing_arch, "fail_at": 64, "kind": "error"})
    assert len(df) == 6
    errors = df[df["status"] == "error"]
    # an error is not a capacity limit: longer lengths are still attempted
    assert set(errors["seq_len"]) == {64, 128} and "simulated kernel failure" in errors["reason"].iloc[0]


@pytest.mark.slow
def test_point_over_its_time_budget_is_a_timeout(tmp_path):
    df = run_cost(tmp_path, "arch=lstm", "bench.modes=[train_step]", "bench.time_budget_s=1e-6",
                  "bench.warmup=1")
    assert set(df["status"]) <= {"timeout", "skipped"} and "timeout" in set(df["status"])


@pytest.mark.slow
def test_resume_skips_measured_points_unless_forced(tmp_path):
    first = run_cost(tmp_path, "arch=lstm", "bench.modes=[forward]")
    stamps = sorted(first["timestamp"])
    files = sorted(p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl"))
    again = run_cost(tmp_path, "arch=lstm", "bench.modes=[forward]")
    assert len(again) == 2 and sorted(again["timestamp"]) == stamps
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl")) == files
    run_cost(tmp_path, "arch=lstm", "bench.modes=[forward]", "force=true")
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl")) != files
    assert len(list(tmp_path.glob("*.jsonl"))) == 2  # forced points replace, never duplicate


@pytest.mark.slow
def test_max_len_search_finds_the_longest_length_within_budget(tmp_path):
    df = run_cost(tmp_path, "arch=transformer_math", "bench.search=max_len", "bench.max_len.mode=forward",
                  "bench.max_len.start=64", "bench.max_len.memory_budget_gb=0.002",
                  "bench.max_len.resolution=0.1")
    row = df.iloc[0]
    assert row["status"] == "ok" and row["mode"] == "max_len:forward"
    assert row["peak_mem_bytes"] <= 0.002 * 2**30 and row["bounded_by"] == "memory budget"
    assert row["seq_len"] < row["first_failing_len"] <= 1.1 * row["seq_len"] + 1


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("override,match", [
    ("bench.seq_lenz=[1]", "seq_lenz"),
    ("bench.batch=two", "batch"),
])
def test_typos_and_wrong_types_fail_at_composition(override, match):
    with pytest.raises(Exception, match=match):
        cost._as_schema(compose("cost", override))


@pytest.mark.parametrize("override,match", [
    ("bench.dtype=float8", "bench.dtype"),
    ("bench.seq_lens=[0,16]", "bench.seq_lens"),
    ("bench.modes=[backward]", "bench.modes"),
    ("model.match=vibes", "model.match"),
    ("model.target_params=null", "model.target_params"),
    ("+arch.n_head=4", r"unknown keyword\(s\) \['n_head'\]"),
])
def test_bad_values_fail_before_compute_naming_the_key(tmp_path, override, match):
    with pytest.raises((ValueError, TypeError), match=match):
        run_cost(tmp_path, override)
    assert not list(tmp_path.glob("*.jsonl"))


def test_unknown_arch_config_lists_the_options():
    with pytest.raises(Exception, match="transformer"):
        compose("cost", "arch=transfomer")


# --- processes: kill-and-resume, multirun with glob, submitit ------------------------------

@pytest.mark.slow
def test_sigkill_then_rerun_measures_every_point_exactly_once(tmp_path):
    results = tmp_path / "res"
    args = [*COST_SMOKE, f"results_dir={results}", "arch=lstm", "bench.seq_lens=[16,24,32,40,48,56]"]
    proc = cli("cost", args, tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(results.glob("*.jsonl"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(results.glob("*.jsonl")))
    assert 0 < done_before < 18, "the kill should land mid-sweep"
    out, _ = cli("cost", args, tmp_path).communicate(timeout=240)
    df = load_rows(results)
    assert len(df) == 18 and df["point_key"].is_unique, out[-2000:]
    assert not [p for p in results.iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.slow
def test_multirun_glob_over_arch_configs(tmp_path):
    results = tmp_path / "res"
    args = ["-m", "arch=glob(transformer_*,exclude=transformer_math)", *COST_SMOKE, f"results_dir={results}",
            "bench.modes=[forward]", "bench.seq_lens=[16]", "hydra.sweep.dir=" + str(tmp_path / "mr")]
    out, _ = cli("cost", args, tmp_path).communicate(timeout=240)
    df = load_rows(results)
    assert set(df["arch"]) == {"transformer_alibi", "transformer_learned", "transformer_nope",
                               "transformer_sinusoidal"}, out[-3000:]


@pytest.mark.slow
def test_submitit_local_launcher_runs_real_jobs_into_one_results_dir(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    results = tmp_path / "res"
    args = ["-m", "hydra/launcher=submitit_local", "arch=lstm,transformer", *COST_SMOKE,
            f"results_dir={results}", "bench.modes=[forward]", "bench.seq_lens=[16]",
            "hydra.sweep.dir=" + str(tmp_path / "mr"), "hydra.launcher.timeout_min=5"]
    out, _ = cli("cost", args, tmp_path).communicate(timeout=300)
    df = load_rows(results)
    assert set(df["arch"]) == {"lstm", "transformer"}, out[-3000:]
    assert list((tmp_path / "mr").rglob("*_submitted.pkl")), "jobs should have gone through submitit"


def test_slurm_preset_composes_one_gpu_per_job():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose("cost", "hydra/launcher=slurm_gpu", "bench=gpu", hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.nodes == 1
    assert cfg.bench.dtype == "bfloat16"


@pytest.mark.slow
def test_generate_mode_and_its_figure(tmp_path):
    df = run_cost(tmp_path, "arch=lstm", "bench.modes=[generate]", "bench.gen_tokens=4",
                  "bench.seq_lens=[16]")
    row = df.iloc[0]
    assert row["status"] == "ok" and row["gen_tokens"] == 4
    assert row["tokens_per_s"] == pytest.approx(4 / (row["time_ms"] / 1e3))
    from harness.report.plot import cost_figures
    figures = cost_figures(df)
    assert "generation_throughput" in figures and not any(k.startswith("time_vs") for k in figures)


@pytest.mark.slow
@pytest.mark.parametrize("script", ["archbench-cost", "archbench-extrapolate"])
def test_console_scripts_find_the_configs_from_any_folder(script, tmp_path):
    # Installed entry points call the app from its module, not as __main__: a relative
    # config_path resolved against the module and failed ("Primary config module 'conf'").
    import shutil
    from pathlib import Path
    exe = Path(sys.executable).with_name(script)
    if not exe.exists():
        exe = shutil.which(script)
    if exe is None:
        pytest.skip(f"{script} is not installed in this environment (pip install -e .)")
    res = subprocess.run([str(exe), "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "arch:" in res.stdout and "results_dir:" in res.stdout
