"""The prepared GPU check (scripts/gpu_check.py) and its wheelhouse, exercised on the CPU."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from archs._scan_cpu import cpu_kernel_available
from tests.paths import ROOT  # noqa: E402
WHEELHOUSE = ROOT / ".whl"
sys.path.insert(0, str(ROOT / "scripts"))
import gpu_check  # noqa: E402

GPU_TARGET = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "none",
              "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "any"]
MEASURING = ("attention_tflops", "scan_crossover", "mixer_cost", "generation", "induction", "train_throughput")


def _plans(tmp_path):
    args = gpu_check.parse_args(["--out", str(tmp_path)])
    for make in (gpu_check.gpu_plan, gpu_check.dry_plan):
        yield make.__name__, make(sys.executable, tmp_path / "res", tmp_path / "work", args)


@pytest.mark.slow
def test_every_planned_command_parses_here(tmp_path):
    """A typo in a GPU-only command would cost a GPU session: parse each one on the CPU."""
    from benchmarks.kernels import parse_args as kernels_args
    from tests.apps import compose
    for plan_name, plan in _plans(tmp_path):
        names = [s.name for s in plan]
        assert set(MEASURING) <= set(names) and "pytest_gpu" in names, plan_name
        for step in plan:
            if step.cmd is None:
                continue
            if step.cmd[1] == "benchmarks/kernels.py":
                kernels_args(step.cmd[2:])
            elif step.cmd[1:3] == ["-m", "harness.cost"] or step.cmd[1:3] == ["-m", "harness.extrapolate"]:
                app = "cost" if step.cmd[2] == "harness.cost" else "extrapolate"
                # one point of each sweep: compose validates every key against the schema
                overrides = [o.split(",")[0] if "=" in o and "[" not in o and "{" not in o else o
                             for o in step.cmd[3:] if not o.startswith(("hydra.", "progress="))]
                cfg = compose(app, *overrides)
                assert cfg.results_dir.startswith(str(tmp_path / "res")), (plan_name, step.name)


def test_gpu_plan_fits_nine_minutes(tmp_path):
    # the install step took 25 s on an H200 (2026-12-04): steps + install fit 9 of the
    # session's 15 device minutes, leaving the machine's start and a short second call
    plans = dict(_plans(tmp_path))
    assert sum(s.budget_s for s in plans["gpu_plan"]) + 30 <= 9 * 60
    assert gpu_check.parse_args(["--out", "x"]).total_s is None  # default deadline: 520 s


@pytest.mark.slow
def test_dry_run_runs_the_whole_pipeline_on_cpu(tmp_path):
    out = tmp_path / "out"
    # a previous check's Triton cache, restored first and returned at the end (as on a GPU)
    import triton_cache
    previous, home = tmp_path / "previous.tar.gz", tmp_path / "home" / ".triton"
    (tmp_path / "prev" / "cache" / "k1").mkdir(parents=True)
    (tmp_path / "prev" / "cache" / "k1" / "kernel.cubin").write_bytes(b"cubin")
    assert triton_cache.save(tmp_path / "prev", previous).startswith("returned 1 files")
    cmd = [sys.executable, "scripts/gpu_check.py", "--dry-run", "--out", str(out),
           "--pytest-paths", "tests/archs/attention/test_attention.py", "--budget-scale", "3", "--total-s", "540",
           "--triton-cache", str(previous), "--triton-home", str(home), "--return-triton-cache"]
    if WHEELHOUSE.is_dir():
        cmd.append("--reinstall")  # exercise the offline install: the steps then import hydra from it
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # at most 8 plain files come back from the GPU machine, nothing nested
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.log", "results_dryrun_cpu.tar.gz", "status.json", "summary.md", "triton_cache.tar.gz"]
    meta = json.loads((out / "status.json").read_text())["meta"]
    assert meta["triton_cache"].startswith("restored 1 files") and (home / "cache/k1/kernel.cubin").exists()
    assert meta["triton_cache_returned"].startswith("returned")
    steps = {s["name"]: s for s in json.loads((out / "status.json").read_text())["steps"]}
    for name in ("pytest_gpu", *MEASURING):
        assert steps[name]["status"] == "ok", steps[name]
    for name in MEASURING:
        assert steps[name]["rows_ok"] > 0, steps[name]
    assert steps["install"]["status"] == ("ok" if WHEELHOUSE.is_dir() else "skipped")
    if WHEELHOUSE.is_dir():
        assert steps["install"]["extra"]["imports"]["hydra"] == "1.3.8"
    assert steps["mamba_ssm_build"]["status"] == "skipped"
    with tarfile.open(out / "results_dryrun_cpu.tar.gz") as tar:
        names = tar.getnames()
        rows = [json.loads(tar.extractfile(m).read().splitlines()[0]) for m in tar.getmembers()
                if m.name.endswith(".jsonl")]
    # one folder per check (date, commit), holding the rows and the check's own files
    run = json.loads((out / "status.json").read_text())["meta"]["results"]
    assert re.fullmatch(r"results/dryrun_cpu/check_\d{4}-\d\d-\d\dT\d{6}_([0-9a-f]{7}|nogit)(_modified)?/", run), run
    for sub in ("kernels", "cost", "generation", "extrapolation/induction", "benchmarks/train_throughput"):
        assert any(n.startswith(f"{run}{sub}/") for n in names), sub
    assert {f"{run}{name}" for name in ("summary.md", "status.json", "gpu_check.log")} <= set(names)
    # Mamba-1 without mamba_ssm runs the CPU kernel (the chunked scan where none builds), and
    # every row says which
    want = "fused" if cpu_kernel_available() else "chunked"
    mamba = [r for r in rows if r.get("arch") == "mamba"]
    assert mamba and all(r["backend"] == want for r in mamba)
    assert any(r.get("arch") == "mamba_ssm_scan" and "mamba_ssm" in r["reason"] for r in rows)
    summary = (out / "summary.md").read_text()
    assert "DRY RUN" in summary and all(name in summary for name in steps)
    # every measured figure has its H100 and H200 prediction beside it
    for section in ("Attention TFLOP/s", "Mamba scan vs attention", "Mixer cost", "Generation tokens/s"):
        table = summary.split(f"## {section}")[1].split("\n## ")[0]
        lines = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line]
        head, body = lines[0], lines[1:]
        h100, h200 = head.index("H100 predicted"), head.index("H200 predicted")
        assert body and all(float(r[h100]) > 0 and float(r[h200]) > 0 for r in body), (section, table)
    # the dry run never writes into the tree
    assert not (ROOT / "results" / "dryrun_cpu").exists()


@pytest.mark.skipif(not WHEELHOUSE.is_dir(), reason="no wheelhouse at .whl/ (run `make wheelhouse`; "
                                                    "tests never download)")
def test_wheelhouse_installs_offline_for_python312(tmp_path):
    from scripts.pins import KERNEL_PINS
    wheels = sorted(WHEELHOUSE.glob("*.whl"))
    dists = {w.name.split("-")[0].lower(): w.name.split("-")[1] for w in wheels}
    assert set(dists) == {"hydra_core", "omegaconf", "antlr4_python3_runtime", "pyyaml", "fla_core", "mamba_ssm"}
    assert (dists["fla_core"], dists["mamba_ssm"]) == (KERNEL_PINS["fla-core"], KERNEL_PINS["mamba-ssm"])
    assert sum(w.stat().st_size for w in wheels) < 16 << 20  # far below the 64 MiB that travels
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--only-binary=:all:",
                          "--disable-pip-version-check", *GPU_TARGET, "--target", str(tmp_path),
                          *map(str, wheels)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for package in ("hydra", "omegaconf", "antlr4", "yaml", "fla", "mamba_ssm"):
        assert (tmp_path / package / "__init__.py").exists(), package
    # the no-CUDA mamba-ssm: Triton sources, no compiled extension
    assert (tmp_path / "mamba_ssm" / "ops" / "triton" / "ssd_combined.py").exists()
    assert not list(tmp_path.glob("*.so"))
    probe = "import hydra, omegaconf, antlr4, fla; print(hydra.__file__, fla.__version__)"
    res = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(str(tmp_path)) and res.stdout.split()[-1] == KERNEL_PINS["fla-core"]


def test_pytest_each_runs_every_test_alone_and_reports_failures(tmp_path):
    """One process per test (so Triton compiles side by side on the GPU machine); a failing
    test fails the run and is named, a marker expression selects as pytest's -m does."""
    (tmp_path / "test_some.py").write_text(
        "import os, pytest\n"
        "PIDS = os.path.join(os.path.dirname(__file__), 'pids')\n"
        "def _log():\n    open(PIDS, 'a').write(f'{os.getpid()}\\n')\n"
        "@pytest.mark.gpu\ndef test_a():\n    _log()\n"
        "@pytest.mark.gpu\ndef test_b():\n    _log()\n    assert 1 == 2\n"
        "@pytest.mark.gpu\ndef test_c():\n    _log()\n"
        "def test_not_selected():\n    _log()\n")
    cmd = [sys.executable, "scripts/pytest_each.py", "-j", "2", "-m", "gpu", str(tmp_path / "test_some.py")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 of 3 tests passed or skipped" in done.stdout and "test_some.py::test_b" in done.stdout
    assert "test_some.py::test_b: FAILED" in done.stdout
    pids = (tmp_path / "pids").read_text().split()
    assert len(pids) == 3 and len(set(pids)) == 3  # three tests, three processes, none unselected


def test_run_folder_says_when_the_code_is_not_its_commits():
    meta = {"git_commit": "a9d667a" + "0" * 33, "started": "2026-12-04T14:39:44+00:00", "git_modified": []}
    assert gpu_check.run_folder(meta) == "check_2026-12-04T143944_a9d667a"
    meta["git_modified"] = ["harness/train.py"]
    assert gpu_check.run_folder(meta) == "check_2026-12-04T143944_a9d667a_modified"
    assert gpu_check.run_folder({**meta, "git_commit": "unknown (no git repository)"}) == \
        "check_2026-12-04T143944_nogit_modified"
    assert isinstance(gpu_check.git_modified(), list)  # this checkout has git


def test_git_modified_counts_changed_and_new_code_not_new_results(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c")
    monkeypatch.setattr(gpu_check, "ROOT", tmp_path)
    assert gpu_check.git_modified() == []
    (tmp_path / "code.py").write_text("x = 2\n")
    (tmp_path / "new_module.py").write_text("")
    (tmp_path / "results" / "dev").mkdir(parents=True)
    (tmp_path / "results" / "dev" / "rows.jsonl").write_text("{}\n")
    assert sorted(gpu_check.git_modified()) == ["code.py", "new_module.py"]
