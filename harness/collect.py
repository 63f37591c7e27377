"""Merge per-point result files into one table: ``results.parquet`` and ``results.csv``.

    python -m harness.collect RESULTS_DIR [--out OUT_DIR]

Reads every point file below RESULTS_DIR (``harness.results.load_rows``), writes the
two files to OUT_DIR (default RESULTS_DIR) atomically, core columns first. Re-running
is safe: it rebuilds both files from the point files, which stay the source of truth.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from harness.results import load_rows, order_columns


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Free columns may mix types across experiments (an int here, a string there);
    parquet needs one type per column, so such columns become strings (nulls kept)."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype != object:
            continue
        kinds = {type(v) for v in df[col].dropna()}
        if len(kinds) > 1 and not kinds <= {int, float}:
            df[col] = df[col].map(lambda v: v if isinstance(v, str) else json.dumps(v), na_action="ignore")
    return df


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def collect(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> tuple[Path, Path, int]:
    """Write ``results.parquet`` and ``results.csv``; return their paths and the row count."""
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = _parquet_safe(order_columns(load_rows(results_dir)))
    parquet, csv = out / "results.parquet", out / "results.csv"
    _atomic(parquet, lambda p: df.to_parquet(p, index=False))
    _atomic(csv, lambda p: df.to_csv(p, index=False))
    return parquet, csv, len(df)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archbench-collect", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", help="directory holding per-point *.jsonl files (searched recursively)")
    parser.add_argument("--out", default=None, help="where to write results.parquet/csv (default: results_dir)")
    args = parser.parse_args(argv)
    if not Path(args.results_dir).is_dir():
        parser.error(f"{args.results_dir} is not a directory")
    parquet, csv, n = collect(args.results_dir, args.out)
    print(f"{n} rows -> {parquet} and {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
