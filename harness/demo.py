"""The README's main job: a small cost sweep and a small train-short-test-long run, with
plots, a report and a terminal summary of what they found.

    python -m harness.demo            # (make demo) results/local/demo/{cost,extrapolation}/
    python -m harness.demo --quick    # a smoke version of the same pipeline (seconds)

It only chains the public entry points - the Hydra apps (as a user would call them),
``harness.report.collect`` and ``harness.report.plot`` - so what the demo shows is what they
do; the summary reuses ``harness.report.fit`` (exponents, crossovers) and
``harness.report.series`` (names, groups). Re-running resumes: points already measured are
not measured again (so time a run only on an empty ``--out``). On a machine with a GPU the
same command runs on it (``--device auto``) and measures the cost half to longer lengths;
the device is printed.
The settings live in ``conf/experiment/cost_cpu_demo.yaml`` and ``demo_extrapolation.yaml``;
the bigger versions are the ``cost_cpu`` and ``induction_extrapolation`` experiments.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "local" / "demo"


@dataclass(frozen=True)
class Half:
    """One half of the demo: a Hydra app run on one experiment preset."""

    app: str          # harness.<app>
    experiment: str   # conf/experiment/<experiment>.yaml
    folder: str       # results go to OUT/<folder>


HALVES = (Half("cost", "cost_cpu_demo", "cost"), Half("extrapolate", "demo_extrapolation", "extrapolation"))
# --quick: the same pipeline on lengths and budgets that take seconds (a smoke test).
QUICK = {
    "cost": ["bench.seq_lens=[128,256,512]", "bench.min_run_time=0.02", "bench.min_repeats=1"],
    "extrapolate": ["train.steps=30", "train.warmup_steps=5", "train.target_acc=null", "eval.seq_lens=[64,128]",
                    "eval.n_sequences=4"],
}
# A GPU is fast enough to take the cost sweep to lengths where the crossover is clear.
GPU_EXTRA = {"cost": ["bench.seq_lens=[256,512,1024,2048,4096,8192,16384]"]}
# Log lines without Hydra's timestamp/logger prefix: the demo's output is read, not grepped.
TERSE_LOGS = ["hydra.job_logging.formatters.simple.format='%(message)s'",
              "hydra.hydra_logging.formatters.simple.format='%(message)s'"]


def app_command(half: Half, out: Path, device: str, extra: list[str]) -> list[str]:
    """The command line of one half, exactly as a user would type it."""
    results = out / half.folder
    cmd = [sys.executable, "-m", f"harness.{half.app}", f"experiment={half.experiment}",
           f"device={device}", f"results_dir={results}", f"hydra.sweep.dir={out / 'multirun' / half.folder}"]
    if half.app == "extrapolate":
        cmd.append(f"checkpoint_dir={out / 'checkpoints'}")
    return [*cmd, *TERSE_LOGS, *extra]


# ---------------------------------------------------------------- terminal summary


def _ci(lo: float, hi: float) -> str:
    return f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) and math.isfinite(hi) else ""


def exponent_lines(cost: pd.DataFrame) -> list[str]:
    """Fitted time exponent per architecture and mode (``harness.report.fit.fit_exponent``), with its
    95% CI; "not resolved" where harness.report.fit's rules say the data cannot support it."""
    from harness.report.fit import by_series, fit_exponent

    fits = fit_exponent(by_series(cost), y="time_ms")
    if fits.empty:
        return ["  (no timing rows)"]
    cells = {(a, m): (f"{s:.2f}{_ci(lo, hi)}{' not resolved' if why else ''}" if math.isfinite(s) else f"n/a ({reason})")
             for a, m, s, lo, hi, why, reason in zip(fits["arch"], fits["mode"], fits["slope"], fits["ci_low"],
                                                     fits["ci_high"], fits["unresolved"], fits["reason"])}
    table = pd.Series(cells).unstack()
    span = fits.dropna(subset=["x_min"])
    fitted = (f", fitted over {int(span['x_min'].min())}..{int(span['x_max'].max())} tokens"
              if not span.empty else "")
    lines = [f"  time per call ∝ L^k (k with its 95% CI{fitted}):",
             *("    " + line for line in table.to_string().splitlines())]
    unresolved = fits[(fits["unresolved"] != "") & fits["slope"].notna()]
    return lines + [f"    not resolved: {r.arch} {r.mode}: {r.unresolved}" for r in unresolved.itertuples()]


