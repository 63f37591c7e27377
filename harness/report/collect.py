"""Merge per-point result files into one table: ``results.parquet`` and ``results.csv``.

    python -m harness.report.collect RESULTS_DIR [--out OUT_DIR]

Reads every point file below RESULTS_DIR (``harness.results.load_rows``: every row is
validated; a rejected file or line is named with its line number and the exit status is 1),
and writes the two files to OUT_DIR (default RESULTS_DIR) as one group
(``harness.results.atomic_write_group``): a kill at any moment leaves both old or both
new once collect runs again. Two collects into one OUT_DIR take turns (a lock held from
reading the rows to replacing the tables), so both tables always hold the same rows. A
collect that accepted no row leaves the tables as they were and exits 1. Re-running is
safe: it rebuilds both files from the point files, which stay the source of truth.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.results import (atomic_write_group, group_lock, load_rows, load_rows_reporting, order_columns,
                             results_dir_cli)


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


def collect(results_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
            rejected: list[str] | None = None) -> tuple[Path, Path, int]:
    """Write ``results.parquet`` and ``results.csv``; return their paths and the row count.
    Rows that break the schema are left out and named in ``rejected`` (and a warning)."""
    out = Path(out_dir) if out_dir is not None else Path(results_dir)
    with group_lock(out, "collect"):  # the rows read and the tables written belong together
        return write_tables(load_rows(results_dir, rejected), out)


class NoRowsError(ValueError):
    """Collect accepted no row: the tables are left as they were."""


def write_tables(rows: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path, int]:
    """Write ``rows`` as ``results.parquet`` and ``results.csv`` in ``out_dir``, as one group;
    return their paths and the row count. No rows: ``NoRowsError``, nothing replaced."""
    if rows.empty:
        raise NoRowsError(f"no valid rows to collect; {Path(out_dir) / 'results.parquet'} and results.csv "
                          f"are left as they were")
    df = _parquet_safe(order_columns(rows))
    parquet, csv = atomic_write_group(Path(out_dir), "collect", {
        "results.parquet": lambda p: df.to_parquet(p, index=False),
        "results.csv": lambda p: df.to_csv(p, index=False)})
    return parquet, csv, len(df)


def main(argv: Sequence[str] | None = None) -> int:
    args, _, _ = results_dir_cli(
        "archbench-collect", __doc__.splitlines()[0], argv=argv, load=False,
        results_help="directory holding per-point *.jsonl files (searched recursively)",
        out_help="where to write results.parquet/csv (default: results_dir)")
    out = Path(args.out if args.out is not None else args.results_dir)
    with group_lock(out, "collect"):
        rows, rejected = load_rows_reporting(args.results_dir)  # each rejected file:line on stderr
        try:
            parquet, csv, n = write_tables(rows, out)
        except NoRowsError as exc:
            print(f"collect: {exc} ({len(rejected)} file(s)/line(s) rejected)", file=sys.stderr)
            return 1
    print(f"{n} rows -> {parquet} and {csv}")
    if rejected:
        print(f"{len(rejected)} file(s)/line(s) rejected (not in the tables); fix or remove them "
              "(a re-run of the sweep re-measures a corrupt point)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
