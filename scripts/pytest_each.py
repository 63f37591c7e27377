#!/usr/bin/env python3
"""Run each selected test in a pytest process of its own, up to J of them side by side.

    python scripts/pytest_each.py [-j J] [-m MARKEXPR] [PATH ...]

For the GPU tests of a bare machine (scripts/gpu_check.py): Triton compiles fla's and
mamba_ssm's kernels on first use, about a minute per test on an H200's host, and one process
compiles them one after another. Measured there (2026-12-04): one process per test, 98 s for
all of them; pytest-xdist with 16 workers, unfinished after 148 s - its load scheduling hands
some workers two compiling tests in a row. Each test's output is printed whole as it ends;
the exit status is 1 if any test failed or errored, or if none was selected, else 0.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSED, NOTHING = 0, 5  # pytest's exit codes for "all passed or skipped" and "none selected"


def collect(markexpr: str | None, paths: list[str]) -> list[str]:
    """The selected tests as node ids with absolute paths (pytest's own ids are relative to a
    rootdir that depends on the paths given, and each test runs from the repository root)."""
    import pytest

    class Ids:
        nodes: list[str] = []

        def pytest_collection_finish(self, session):
            root = Path(session.config.rootpath)
            self.nodes = [str(root / item.nodeid.split("::", 1)[0]) + "::" + item.nodeid.split("::", 1)[1]
                          for item in session.items]

    ids = Ids()
    args = ["--collect-only", "-q", "-p", "no:cacheprovider", *paths] + (["-m", markexpr] if markexpr else [])
    rc = pytest.main(args, plugins=[ids])
    if rc not in (PASSED, NOTHING):
        raise SystemExit(f"collection failed (pytest exit {rc})")
    return ids.nodes


def run_one(node: str, markexpr: str | None) -> tuple[str, int, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", node]
    if markexpr:
        cmd += ["-m", markexpr]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return node, done.returncode, time.monotonic() - start, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("-m", dest="markexpr", default=None, help="pytest marker expression")
    p.add_argument("paths", nargs="*", default=["tests"])
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"-j must be >= 1, got {args.jobs}")
    os.chdir(ROOT)
    nodes = collect(args.markexpr, args.paths)
    if not nodes:
        print(f"no tests selected by -m {args.markexpr!r} in {args.paths}", flush=True)
        return 1
    print(f"{len(nodes)} tests, {args.jobs} at a time", flush=True)
    failed = []
    with ThreadPoolExecutor(args.jobs) as pool:
        # each test's output as soon as it ends: a run stopped by its time budget keeps the
        # verdicts of the tests that finished
        for done in as_completed([pool.submit(run_one, n, args.markexpr) for n in nodes]):
            node, rc, seconds, output = done.result()
            verdict = "ok" if rc in (PASSED, NOTHING) else f"FAILED (exit {rc})"
            print(f"===== {node}: {verdict}, {seconds:.1f} s\n{output.rstrip()}\n", flush=True)
            if rc not in (PASSED, NOTHING):
                failed.append(node)
    print(f"{len(nodes) - len(failed)} of {len(nodes)} tests passed or skipped; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
