"""The demo's terminal summary: built from harness.report.fit / harness.report.plot on known curves."""
import pandas as pd

from harness import demo


def _cost_rows() -> pd.DataFrame:
    rows = []
    for n in (256, 512, 1024, 2048, 4096):
        # attention ~ L^2 from a small prefactor, a recurrent mixer ~ L: they meet at L = 1024
        for arch, t in (("transformer", n * n / 1024.0), ("mamba", float(n))):
            rows.append({"arch": arch, "backend": "x", "mode": "forward", "dtype": "float32", "batch": 1,
                         "device": "cpu", "seq_len": n, "time_ms": t, "status": "ok"})
    return pd.DataFrame(rows)


def test_exponent_lines_report_each_architectures_slope():
    text = "\n".join(demo.exponent_lines(_cost_rows()))
    mamba = next(line for line in text.splitlines() if "mamba" in line)
    transformer = next(line for line in text.splitlines() if "transformer" in line)
    assert "1.00" in mamba and "2.00" in transformer


def test_crossover_lines_name_the_faster_architecture_and_the_length():
    lines = demo.crossover_lines(_cost_rows())
    assert len(lines) == 1
    # exact curves: the interval is the point itself
    assert "mamba is faster than transformer beyond L ≈ 1,024 [1,024, 1,024] (measured)" in lines[0]


def test_accuracy_lines_tabulate_by_evaluation_length_and_mark_training_length():
    rows = [{"arch": a, "task": "induction_heads", "train_seq_len": 64, "eval_seq_len": n, "seed": 0,
             "accuracy": acc, "status": "ok"}
            for a, accs in (("rope", (1.0, 0.5, 0.0)), ("alibi", (1.0, 1.0, 1.0)))
            for n, acc in zip((64, 128, 256), accs)]
    rows.append({**rows[0], "eval_seq_len": 512, "status": "oom", "accuracy": None})
    lines = demo.accuracy_lines(pd.DataFrame(rows))
    assert "trained at 64" in lines[0]
    header = lines[1].split()
    assert header[:3] == ["64*", "128", "256"] and "512" not in header
    assert lines[2].split()[0] in ("alibi", "rope")  # the rows follow the header directly
    rope = next(line for line in lines if line.strip().startswith("rope")).split()
    assert rope[1:] == ["1.00", "0.50", "0.00"]


def test_app_command_passes_device_and_output_folders(tmp_path):
    cmd = demo.app_command(demo.HALVES[1], tmp_path, "cpu", ["train.steps=3"])
    assert cmd[1:4] == ["-m", "harness.extrapolate", "experiment=demo_extrapolation"]
    assert "device=cpu" in cmd and f"results_dir={tmp_path / 'extrapolation'}" in cmd
    assert f"checkpoint_dir={tmp_path / 'checkpoints'}" in cmd and cmd[-1] == "train.steps=3"


def test_benchmark_parses_gnu_time_report():
    import importlib.util
    from pathlib import Path

    import pytest

    path = Path(__file__).resolve().parents[2] / "scripts" / "demo_benchmark.py"
    spec = importlib.util.spec_from_file_location("demo_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    report = ("\tUser time (seconds): 120.50\n\tSystem time (seconds): 4.25\n"
              "\tElapsed (wall clock) time (h:mm:ss or m:ss): 2:41.30\n"
              "\tMaximum resident set size (kbytes): 1048576\n\tExit status: 0\n")
    assert bench.parse_time_v(report) == {"user_s": 120.5, "sys_s": 4.25, "wall_s": 161.3,
                                          "peak_rss_mb": 1024.0, "exit_status": 0}
    with pytest.raises(ValueError, match="GNU time"):
        bench.parse_time_v("real 0m1.0s")