def crossover_lines(cost: pd.DataFrame) -> list[str]:
    """Where one architecture's time curve crosses another's, with its interval
    (``harness.report.fit.crossover_table``), or "not resolved" and why."""
    from harness.report.fit import by_series, crossover_table

    table = crossover_table(by_series(cost))
    found = table[table["x"].notna()] if not table.empty else table
    if found.empty:
        return ["  no two time curves cross within the measured lengths (or 4x beyond)"]
    lines = []
    for row in found.itertuples(index=False):
        short, long_ = (row.a, row.b) if row.a_lower_below else (row.b, row.a)
        how = "measured" if row.method == "interpolated" else "extrapolated from the fits"
        if row.unresolved:
            lines.append(f"  {row.mode:<10} {long_} vs {short}: crossover not resolved (≈ {row.x:,.0f}, {how}; "
                         f"{row.unresolved})")
        else:
            lines.append(f"  {row.mode:<10} {long_} is faster than {short} beyond L ≈ {row.x:,.0f} "
                         f"[{row.x_low:,.0f}, {row.x_high:,.0f}] ({how})")
    return lines


def accuracy_lines(ext: pd.DataFrame) -> list[str]:
    """Accuracy by architecture and evaluation length, one table per (task, train length);
    a curve with a model whose training did not finish or converge is marked and explained."""
    from harness.report.series import (UNFINISHED, extrapolation_groups, format_length, series_names,
                                       training_notes)

    ok = ext[ext["status"] == "ok"]
    if ok.empty or "accuracy" not in ok.columns:
        return ["  (no successful evaluation rows)"]
    ok = ok.assign(arch=series_names(ok), eval_seq_len=pd.to_numeric(ok["eval_seq_len"]))
    lines = []
    for title, rows in extrapolation_groups(ok):
        train = set(pd.to_numeric(rows.get("train_seq_len", pd.Series(dtype=float)), errors="coerce").dropna())
        table = rows.groupby(["arch", "eval_seq_len"])["accuracy"].mean().unstack("eval_seq_len")
        table.columns = [format_length(c) + ("*" if c in train else "") for c in table.columns]
        notes = training_notes(rows)
        table.index = [f"{a} {UNFINISHED}" if a in notes else a for a in table.index]  # no "arch" header line
        lines.append(f"  accuracy, {title} (* = training length):")
        lines += ["    " + line for line in table.map(lambda v: f"{v:.2f}").to_string().splitlines()]
        lines += [f"    {UNFINISHED} {name}: {why} - not what the architecture can do" for name, why in notes.items()]
    return lines


def failure_lines(df: pd.DataFrame) -> list[str]:
    failed = df[df["status"] != "ok"]
    if failed.empty:
        return []
    counts = failed.groupby(["status"]).size()
    return ["  not ok: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " (see the report)"]


def summary(out: Path) -> str:
    """The terminal summary of the demo's results under ``out`` (read from result files)."""
    from harness.results import load_rows

    lines = ["", "=" * 72, "archbench demo: what it found", "=" * 72]
    cost_dir, ext_dir = out / "cost", out / "extrapolation"
    cost, ext = load_rows(cost_dir), load_rows(ext_dir)
    if not cost.empty:
        devices = ", ".join(sorted(map(str, cost["device"].dropna().unique())))
        lines += [f"Cost ({devices}):", *exponent_lines(cost), "  crossovers (time per call):",
                  *crossover_lines(cost), *failure_lines(cost)]
    if not ext.empty:
        lines += ["Train short, test long:", *accuracy_lines(ext), *failure_lines(ext)]
    lines.append("Figures and reports:")
    for folder in (cost_dir, ext_dir):
        lines += [f"  {p}" for p in sorted((folder / "figures").glob("*.png"))]
        if (folder / "report.md").exists():
            lines.append(f"  {folder / 'report.md'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke version of the same pipeline (seconds)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one, else cpu), cpu or cuda")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default {OUT}, or {OUT}_quick with --quick)")
    args = parser.parse_args(argv)
    # Imported here so that --help answers without loading torch.
    from harness.devices import resolve_device
    from harness.env import device_name
    from harness.report.collect import collect
    from harness.report.plot import main as plot_main

    out = (args.out or Path(f"{OUT}_quick" if args.quick else OUT)).resolve()
    device = resolve_device(args.device)
    print(f"archbench demo on {device.type} ({device_name(device)}); results in {out}", flush=True)
    start = time.perf_counter()
    for half in HALVES:
        extra = QUICK[half.app] if args.quick else GPU_EXTRA.get(half.app, []) if device.type == "cuda" else []
        cmd = app_command(half, out, device.type, extra)
        print(f"\n== {half.folder}: python -m harness.{half.app} experiment={half.experiment}"
              f"{' ' + ' '.join(extra) if extra else ''}", flush=True)
        code = subprocess.run(cmd, cwd=ROOT).returncode
        if code != 0:
            print(f"\ndemo: the {half.folder} half failed (exit {code}); its error is above. "
                  f"Points already measured are kept in {out / half.folder}; re-running resumes.",
                  file=sys.stderr)
            return code
        collect(out / half.folder)
        plot_main([str(out / half.folder), "--out", str(out / half.folder)])
    print(summary(out))
    print(f"\ndemo done in {time.perf_counter() - start:.0f} s on {device.type}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
