"""The README's main job: a small CPU cost sweep and a small extrapolation run, with plots.

    python -m harness.demo            # (make demo) results/local/demo/{cost,extrapolation}/
    python -m harness.demo --quick    # a one-minute smoke version of the same pipeline

It only chains the public entry points - the Hydra apps (as a user would call them),
``harness.collect`` and ``harness.plot`` - so what the demo shows is what they do.
Re-running resumes: points already measured are not measured again.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from harness.collect import collect
from harness.plot import main as plot_main

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "local" / "demo"
QUICK = {
    "cost": ["bench.seq_lens=[256,512,1024]", "bench.min_run_time=0.05"],
    "extrapolate": ["train.steps=60", "eval.seq_lens=[128,256,512]", "eval.n_sequences=8"],
}


def _app(app: str, experiment: str, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", f"harness.{app}", f"experiment={experiment}",
           f"hydra.sweep.dir={OUT / 'multirun' / app}", *extra]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke version")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    suffix = "_quick" if args.quick else ""
    for app, experiment, kind in (("cost", "cost_cpu_demo", "cost"),
                                  ("extrapolate", "demo_extrapolation", "extrapolation")):
        results = OUT / f"{kind}{suffix}"
        extra = [f"results_dir={results}", *(QUICK[app] if args.quick else [])]
        if app == "extrapolate":
            extra.append(f"checkpoint_dir={OUT / f'checkpoints{suffix}'}")
        _app(app, experiment, extra)
        collect(results)
        plot_main([str(results), "--out", str(results)])
    print(f"\ndemo done in {time.perf_counter() - start:.0f} s; open {OUT}/*/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
