"""The benchmark scripts run end to end (CPU-sized) and write rows, figures and a report."""
import importlib.util

import pytest

from benchmarks import kernels
from harness.results import load_rows


def test_attention_flop_count_follows_flashattention():
    assert kernels.attention_flops(2, 1024, 16, 64, backward=False) == 4 * 2 * 1024**2 * 16 * 64 / 2
    assert kernels.attention_flops(2, 1024, 16, 64, backward=True) == 3.5 * kernels.attention_flops(
        2, 1024, 16, 64, backward=False)


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["attention", "scan_vs_attention"])
def test_kernel_suites_write_rows_and_report(tmp_path, suite):
    kernels.main([suite, "--quick", "--seq-lens", "32", "64", "--out", str(tmp_path), "--device", "cpu"])
    df = load_rows(tmp_path)
    assert set(df["status"]) == {"ok"} and set(df["seq_len"]) == {32, 64}
    assert (df["tflops"] > 0).all() and (df["flops_analytic"] > 0).all()
    if suite == "attention":
        assert {"sdpa_math", "sdpa_flash", "sdpa_auto", "attention_math"} <= set(df["arch"])
        assert "cpu_small_heads" in set(df["arch"]) or not kernels.attention_fused_cpu.kernel_available()
        assert set(df["batch"]) == {512 // 32, 512 // 64}  # batch x length held constant
    else:
        assert set(df["arch"]) == {"chunked_scan", "sdpa_attention"}
        # the chunked scan's rows say which form ran (the CPU's: one op per step)
        assert set(df.loc[df["arch"] == "chunked_scan", "scan_form"]) == {"steps"}
    assert (tmp_path / "report.md").read_text().startswith("# Kernel benchmarks")
    assert list(tmp_path.glob("*.png"))
    before = sorted(p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl"))
    kernels.main([suite, "--quick", "--seq-lens", "32", "64", "--out", str(tmp_path), "--device", "cpu"])
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl")) == before  # resumed


@pytest.mark.slow
def test_csv_benchmarks_write_rows_to_the_result_store(tmp_path):
    """linear_attention and mamba_scan write one validated row file per case (the one
    atomic writer), which load_rows reads like any sweep's rows."""
    from benchmarks import linear_attention, mamba_scan
    from harness.results import load_rows

    linear_attention.main(["--lengths", "32", "--min-run-time", "0.01", "--d-model", "64", "--heads", "2",
                           "--no-ssd", "--out", str(tmp_path / "la")])
    la = load_rows(tmp_path / "la")
    assert len(la) == 2 and "chunked" in set(la["impl"])
    assert set(la["status"]) == {"ok"} and la["time_ms"].gt(0).all() and la["seq_len"].eq(32).all()
    mamba_scan.main(["--seq-lens", "32", "--impls", "ref", "chunked", "fused", "--min-run-time", "0.01",
                     "--min-runs", "1", "--d-model", "16", "--out", str(tmp_path / "ms"),
                     "--levels", "layer", "scan"])
    ms = load_rows(tmp_path / "ms")
    assert sorted(ms["arch"]) == ["chunked", "chunked", "fused", "fused", "ref", "ref"]
    assert set(ms["status"]) == {"ok"} and ms["max_abs_err_vs_ref"].lt(1e-4).all()
    with pytest.raises(SystemExit, match="results folder"):
        mamba_scan.main(["--out", str(tmp_path / "x.csv")])


def test_mamba_scan_lm_level_runs_one_function_in_every_impl(tmp_path):
    """The whole-LM level: our LM per backend and mambapy's LM with the same weights agree on
    the logits and the embedding's gradient (the error column, against the ref backend)."""
    from benchmarks import mamba_scan
    from harness.results import load_rows

    impls = ["ref", "chunked", "fused"] + (["mambapy"] if importlib.util.find_spec("mambapy") else [])
    mamba_scan.main(["--seq-lens", "24", "--impls", *impls, "--min-run-time", "0.01", "--min-runs", "1",
                     "--d-model", "16", "--vocab", "32", "--levels", "lm", "--out", str(tmp_path / "lm")])
    rows = load_rows(tmp_path / "lm")
    assert sorted(rows["arch"]) == sorted(impls) and set(rows["status"]) == {"ok"}
    assert rows["max_abs_err_vs_ref"].lt(1e-4).all() and rows["n_layers"].eq(2).all()


@pytest.mark.slow
def test_train_throughput_writes_rows_with_the_machines_peak(tmp_path):
    """Run as its users run it, in a fresh interpreter: the apps register their config
    schemas in main(), so a script composing configs must register them itself (this
    failed only outside the test process, where nothing had registered them before)."""
    import subprocess
    import sys
    from pathlib import Path

    from harness.results import load_rows

    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--presets", "demo", "--archs",
                    "mamba", "lstm", "--min-time", "0.05", "--repeats", "1",
                    "--out", str(tmp_path / "tt"), "--label", "x", "--profile"], cwd=root, check=True,
                   capture_output=True)
    rows = load_rows(tmp_path / "tt")
    assert sorted(rows["arch"]) == ["lstm", "mamba"] and set(rows["status"]) == {"ok"}
    assert rows["steps_per_s"].gt(0).all() and rows["peak_gflops"].gt(0).all()
    assert (rows["gflops"] / rows["peak_gflops"] - rows["fraction_of_peak"]).abs().max() < 1e-9
    assert set(rows["backend_used"]) <= {"fused", "chunked"}
    # --profile: direct timers around the C kernels first, then the torch.profiler table
    if "fused" in set(rows.loc[rows["arch"] == "mamba", "backend_used"]):
        text = (tmp_path / "tt" / "profile_demo_mamba_x.txt").read_text()
        step_ms = float(text.split(" ms/step with only the kernel timers")[0].split()[-1])
        timed = {line.split()[0]: float(line.split()[-2]) for line in text.splitlines()
                 if line.startswith(("_scan_cpu.", "_conv."))}
        assert {"_scan_cpu.scan_fwd", "_scan_cpu.scan_bwd", "_conv.conv_fwd", "_conv.conv_bwd"} <= set(timed)
        assert 0 < sum(timed.values()) < step_ms and "torch.profiler" in text


