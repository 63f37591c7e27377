#!/usr/bin/env python3
"""Every GPU claim of archbench checked in one prepared command (<= 9 minutes on an H100 or H200).

    make gpu-check OUT=DIR                 # = python scripts/gpu_check.py --out DIR
    make gpu-check DRY_RUN=1 OUT=DIR       # the same pipeline on the CPU at toy sizes (< 3 min)

Made for a bare, offline GPU machine that has torch, triton, numpy, pandas, pytest ... but
not hydra-core / omegaconf / antlr4 / fla / mamba-ssm: ``make wheelhouse`` (run where there
is network) puts their wheels in ``.whl/``, which travels with the tree - mamba-ssm as its
no-CUDA build (pure Python + Triton), so Mamba-2's fused path runs there with no compiler.

1. install: the wheelhouse's packages that do not import here go into ``DIR/site`` with
   ``pip install --no-index --no-deps --target`` (never a download); ``pip install .`` of
   the project is checked the same way. The steps run from the source tree with
   PYTHONPATH = tree : DIR/site.
2. Then each step is a subprocess with its own time budget (and the global deadline); a
   step that fails or times out is a status row, and the next step runs:
   pytest -m gpu | attention TFLOP/s (FlashAttention's protocol) | Mamba scan vs attention
   crossover (+ a torch.compile'd chunked scan) | cost of linear attention (fla), Mamba,
   Mamba-2 and attention | generation tokens/s | induction extrapolation.
   They are the existing apps (benchmarks/kernels.py, harness.cost, harness.extrapolate
   with the experiment configs cost_gpu, generation_gpu, induction_extrapolation).
   summary.md puts beside each measured figure the one predicted for an H100 and an H200
   (harness/roofline.py; scripts/gpu_summary.py).
3. DIR receives 4 files, refreshed after every step (so a killed run still returns what it
   measured), and at the end a fifth, triton_cache.tar.gz (scripts/triton_cache.py: carry it
   as .triton_cache/ next time and no kernel compiles twice): results_<device>.tar.gz (``results/<device>/check_<date>T<time>_<commit>/...``, the
   rows and these files, one folder per check so none overwrites another; extract it at the
   repository root), summary.md, status.json, gpu_check.log. Scratch (installed wheels,
   Hydra folders, checkpoints) lives in a temp folder, never in DIR.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import triton_cache
from gpu_summary import summary

ROOT = Path(__file__).resolve().parents[1]
# wheel distribution name -> the module that proves it is present
MODULES = {"hydra_core": "hydra", "omegaconf": "omegaconf", "antlr4_python3_runtime": "antlr4",
           "pyyaml": "yaml", "fla_core": "fla", "flash_linear_attention": "fla", "mamba_ssm": "mamba_ssm"}
LOG_LIMIT = 15 << 20  # files that come back from the GPU machine are <= 16 MiB each


@dataclass
class Step:
    name: str
    budget_s: float
    cmd: list[str] | None = None     # None: skipped (reason in note)
    results: str | None = None       # sub-folder of results/<device>/<run folder>/ it writes
    note: str = ""                   # what it measures, or why it is skipped
    status: str = "pending"          # ok | failed | timeout | skipped
    seconds: float = 0.0
    rc: int | None = None
    rows: int = 0
    rows_ok: int = 0
    extra: dict = field(default_factory=dict)


# --- sizes --------------------------------------------------------------------------------

def gpu_plan(py: str, res: Path, work: Path, args) -> list[Step]:
    hydra = lambda name: [f"hydra.sweep.dir={work / 'hydra' / name}", "progress=false"]  # noqa: E731
    kernels = [py, "benchmarks/kernels.py"]
    return [
        # Triton compiles fla's and mamba_ssm's kernels on first use, about a minute per test
        # on an H200's host: one pytest process per test compiles them side by side
        # (scripts/pytest_each.py: 98 s in all there, against > 5 minutes one after another)
        Step("pytest_gpu", 140, [py, "scripts/pytest_each.py", "-m", "gpu", *args.pytest_paths],
             note="fused vs reference agreement at fp32 (Triton dots at ieee) and at TF32, CUDA-only tests"),
        Step("attention_tflops", 30, kernels + [
            "attention", "--seq-lens", "8192", "16384", "--head-dims", "64", "128",
            "--impls", "sdpa_flash", "sdpa_cudnn", "flash_attn", "--warmup", "2", "--min-run-time", "0.3",
            "--out", str(res / "kernels")], results="kernels",
             note="FlashAttention protocol: causal, 16K tokens per batch, fwd and fwd+bwd, % of peak"),
        Step("scan_crossover", 60, kernels + [
            "scan_vs_attention", "--seq-lens", "1024", "2048", "4096", "8192", "16384", "32768",
            "--impls", "mamba_ssm_scan", "triton_scan", "triton_scan_tiled", "chunked_scan", "sdpa_attention",
            "--warmup", "2", "--min-run-time", "0.3", "--out", str(res / "kernels")], results="kernels",
             note="Mamba-1 scan (mamba_ssm's kernel if it imports, else an error row; archbench's Triton scans, "
                  "step by step and tiled; "
                  "chunked PyTorch, "
                  "doubling form on the GPU since 2026-12-04) vs SDPA"),
        # Mamba with archbench's Triton scan early (its kernels compile in ~2 s); Mamba with
        # the chunked PyTorch scan (what `mamba` runs without mamba-ssm's CUDA build) last
        Step("mixer_cost", 100, [py, "-m", "harness.cost", "experiment=cost_gpu",
                                "arch=transformer,mamba_triton,mamba2,linear_attention,mamba",
                                "bench.seq_lens=[2048,8192,32768]", "bench.modes=[forward,train_step]",
                                "bench.min_repeats=3", "bench.min_run_time=0.2", "bench.time_budget_s=30",
                                f"results_dir={res / 'cost'}", *hydra("cost")], results="cost",
             note="125M models: attention, Mamba (archbench's Triton scan), Mamba-2, linear attention "
                  "(fla's Triton kernels), Mamba (chunked scan)"),
        Step("generation", 35, [py, "-m", "harness.cost", "experiment=generation_gpu",
                                "arch=transformer,mamba2,mamba,jamba", "bench.batch=1,64",
                                "bench.time_budget_s=40", f"results_dir={res / 'generation'}",
                                *hydra("generation")], results="generation",
             note="prompt 2048 + 128 tokens, batch 1 and 64, ~125M active parameters, bf16"),
        Step("induction", 50, [py, "-m", "harness.extrapolate", "experiment=induction_extrapolation",
                               "arch=induction/mamba,induction/transformer_alibi,induction/transformer_rope",
                               "train.time_budget_s=20", "eval.time_budget_s=10",
                               "eval.seq_lens=[256,1024,4096,16384,65536,262144,1048576]",
                               f"checkpoint_dir={work / 'checkpoints'}",
                               f"results_dir={res / 'extrapolation' / 'induction'}", *hydra("induction")],
             results="extrapolation/induction",
             note="train at 256 (20 s per model), evaluate 256 .. 1M tokens while the budget lasts"),
        # the control: + RoPE with cuDNN attention allowed while the training lengths vary (12
        # steps/s against ALiBi's 125 in the first H200 run: a cuDNN plan per new length)
        Step("induction_cudnn_on", 35, [py, "-m", "harness.extrapolate", "experiment=induction_extrapolation",
                                        "arch=induction/transformer_rope", "train.sdpa_cudnn=on", "eval.sdpa_cudnn=on",
                                        "train.time_budget_s=20", "eval.time_budget_s=10",
                                        "eval.seq_lens=[256,1024,4096,16384]", "checkpoint_dir=null",
                                        f"results_dir={res / 'extrapolation' / 'induction_cudnn_on'}",
                                        *hydra("induction_cudnn_on")],
             results="extrapolation/induction_cudnn_on",
             note="control: Transformer + RoPE with cuDNN attention allowed at varying shapes (sdpa_cudnn=on)"),
        # the training loop of the small presets on the GPU: steps/s per arch, the machine's
        # fp32 matmul peak beside it, and a device-time profile of the Transformer step. Archs
        # without Triton kernels first: in the second H200 run Mamba-2's cold Triton compile
        # took the rest of the budget after Mamba, and nothing after it was measured
        Step("train_throughput", 60, [py, "benchmarks/train_throughput.py", "--presets", "induction_paper",
                                      "--archs", "transformer", "lstm", "mamba", "mamba_triton", "mamba2",
                                      "linear_attention",
                                      "jamba", "--min-time", "1.5", "--repeats", "2", "--device", "cuda",
                                      "--profile", "transformer", "--out", str(res / "benchmarks" / "train_throughput")],
             results="benchmarks/train_throughput",
             note="induction protocol (d=64, batch 8, L=256): steps/s and fraction of the fp32 peak; "
                  "204,800 steps = the Mamba paper's run"),
        # (no torch.compile'd chunked scan: in the first H200 run it did not compile in 40 s -
        # it traces the per-step loop; benchmarks/kernels.py --impls chunked_scan_compiled)
    ]


def dry_plan(py: str, res: Path, work: Path, args) -> list[Step]:
    """The same commands at toy sizes on the CPU (CUDA-only parts are reported as skipped)."""
    hydra = lambda name: [f"hydra.sweep.dir={work / 'hydra' / name}", "progress=false", "device=cpu"]  # noqa: E731
    kernels = [py, "benchmarks/kernels.py"]
    quick = ["--device", "cpu", "--dtype", "float32", "--warmup", "0", "--min-run-time", "0.01"]
    toy = ["model.target_params=50000", "model.n_layers=2", "model.vocab_size=256", "bench.dtype=float32",
           "bench.warmup=0", "bench.min_run_time=0.01", "bench.min_repeats=1", "bench.time_budget_s=30",
           "bench.measure_memory=false"]  # the CPU allocator profiler: slow, and not what a GPU runs
    return [
        Step("pytest_gpu", 60, [py, "scripts/pytest_each.py", "-m", "gpu", *args.pytest_paths],
             note="no CUDA: the gpu tests skip (each in its own process, as on the GPU)"),
        Step("attention_tflops", 40, kernels + [
            "attention", "--seq-lens", "64", "128", "--head-dims", "64", "128", "--hidden", "256",
            "--tokens", "128", "--impls", "sdpa_flash", "sdpa_cudnn", "flash_attn", "sdpa_math", *quick,
            "--out", str(res / "kernels")], results="kernels",
             note="sdpa_flash, sdpa_cudnn, flash_attn skipped (CUDA only); sdpa_math stands in"),
        Step("scan_crossover", 90, kernels + [
            "scan_vs_attention", "--seq-lens", "64", "128", "--hidden", "64", "--impls", "mamba_ssm_scan",
            "triton_scan", "chunked_scan", "sdpa_attention", *quick, "--out", str(res / "kernels")],
             results="kernels",
             note="mamba_ssm_scan and triton_scan are error rows (no mamba_ssm, no GPU); chunked scan vs SDPA"),
        Step("mixer_cost", 60, [py, "-m", "harness.cost", "experiment=cost_gpu",
                                "arch=linear_attention,mamba2,transformer,mamba", "bench.seq_lens=[32]",
                                "bench.modes=[forward,train_step]", *toy, f"results_dir={res / 'cost'}",
                                *hydra("cost")], results="cost",
             note="fla kernels skipped (no CUDA): backend=auto resolves to chunked, as the rows say"),
        Step("generation", 60, [py, "-m", "harness.cost", "experiment=generation_gpu",
                                "arch=transformer,mamba,mamba2,jamba", "bench.batch=2", "bench.seq_lens=[32]",
                                "bench.gen_tokens=2", *toy, f"results_dir={res / 'generation'}",
                                *hydra("generation")], results="generation",
             note="prompt 32 + 2 tokens, batch 2 (GPU: 2048 + 128, batch 1 and 64)"),
        Step("induction", 50, [py, "-m", "harness.extrapolate", "experiment=induction_extrapolation",
                               "arch=induction/mamba,induction/transformer_alibi", "train.steps=4",
                               "train.batch_size=4", "train.seq_len=32", "train.warmup_steps=1",
                               "train.eval_every=0", "train.target_acc=null", "train.time_budget_s=20",
                               "eval.seq_lens=[32,64]", "eval.n_sequences=4", "eval.batch_tokens=256",
                               "eval.chunk_len=48", "eval.time_budget_s=20", "checkpoint_dir=null",
                               "model.d_model=32", "model.d_model_by_arch={mamba: 16}",
                               f"results_dir={res / 'extrapolation' / 'induction'}", *hydra("induction")],
             results="extrapolation/induction", note="4 training steps, lengths 32 and 64"),
        Step("induction_cudnn_on", 30, [py, "-m", "harness.extrapolate", "experiment=induction_extrapolation",
                                        "arch=induction/transformer_rope", "train.sdpa_cudnn=on", "eval.sdpa_cudnn=on",
                                        "train.steps=4", "train.batch_size=4", "train.seq_len=32",
                                        "train.warmup_steps=1", "train.eval_every=0", "train.target_acc=null",
                                        "eval.seq_lens=[32]", "eval.n_sequences=4", "checkpoint_dir=null",
                                        "model.d_model=32",
                                        f"results_dir={res / 'extrapolation' / 'induction_cudnn_on'}",
                                        *hydra("induction_cudnn_on")],
             results="extrapolation/induction_cudnn_on", note="no cuDNN on a CPU: sdpa_cudnn=on changes nothing here"),
        Step("train_throughput", 60, [py, "benchmarks/train_throughput.py", "--presets", "demo",
                                      "--archs", "mamba", "transformer", "--min-time", "0.05", "--repeats", "1",
                                      "--device", "cpu", "--profile", "transformer",
                                      "--out", str(res / "benchmarks" / "train_throughput")],
             results="benchmarks/train_throughput", note="the demo preset, 2 archs, a few steps"),
    ]


# --- install ------------------------------------------------------------------------------

def _tags():
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pip vendors packaging
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    return set(sys_tags()), parse_wheel_filename


def install(wheelhouse: Path, site: Path, reinstall: bool, log) -> Step:
    """Install the wheelhouse's missing packages into ``site``, offline."""
    step = Step("install", 120)
    t0 = time.monotonic()
    wheels = sorted(wheelhouse.glob("*.whl")) if wheelhouse.is_dir() else []
    if not wheels:
        missing = [m for m in ("hydra", "omegaconf", "antlr4", "yaml", "fla") if importlib.util.find_spec(m) is None]
        # Only the app's own imports are required; without fla its rows say "chunked".
        required = [m for m in missing if m != "fla"]
        step.status = "failed" if required else "skipped"
        step.note = (f"no wheels in {wheelhouse} (run `make wheelhouse` where there is network and carry "
                     f"{wheelhouse.name}/); missing here: {missing or 'nothing'}")
        return step
    tags, parse = _tags()
    todo, present, incompatible = [], [], []
    for wheel in wheels:
        dist = wheel.name.split("-")[0].lower()
        module = MODULES.get(dist, dist)
        if not reinstall and importlib.util.find_spec(module) is not None:
            present.append(f"{dist} (imports as {module})")
        elif not tags & set(parse(wheel.name)[3]):
            incompatible.append(wheel.name)
        else:
            todo.append(wheel)
    site.mkdir(parents=True, exist_ok=True)
    method = "pip"
    if todo:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
               "--no-warn-script-location", "--upgrade", "--target", str(site), *map(str, todo)]
        rc = run_logged(cmd, 120, log, os.environ.copy())[0]
        if rc != 0:  # no pip here: a wheel is a zip archive; pure-Python ones unpack as they are
            method = f"unzip (pip failed with rc={rc})"
            import zipfile
            for wheel in todo:
                zipfile.ZipFile(wheel).extractall(site)
    step.extra = {"installed": [w.name for w in todo], "already_present": present,
                  "incompatible_skipped": incompatible, "method": method, "site": str(site)}
    # the project itself, offline (proves `pip install .` works there; the steps run from the tree)
    project = Path(tempfile.mkdtemp(prefix="archbench_project_"))
    rc, _ = run_logged([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", "--target", str(project), str(ROOT)], 90, log, os.environ.copy())
    step.extra["project_install"] = "ok" if rc == 0 else f"failed rc={rc} (see log; steps run from the tree)"
    shutil.rmtree(project, ignore_errors=True)
    env = step_env(site)
    # mamba_ssm's Triton kernels are what Mamba-2's fused path imports (archs.backends: the
    # no-CUDA wheel's package __init__ fails, its kernels do not)
    probe = ("import importlib, json; out = {}\n"
             "for m in ('hydra', 'omegaconf', 'antlr4', 'yaml', 'fla', 'fla.ops.simple_gla', 'flash_attn', "
             "'mamba_ssm', 'causal_conv1d', 'triton'):\n"
             "    try:\n        mod = importlib.import_module(m)\n"
             "        out[m] = getattr(mod, '__version__', 'ok')\n"
             "    except Exception as e:\n        out[m] = 'missing: ' + repr(e)[:120]\n"
             "from archs.backends import optional_import\n"
             "m = 'mamba_ssm.ops.triton.ssd_combined'\n"
             "out[m] = 'ok' if optional_import(m) is not None else 'missing'\n"
             "print(json.dumps(out))")
    res = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    try:
        step.extra["imports"] = json.loads(res.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        step.extra["imports"] = {"probe": f"failed: {res.stderr[-300:]}"}
    need = [m for m in ("hydra", "omegaconf", "antlr4", "yaml") if str(step.extra["imports"].get(m, "missing")).startswith("missing")]
    step.status = "failed" if need else "ok"
    step.note = (f"missing after install: {need}" if need else
                 f"{len(todo)} wheels installed ({method}), {len(present)} already present")
    step.seconds = time.monotonic() - t0
    return step


def step_env(site: Path, dry_run: bool = False) -> dict:
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site), *filter(None, [env.get("PYTHONPATH")])])
    env["HYDRA_FULL_ERROR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU pipeline even on a GPU machine
    return env


# --- running ------------------------------------------------------------------------------

_CURRENT: list[subprocess.Popen] = []


def run_logged(cmd: list[str], timeout: float, log, env: dict) -> tuple[int | None, bool]:
    """Run ``cmd`` in its own process group, output appended to ``log``. (rc, timed_out)."""
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _CURRENT.append(proc)
    try:
        return proc.wait(timeout=max(timeout, 1)), False
    except subprocess.TimeoutExpired:
        _stop(proc)
        return None, True
    finally:
        _CURRENT.remove(proc)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def count_rows(folder: Path) -> tuple[int, int]:
    n = ok = 0
    for f in folder.rglob("*.jsonl") if folder.is_dir() else []:
        for line in f.read_text().splitlines():
            if line.strip():
                n += 1
                ok += json.loads(line).get("status") == "ok"
    return n, ok


# --- report (the tables: scripts/gpu_summary.py) ----------------------------------------------

def run_folder(meta: dict) -> str:
    """check_<UTC date>T<time>_<commit>: each check's rows in a folder of their own, so
    extracting a later check (a rerun the same day, at the same commit, too) never overwrites
    an earlier one's rows of the same point key (the kernels' keys name the implementation,
    not the code: "before" and "after" would collide)."""
    commit = meta["git_commit"][:7] if re.fullmatch(r"[0-9a-f]{40}", meta["git_commit"]) else "nogit"
    if meta.get("git_modified"):  # the code measured is not that commit's (see git_modified)
        commit += "_modified"
    started = meta["started"]  # ISO, UTC: 2026-12-04T12:03:17+00:00
    return f"check_{started[:10]}T{started[11:19].replace(':', '')}_{commit}"


def pack(out: Path, steps: list[Step], res: Path, tag: str, meta: dict, log_path: Path) -> None:
    """OUT's files, and a tarball of results/<tag>/<run folder>/ that holds the rows and the
    same summary, status and log (extract it at the repository root)."""
    if log_path.stat().st_size > LOG_LIMIT:  # keep head and tail
        data = log_path.read_bytes()
        log_path.write_bytes(data[: LOG_LIMIT // 4] + b"\n[... log truncated ...]\n" + data[-LOG_LIMIT // 2:])
    (out / "status.json").write_text(json.dumps({"meta": meta, "steps": [asdict(s) for s in steps]}, indent=1,
                                                default=str))
    (out / "summary.md").write_text(summary(steps, res, meta))
    res.mkdir(parents=True, exist_ok=True)
    for name in ("status.json", "summary.md", "gpu_check.log"):
        shutil.copyfile(out / name, res / name)
    with tarfile.open(out / f".results_{tag}.tar.gz", "w:gz") as tar:
        tar.add(res, arcname=f"results/{tag}/{res.name}")
    os.replace(out / f".results_{tag}.tar.gz", out / f"results_{tag}.tar.gz")


def git_modified() -> list[str] | None:
    """Files of the tree that are not the commit's (None: no git): tracked files changed, and
    untracked ones outside results/ (new code travels too; extracted result folders do not
    count). The GPU machine runs a copy of the working tree whose .git can lag behind it: on
    2026-12-04 the rows of a9d667a's tree said 6faff60, an earlier copy's commit."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [line[3:] for line in out.stdout.splitlines()
            if not (line.startswith("??") and line[3:].startswith("results/"))]


def git_commit() -> str:
    """The tree's commit; a copied tree on the GPU machine may have no .git (or no git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown (no git repository)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def device_tag(dry_run: bool) -> tuple[str, str]:
    import torch
    if dry_run or not torch.cuda.is_available():
        import platform
        cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        name = found.group(1).strip() if found else platform.machine()
        return ("dryrun_cpu" if dry_run else "cpu"), name
    name = torch.cuda.get_device_name(0)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_"), name


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where the (<= 8) result files go")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes; CUDA-only parts reported as skipped")
    p.add_argument("--wheelhouse", type=Path, default=ROOT / ".whl")
    p.add_argument("--results-root", type=Path, default=None,
                   help="results/<device>/<run folder>/ goes under this folder (default: the scratch folder; the "
                        "rows come back in results_<device>.tar.gz, to extract at the repository root)")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch folder (installed wheels, Hydra output), kept; default: a temp folder, removed")
    p.add_argument("--total-s", type=float, default=None, help="global deadline (default 520 s, dry run 170 s)")
    p.add_argument("--budget-scale", type=float, default=1.0,
                   help="multiply every step's budget (a slow or shared machine; the deadline still holds)")
    p.add_argument("--steps", nargs="+", default=None, help="run only these steps (install always runs)")
    p.add_argument("--pytest-paths", nargs="+", default=["tests"])
    p.add_argument("--reinstall", action="store_true",
                   help="install every compatible wheel into OUT/site even if it already imports")
    p.add_argument("--triton-cache", type=Path, default=ROOT / triton_cache.CARRIED,
                   help="a previous check's Triton cache (its OUT/triton_cache.tar.gz), restored before "
                        "the first step when present (scripts/triton_cache.py)")
    p.add_argument("--triton-home", type=Path, default=Path.home() / ".triton",
                   help="where Triton keeps its caches (restored into, returned from)")
    p.add_argument("--return-triton-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="put the Triton caches in OUT/triton_cache.tar.gz at the end (default: yes, "
                        "not in a dry run)")
    p.add_argument("--mamba-build-s", type=float, default=300,
                   help="budget of the optional mamba-ssm sm_90 build (only if its sdist is in the wheelhouse)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.monotonic()
    total = args.total_s or (170.0 if args.dry_run else 520.0)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # scratch (installed wheels, Hydra folders, checkpoints) stays out of OUT, whose every
    # file travels back from the GPU machine
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    site = work / "site"
    tag, device = device_tag(args.dry_run)
    # a fresh folder, never the tree's results/: committed rows of an earlier check would
    # otherwise be resumed (same keys) and this check would measure nothing new
    res_root = (args.results_root or work).resolve()
    log_path = out / "gpu_check.log"
    log = log_path.open("a", buffering=1)
    import torch
    meta = {"dry_run": args.dry_run, "device": device,
            "torch": torch.__version__, "python": sys.version.split()[0],
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(), "git_modified": git_modified(),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}
    res = res_root / "results" / tag / run_folder(meta)
    meta["results"] = f"results/{tag}/{res.name}/"
    if shutil.which("nvidia-smi") and not args.dry_run:
        run_logged(["nvidia-smi"], 30, log, os.environ.copy())

    try:  # a bad archive costs its kernels' compile time, never the check
        meta["triton_cache"] = triton_cache.restore(args.triton_cache, args.triton_home)
    except Exception as exc:  # noqa: BLE001
        meta["triton_cache"] = f"not restored: {exc!r}"[:300]
    steps: list[Step] = [install(args.wheelhouse, site, args.reinstall, log)]
    plan = (dry_plan if args.dry_run else gpu_plan)(sys.executable, res, work, args)
    sdist = sorted(args.wheelhouse.glob("mamba_ssm-*.tar.gz")) if args.wheelhouse.is_dir() else []
    build = Step("mamba_ssm_build", args.mamba_build_s, note="optional: time a sm_90-only build of mamba-ssm")
    if sdist and not args.dry_run:
        build.cmd = [sys.executable, "-m", "pip", "wheel", "--no-index", "--no-deps", "--no-build-isolation",
                     "-w", str(work / "mamba_build"), str(sdist[-1])]
    else:
        build.note = ("skipped: dry run" if args.dry_run else
                      "skipped: no mamba-ssm sdist in the wheelhouse (MAMBA_SDIST=1 make wheelhouse); "
                      "Mamba-1 rows use the chunked PyTorch scan and say so in `backend`")
    plan.append(build)
    if args.steps:
        unknown = set(args.steps) - {s.name for s in plan}
        if unknown:
            raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {[s.name for s in plan]}")
        plan = [s for s in plan if s.name in args.steps]
    for step in plan:
        step.budget_s *= args.budget_scale
    steps += plan
    env = step_env(site, args.dry_run)
    # sm_90 only (H100/H200), forced source build, every core
    env_build = dict(env, TORCH_CUDA_ARCH_LIST="9.0", MAMBA_FORCE_BUILD="TRUE", MAX_JOBS=str(os.cpu_count() or 8))
    pack(out, steps, res, tag, meta, log_path)

    def on_term(signum, frame):  # the device limit: keep what was measured
        for proc in list(_CURRENT):
            _stop(proc)
        for s in steps:
            if s.status == "pending":
                s.status, s.note = "skipped", f"gpu_check got signal {signum}; " + s.note
        pack(out, steps, res, tag, meta, log_path)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    for step in plan:
        left = total - (time.monotonic() - t_start) - 5
        before = count_rows(res / step.results) if step.results else (0, 0)
        if step.cmd is None:
            step.status = "skipped"
        elif step.name == "mamba_ssm_build" and left < step.budget_s:
            step.status, step.note = "skipped", f"skipped: {left:.0f} s left < its {step.budget_s:.0f} s budget"
        elif left < 10:
            step.status, step.note = "skipped", f"skipped: global deadline ({total:.0f} s) reached; " + step.note
        else:
            timeout = min(step.budget_s, left)
            log.write(f"\n===== {step.name} (budget {timeout:.0f} s) =====\n")
            t0 = time.monotonic()
            rc, timed_out = run_logged(step.cmd, timeout, log, env_build if step.name == "mamba_ssm_build" else env)
            step.seconds, step.rc = time.monotonic() - t0, rc
            step.status = "timeout" if timed_out else ("ok" if rc == 0 else "failed")
            if timed_out:
                step.note += f" [stopped at {timeout:.0f} s; rows so far kept]"
        if step.results:  # rows this step added (steps may share a folder)
            n, ok = count_rows(res / step.results)
            step.rows, step.rows_ok = n - before[0], ok - before[1]
        print(f"[gpu_check] {step.name:18s} {step.status:8s} {step.seconds:6.1f} s  rows {step.rows} "
              f"({step.rows_ok} ok)  {step.note}", flush=True)
        pack(out, steps, res, tag, meta, log_path)
    meta["total_s"] = round(time.monotonic() - t_start, 1)
    if args.return_triton_cache if args.return_triton_cache is not None else not args.dry_run:
        try:
            meta["triton_cache_returned"] = triton_cache.save(args.triton_home, out / triton_cache.FILE)
        except Exception as exc:  # noqa: BLE001 - the rows still get packed below
            meta["triton_cache_returned"] = f"not returned: {exc!r}"[:300]
    pack(out, steps, res, tag, meta, log_path)
    log.close()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)  # the results are in the tarball
    print((out / "summary.md").read_text())
    print(f"[gpu_check] files in {out}: {sorted(p.name for p in out.iterdir() if p.is_file())}")
    return 0 if all(s.status in ("ok", "skipped") for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
