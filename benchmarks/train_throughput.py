"""Training throughput of the small models the studies train, against the machine's peak.

    python benchmarks/train_throughput.py                         # every preset x arch
    python benchmarks/train_throughput.py --presets induction_paper --archs mamba --profile
    python benchmarks/train_throughput.py --code-root /path/to/old/checkout --label before
    python benchmarks/train_throughput.py --archs mamba --baseline-root /path/to/old --pairs 3

Each case composes the extrapolation app's config exactly as a study does (``experiment=``,
``arch=`` and the preset's overrides), builds the model and task through
``harness.extrapolate.Experiment`` and times ``harness.train.train`` itself - the real loop:
sampling, forward, backward, clipping, the optimizer - in wall-clock seconds over enough
steps for ``--min-time`` seconds, ``--repeats`` times (the median is reported). Beside it,
in the same run and on the same threads, the machine's measured peak: a large fp32 matmul.
A row: steps/s, tokens/s, the step's FLOPs (the model's analytic forward FLOPs x 3 for
forward + backward, the usual 6·N·T convention plus each mixer's own sequence FLOPs) and
the achieved GFLOP/s with its fraction of that peak, the backend that ran, the CPU, torch,
the threads and the commit of the code measured (``--code-root`` measures another
checkout with this script, e.g. the code before a change, so before and after come from one
run on one machine; ``--baseline-root OLD --pairs 3`` runs OLD's case and this one's back to
back, three times over, and prints each pair's ratio). ``--profile`` writes, for each case,
the time the step spends in each C kernel (direct timers around the calls) and the top of a
torch.profiler table.

On a CUDA machine (``--device auto``, the default, as in the apps) the same cases train on
the GPU, the peak is an 8192^3 fp32 matmul there, and ``--profile`` sorts by device time.

Rows go to the result store (``--out``, one file per case; ``python -m harness.report.collect``).
Compare ratios within one run: absolute numbers move with the CPU model and the load.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# preset -> (experiment, overrides): the small models of the studies and the demo
PRESETS = {
    "induction_paper": ("induction_paper", ["model.d_model=64"]),                 # batch 8, L 256
    "induction_b32": ("induction_extrapolation", ["train.mixed_length=false"]),   # batch 32, L 256
    "demo": ("demo_extrapolation", []),                                           # batch 32, L 64
    "lm_d128": ("induction_extrapolation", ["task=lm", "model=cpu_1m", "model.match=width",
                                            "model.d_model=128", "train.batch_size=16",
                                            "train.mixed_length=false", "model.vocab_size=null"]),
}
ARCHS = {"mamba": "induction/mamba", "mamba_triton": "induction/mamba_triton", "mamba2": "induction/mamba2",
         "transformer": "induction/transformer_rope", "linear_attention": "induction/linear_attention",
         "lstm": "induction/lstm", "jamba": "induction/jamba"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS))
    p.add_argument("--archs", nargs="+", choices=list(ARCHS), default=list(ARCHS))
    p.add_argument("--threads", type=int, default=1, help="torch threads (the studies pin 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto = cuda if available (as the apps), else cpu")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of training per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--code-root", type=Path, default=ROOT,
                   help="the checkout whose archs/ and harness/ are measured (default: this one)")
    p.add_argument("--label", default="", help="a name for the code measured (e.g. before, after)")
    p.add_argument("--profile", nargs="*", default=None, metavar="ARCH",
                   help="also write the C kernels' times and a torch.profiler table per case "
                        "(of these archs only, if any are named)")
    p.add_argument("--out", type=Path, default=ROOT / "results/cpu/benchmarks/train_throughput")
    p.add_argument("--baseline-root", type=Path, default=None,
                   help="compare with this checkout: per pair and case, its run then --code-root's, "
                        "back to back in fresh processes (labels before<k>/after<k>), then the "
                        "ratio of each pair")
    p.add_argument("--pairs", type=int, default=3, help="before/after pairs with --baseline-root")
    return p.parse_args(argv)


def compose(code_root: Path, preset: str, arch: str, threads: int, device: str = "auto"):
    from hydra import compose as hydra_compose, initialize_config_dir

    experiment, overrides = PRESETS[preset]
    import harness.config as config  # the apps register their schemas in main(), not on import
    if hasattr(config, "register_configs"):  # (older checkouts measured by --code-root: on import)
        config.register_configs()
    with initialize_config_dir(config_dir=str(code_root / "conf"), version_base="1.3"):
        return hydra_compose("extrapolate", overrides=[
            f"experiment={experiment}", f"arch={ARCHS[arch]}", *overrides, "progress=false", f"device={device}",
            f"train.threads={threads}", "train.eval_every=0", "train.time_budget_s=null",
            "checkpoint_dir=null", f"results_dir={code_root / 'results/local/bench_unused'}"])


def peak_gflops(device=None) -> float:
    """A large fp32 matmul: on a CPU 2048^3 on the current threads (what the BLAS reaches);
    on a GPU 8192^3 at torch's current float32 matmul precision (by default full fp32, not
    TF32), timed with CUDA events - the training steps run at that precision too."""
    import torch
    from torch.utils.benchmark import Timer

    if device is not None and torch.device(device).type == "cuda":
        from harness.timing import time_callable
        a, b = (torch.randn(8192, 8192, device=device) for _ in range(2))
        t = time_callable(lambda: torch.mm(a, b), device=device, warmup=2, repeats=10)
        return 2 * 8192 ** 3 / (t.median_ms / 1e3) / 1e9
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = Timer("torch.mm(a, b)", globals=dict(torch=torch, a=a, b=b),
              num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=2.0)
    return 2 * 2048 ** 3 / t.median / 1e9


def time_training(exp, steps_hint: int, args) -> tuple[list[float], int]:
    """Steps/s of ``repeats`` runs of harness.train.train, each about --min-time seconds."""
    import dataclasses

    from harness.train import train

    base = exp.cfg.train

    def run(steps: int) -> float:
        cfg = dataclasses.replace(base, steps=steps, warmup_steps=min(base.warmup_steps, steps))
        _sync(exp.device)
        start = time.perf_counter()
        train(exp.model, exp.task, cfg, exp.device, progress=False)
        _sync(exp.device)
        return time.perf_counter() - start

    run(3)  # warm-up: first calls, kernel builds, allocator
    per_step = run(steps_hint) / steps_hint
    steps = max(steps_hint, int(args.min_time / per_step))
    return [steps / run(steps) for _ in range(args.repeats)], steps


def _sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class KernelTimers:
    """Wall-clock time of every C-kernel call (archs._native's loaded libraries), by a
    perf_counter around each ctypes call while it is active, restored on exit.

    Why not only torch.profiler: on the 2-vCPU VMs this project runs on, its self-CPU time of
    the ctypes kernels came out ~3x their wall time measured around the call in the same
    training loop (Mamba-2's scan backward: 31-37 ms per call under the profiler, 9-11 ms
    without), so a profile alone overstates the kernels' share of the step. Functions are
    wrapped once the warm-up has loaded and called them (ctypes keeps each looked-up
    function in the library object's __dict__); an older checkout without archs._native
    (``--code-root``) has nothing to time."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        self._patched: list[tuple[object, str, object]] = []

    def __enter__(self) -> "KernelTimers":
        import ctypes

        native = sys.modules.get("archs._native")
        for (source, dtype), lib in getattr(native, "_LOADED", {}).items():
            if not isinstance(lib, ctypes.CDLL):
                continue
            for name, fn in list(vars(lib).items()):
                if isinstance(fn, ctypes._CFuncPtr):
                    key = f"{Path(source).stem}.{name} ({str(dtype).removeprefix('torch.')})"
                    setattr(lib, name, self._timed(fn, self.calls.setdefault(key, [])))
                    self._patched.append((lib, name, fn))
        return self

    @staticmethod
    def _timed(fn, spent: list[float]):
        def call(*args):
            start = time.perf_counter()
            fn(*args)
            spent.append(time.perf_counter() - start)
        return call

    def __exit__(self, *exc) -> None:
        for lib, name, fn in self._patched:
            setattr(lib, name, fn)

    def table(self, steps: int, step_s: float) -> str:
        lines = [f"{'C kernel':40s} {'calls/step':>10s} {'ms/call':>8s} {'ms/step':>8s} {'% of step':>9s}"]
        for key, spent in sorted(self.calls.items(), key=lambda kv: -sum(kv[1])):
            if spent:
                per_step = sum(spent) / steps
                lines.append(f"{key:40s} {len(spent) / steps:10.1f} {1e3 * statistics.median(spent):8.2f} "
                             f"{1e3 * per_step:8.2f} {100 * per_step / step_s:8.1f}%")
        return "\n".join(lines)


def profile_case(exp, out: Path, steps: int = 20) -> None:
    """Two views of ``steps`` training steps: direct timers around the C kernels (no
    profiler running), then the top of a torch.profiler table (a second run)."""
    import dataclasses

    from torch.profiler import profile

    from harness.train import train

    cfg = dataclasses.replace(exp.cfg.train, steps=steps, warmup_steps=0)
    with KernelTimers() as timers:
        start = time.perf_counter()
        train(exp.model, exp.task, cfg, exp.device, progress=False)
        _sync(exp.device)
        step_s = (time.perf_counter() - start) / steps
    with profile() as prof:
        start = time.perf_counter()
        train(exp.model, exp.task, cfg, exp.device, progress=False)
        _sync(exp.device)
        profiled_s = (time.perf_counter() - start) / steps
    # on a GPU, what the device spent in each kernel is the table to read
    sort = "self_device_time_total" if exp.device.type == "cuda" else "self_cpu_time_total"
    out.write_text(
        f"{steps} training steps: {1e3 * step_s:.1f} ms/step with only the kernel timers, "
        f"{1e3 * profiled_s:.1f} ms/step under torch.profiler.\n\n"
        f"Direct timers (perf_counter around each C-kernel call; what the step spends in them):\n"
        f"{timers.table(steps, step_s)}\n\n"
        f"torch.profiler, sorted by {sort} (the profiler's own run; its CPU times of ctypes "
        f"kernels can be inflated several-fold on a VM - compare with the timers above):\n"
        + prof.key_averages().table(sort_by=sort, row_limit=25))


def run(args: argparse.Namespace) -> list[dict]:
    sys.path.insert(0, str(args.code_root.resolve()))
    import torch

    from harness.env import environment
    from harness.extrapolate import Experiment, _as_schema
    from harness.results import ResultStore, store_case_row

    torch.set_num_threads(args.threads)
    env = environment()
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    machine = env["gpu"] if device.type == "cuda" else env["cpu"]
    peak = peak_gflops(device)
    print(f"peak (fp32 matmul, {'GPU' if device.type == 'cuda' else f'{args.threads} thread(s)'}): "
          f"{peak:.1f} GFLOP/s on {machine}")
    store, rows = ResultStore(args.out), []
    for preset in args.presets:
        for arch in args.archs:
            exp = Experiment(_as_schema(compose(args.code_root, preset, arch, args.threads, args.device)))
            tc = exp.cfg.train
            rates, steps = time_training(exp, 5, args)
            sps = statistics.median(rates)
            flops = 3 * exp.model.analytic_flops(tc.batch_size, tc.seq_len)
            row = dict(preset=preset, impl=arch, label=args.label, d_model=exp.model.cfg.d_model,
                       n_layers=exp.model.cfg.n_layers, batch=tc.batch_size, seq_len=tc.seq_len,
                       params=exp.model.num_params(), backend_used=exp.model.backends(exp.device),
                       steps_per_s=sps, steps_per_s_runs=rates, steps_timed=steps,
                       tokens_per_s=sps * tc.batch_size * tc.seq_len, gflop_per_step=flops / 1e9,
                       gflops=sps * flops / 1e9, peak_gflops=peak, fraction_of_peak=sps * flops / 1e9 / peak,
                       threads=args.threads, cpu_model=env["cpu"], gpu_model=env["gpu"] if device.type == "cuda" else None,
                       torch_version=env["torch"],
                       # absent from a --code-root older than the precision fields (4830b9e)
                       fp32_matmul=env.get("fp32_matmul"), triton_fp32_dot=env.get("triton_fp32_dot"),
                       code_commit=env["git_commit"], code_dirty=env["git_dirty"],
                       python=platform.python_version(), status="ok")
            store_case_row(store, row, identity=("preset", "impl", "label", "batch", "seq_len", "d_model",
                                                 "cpu_model", "gpu_model", "threads", "code_commit"),
                           name=("preset", "impl", "label"), experiment="bench_train_throughput",
                           arch=arch, backend=row["backend_used"], mode="train_step",
                           time_ms=1e3 / sps, device=machine)
            rows.append(row)
            print(f"{preset:16s} {arch:17s} {row['backend_used']:14s} {sps:8.2f} steps/s "
                  f"{row['tokens_per_s']:9.0f} tok/s {row['gflops']:6.1f} GFLOP/s "
                  f"({100 * row['fraction_of_peak']:.1f}% of peak)", flush=True)
            if args.profile is not None and (not args.profile or arch in args.profile):
                name = f"profile_{preset}_{arch}{'_' + args.label if args.label else ''}.txt"
                profile_case(exp, args.out / name)
    return rows


def compare(args: argparse.Namespace) -> dict[tuple[str, str], list[float]]:
    """Before/after pairs on a noisy machine: for each pair and case, the baseline checkout's
    run and then the measured one's, each a fresh process of this script (two checkouts of
    the same packages cannot share one), so a burst of load hits both sides of a pair rather
    than one side of the comparison. Returns {(preset, arch): [after/before per pair]}."""
    import re
    import subprocess

    common = ["--threads", str(args.threads), "--min-time", str(args.min_time),
              "--repeats", str(args.repeats), "--out", str(args.out)]
    ratios: dict[tuple[str, str], list[float]] = {}
    for pair in range(1, args.pairs + 1):
        for preset in args.presets:
            for arch in args.archs:
                rate = {}
                for side, root in (("before", args.baseline_root), ("after", args.code_root)):
                    label = f"{args.label}{side}{pair}"
                    done = subprocess.run([sys.executable, __file__, "--presets", preset, "--archs", arch,
                                           "--code-root", str(root), "--label", label, *common],
                                          capture_output=True, text=True)
                    if done.returncode:  # the child's own error, not only its exit status
                        raise RuntimeError(f"[{label}] {preset} {arch} on {root} exited with "
                                           f"{done.returncode}:\n{done.stderr[-3000:]}")
                    print(f"[{label}] " + done.stdout.strip().replace("\n", f"\n[{label}] "), flush=True)
                    # the case's line: "<preset> <arch> <backend> <steps/s> steps/s ..."
                    found = re.search(rf"^{preset}\s+{arch}\s+\S+\s+([0-9.]+) steps/s", done.stdout, re.M)
                    rate[side] = float(found.group(1))
                ratios.setdefault((preset, arch), []).append(rate["after"] / rate["before"])
    print(f"\n{'preset':16s} {'arch':17s} after/before per pair (median)")
    for (preset, arch), r in ratios.items():
        print(f"{preset:16s} {arch:17s} {', '.join(f'{x:.2f}x' for x in r)} "
              f"({statistics.median(r):.2f}x)")
    return ratios


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    if args.baseline_root is not None:
        compare(args)
    else:
        run(args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
