"""The benchmark scripts run end to end (CPU-sized) and write rows, figures and a report."""
import pytest

from benchmarks import kernels
from harness.results import load_rows


def test_attention_flop_count_follows_flashattention():
    assert kernels.attention_flops(2, 1024, 16, 64, backward=False) == 4 * 2 * 1024**2 * 16 * 64 / 2
    assert kernels.attention_flops(2, 1024, 16, 64, backward=True) == 3.5 * kernels.attention_flops(
        2, 1024, 16, 64, backward=False)


@pytest.mark.parametrize("suite", ["attention", "scan_vs_attention"])
def test_kernel_suites_write_rows_and_report(tmp_path, suite):
    kernels.main([suite, "--quick", "--seq-lens", "32", "64", "--out", str(tmp_path), "--device", "cpu"])
    df = load_rows(tmp_path)
    assert set(df["status"]) == {"ok"} and set(df["seq_len"]) == {32, 64}
    assert (df["tflops"] > 0).all() and (df["flops_analytic"] > 0).all()
    if suite == "attention":
        assert {"sdpa_math", "sdpa_auto", "attention_math"} <= set(df["arch"])
        assert set(df["batch"]) == {512 // 32, 512 // 64}  # batch x length held constant
    else:
        assert set(df["arch"]) == {"chunked_scan", "sdpa_attention"}
    assert (tmp_path / "report.md").read_text().startswith("# Kernel benchmarks")
    assert list(tmp_path.glob("*.png"))
    before = sorted(p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl"))
    kernels.main([suite, "--quick", "--seq-lens", "32", "64", "--out", str(tmp_path), "--device", "cpu"])
    assert sorted(p.stat().st_mtime_ns for p in tmp_path.glob("*.jsonl")) == before  # resumed
