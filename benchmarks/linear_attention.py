"""Training-step cost of chunked vs quadratic linear attention (and chunked vs recurrent SSD).

Forward + backward tokens/s of one mixer, swept over sequence length, timed with
``torch.utils.benchmark.Timer``. Each length first runs every implementation once to
check that their outputs match the reference one; an implementation whose estimated
memory or time exceeds the budget is recorded as skipped (or oom if it fails), never
crashes the sweep. Each case is a row file in the result store (``--out`` folder; ``harness.report.collect``
merges them into parquet/csv).

    python -m benchmarks.linear_attention                       # defaults below
    python -m benchmarks.linear_attention --lengths 1024 4096 --no-ssd
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import torch
from torch.utils.benchmark import Timer

from archs.linear_attention import LinearAttentionConfig, LinearAttentionMixer
from archs.mamba2 import Mamba2Config, Mamba2Mixer
from harness.results import ResultStore, store_case_row

FIELDS = ["bench", "impl", "seq_len", "status", "reason", "tokens_per_s", "median_ms",
          "n_runs", "max_abs_diff_vs_ref", "batch", "d_model", "n_heads", "dtype", "mode",
          "device", "torch_version", "threads", "git_commit", "timestamp", "command"]


@dataclass
class Case:
    """One implementation of one benchmark: how to build it and its cost estimates."""
    bench: str
    impl: str
    build: Callable[[], torch.nn.Module]
    n_heads: int
    est_bytes: Callable[[int], float]  # rough peak memory of fwd+bwd at length L
    is_ref: bool = False  # the outputs the other implementations are compared to


def linear_attention_cases(d_model: int, n_heads: int) -> list[Case]:
    def build(backend: str) -> Callable[[], torch.nn.Module]:
        def make():
            torch.manual_seed(0)  # same weights for every implementation
            return LinearAttentionMixer(LinearAttentionConfig(
                d_model=d_model, n_heads=n_heads, chunk_size=64, backend=backend))
        return make

    # naive: about ten (H, L, L) float32 tensors alive across forward and backward
    return [Case("linear_attention", "naive", build("ref"), n_heads,
                 lambda L: 10 * n_heads * L * L * 4, is_ref=True),
            Case("linear_attention", "chunked", build("chunked"), n_heads,
                 lambda L: 40 * L * d_model * 4)]


def ssd_cases(d_model: int) -> list[Case]:
    cfg = dict(d_model=d_model, d_state=64, headdim=64, chunk_size=64)
    heads = Mamba2Config(**cfg).nheads

    def build(backend: str) -> Callable[[], torch.nn.Module]:
        def make():
            torch.manual_seed(0)
            return Mamba2Mixer(Mamba2Config(**cfg, backend=backend))
        return make

    # recurrent: autograd keeps every step's (H, P, N) state
    return [Case("ssd", "recurrent", build("ref"), heads,
                 lambda L: 6 * L * heads * 64 * 64 * 4, is_ref=True),
            Case("ssd", "chunked", build("chunked"), heads,
                 lambda L: 8 * L * heads * 64 * 64 * 4 / 64 + 60 * L * d_model * 4)]


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              check=False).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def fwd_bwd(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        y = model(x)
        y.square().mean().backward()
        return y
    return run


def compare(y: torch.Tensor, bench: str, ref_out: dict) -> float | str:
    """Max |y - y_ref| over the longest reference run not longer than y. The inputs of
    length L are a prefix of the longer ones (same seed), so by causality the first L
    outputs must agree even where the reference itself was skipped."""
    lengths = [L for (b, L) in ref_out if b == bench and L <= y.shape[1]]
    if not lengths:
        return ""
    ref = ref_out[(bench, max(lengths))]
    return float((y[:, :ref.shape[1]] - ref).abs().max())


def measure(case: Case, L: int, args: argparse.Namespace, ref_out: dict) -> dict:
    """Check, then time, one implementation at one length; returns a partial row.

    ``max_abs_diff_vs_ref`` compares against the reference at this length or, where that
    was skipped, the longest shorter one (see ``compare``)."""
    row = {"bench": case.bench, "impl": case.impl, "seq_len": L, "n_heads": case.n_heads}
    if case.est_bytes(L) > args.max_mem_gb * 2**30:
        return {**row, "status": "skipped",
                "reason": f"estimated {case.est_bytes(L) / 2**30:.1f} GiB > --max-mem-gb "
                          f"{args.max_mem_gb}"}
    last = args._last_seconds.get((case.bench, case.impl))
    if last is not None and last[1] * (L / last[0]) > args.max_seconds:
        return {**row, "status": "skipped",
                "reason": f"extrapolated {last[1] * L / last[0]:.0f} s/run > --max-seconds "
                          f"{args.max_seconds}"}
    x = torch.randn(args.batch, L, args.d_model, generator=torch.Generator().manual_seed(1))
    try:
        run = fwd_bwd(case.build(), x)
        start = time.perf_counter()
        y = run().detach()  # warm-up, correctness check and time estimate in one
        args._last_seconds[(case.bench, case.impl)] = (L, time.perf_counter() - start)
        if case.is_ref:
            ref_out[(case.bench, L)] = y
        diff = "" if case.is_ref else compare(y, case.bench, ref_out)
        if diff != "" and diff > args.tolerance:
            raise AssertionError(f"outputs differ from the reference by {diff:.2e}")
        m = Timer("run()", globals={"run": run}).blocked_autorange(min_run_time=args.min_run_time)
        args._last_seconds[(case.bench, case.impl)] = (L, m.median)  # better than warm-up
    except (RuntimeError, MemoryError) as err:
        status = "oom" if "alloc" in str(err).lower() or isinstance(err, MemoryError) else "error"
        return {**row, "status": status, "reason": str(err).splitlines()[0][:200]}
    except AssertionError as err:
        return {**row, "status": "error", "reason": str(err)}
    return {**row, "status": "ok", "reason": "", "median_ms": round(m.median * 1e3, 3),
            "tokens_per_s": round(args.batch * L / m.median, 1),
            "n_runs": len(m.times) * m.number_per_run, "max_abs_diff_vs_ref": diff}


def store_row(store: ResultStore, row: dict) -> dict:
    """One measured case as a result row in the store (one file per point, the project's
    atomic writer): collect/plot/report read it like any sweep's rows."""
    return store_case_row(store, row, identity=("bench", "impl", "seq_len", "batch", "d_model", "n_heads",
                                                "dtype", "mode", "device", "threads"),
                          name=("bench", "impl", "seq_len"), experiment="bench_linear_attention",
                          arch=row["impl"], backend=row["impl"], time_ms=row.get("median_ms") or None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4, help="linear attention heads")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--min-run-time", type=float, default=2.0, help="seconds per timing")
    p.add_argument("--max-mem-gb", type=float, default=4.0, help="skip estimated larger")
    p.add_argument("--max-seconds", type=float, default=20.0, help="skip slower runs")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |y - y_ref| allowed")
    p.add_argument("--no-ssd", action="store_true", help="only linear attention")
    p.add_argument("--out", default="results/cpu/benchmarks/linear_attention",
                   help="results folder: one row file per case (harness.report.collect merges them)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.out.endswith(".csv"):
        raise SystemExit(f"--out {args.out}: rows now go to a results folder (one file per case); "
                         f"give a folder and run `python -m harness.report.collect FOLDER` for a CSV")
    store = ResultStore(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    args._last_seconds = {}
    cases = linear_attention_cases(args.d_model, args.heads)
    cases += [] if args.no_ssd else ssd_cases(args.d_model)
    common = {"batch": args.batch, "d_model": args.d_model, "dtype": "float32",
              "mode": "fwd+bwd", "device": f"cpu ({platform.processor() or platform.machine()})",
              "torch_version": torch.__version__, "threads": torch.get_num_threads(),
              "git_commit": git_commit(),
              "command": shlex.join(["python", "-m", "benchmarks.linear_attention",
                                     *(sys.argv[1:] if argv is None else argv)])}
    rows, ref_out = [], {}
    runs = [(c.bench, L, not c.is_ref, i) for i, c in enumerate(cases) for L in args.lengths]
    for _, L, _, i in sorted(runs):  # by bench, then length, the reference first
        case = cases[i]
        row = {**common, **measure(case, L, args, ref_out),
               "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        rows.append(row)
        print(f"{row['bench']:>16} {row['impl']:>9} L={L:>6} {row['status']:>7} "
              f"{row.get('tokens_per_s', ''):>10} tok/s  {row.get('median_ms', ''):>10} ms "
              f"diff={row.get('max_abs_diff_vs_ref', '')} {row['reason']}", flush=True)
        store_row(store, row)  # one file per case, as it is measured: partial runs keep data
    return rows


if __name__ == "__main__":
    main()