def test_train_throughput_measures_a_checkout_older_than_the_precision_fields(tmp_path, monkeypatch):
    """--code-root may be a checkout whose harness.env predates the precision fields (the
    issue's c1ceaec baseline): its rows leave them empty instead of the run failing."""
    import harness.env
    from benchmarks import train_throughput
    from harness.results import load_rows

    real = harness.env.environment
    monkeypatch.setattr(harness.env, "environment", lambda: {
        k: v for k, v in real().items() if k not in ("fp32_matmul", "triton_fp32_dot")})
    train_throughput.run(train_throughput.parse_args(
        ["--presets", "demo", "--archs", "lstm", "--min-time", "0.02", "--repeats", "1",
         "--out", str(tmp_path / "tt"), "--label", "old"]))
    rows = load_rows(tmp_path / "tt")
    assert list(rows["label"]) == ["old"] and rows["fp32_matmul"].isna().all()


@pytest.mark.slow
def test_train_throughput_pairs_a_baseline_checkout_back_to_back(tmp_path, capsys):
    """--baseline-root: each pair runs the baseline's case, then this checkout's, in fresh
    processes; the printed ratio is the pair's after/before from the rows written."""
    from benchmarks import train_throughput

    root = train_throughput.ROOT
    args = train_throughput.parse_args(["--presets", "demo", "--archs", "lstm", "--min-time", "0.05",
                                        "--repeats", "1", "--out", str(tmp_path / "tt"),
                                        "--baseline-root", str(root), "--pairs", "1"])
    ratios = train_throughput.compare(args)
    rows = load_rows(tmp_path / "tt").set_index("label")
    assert sorted(rows.index) == ["after1", "before1"]
    want = rows.loc["after1", "steps_per_s"] / rows.loc["before1", "steps_per_s"]
    assert list(ratios) == [("demo", "lstm")] and abs(ratios[("demo", "lstm")][0] - want) < 0.01 * want
    import re

    printed = re.search(r"^demo\s+lstm\s+([0-9.]+)x", capsys.readouterr().out, re.M)
    assert printed and abs(float(printed.group(1)) - want) < 0.02 * want + 0.005
