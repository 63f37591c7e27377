"""Rows and tables (issue 24): values checked per column, one file per point, collect that
never mixes two runs' tables or replaces them with nothing, labels that never share keys."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.report import collect as collect_mod
from harness import cost
from harness.results import ResultStore, load_rows, load_rows_where, make_row, point_files, read_point_file
from tests.apps import COST_SMOKE, compose
from tests.paths import ROOT


def _row(**kw):
    return make_row(**{"arch": "a", "mode": "forward", "seq_len": 16, "env": {}, **kw})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- per-column types and ranges -----------------------------------------------------------

@pytest.mark.parametrize("column, value, problem", [
    ("seq_len", "64k", "'seq_len' must be an integer"),
    ("time_ms", "fast", "'time_ms' must be a number"),
    ("batch", True, "'batch' must be an integer"),
    ("params", 12.5, "'params' must be an integer"),
    ("time_ms", -3.0, "'time_ms' must be >= 0"),
    ("accuracy", 1.5, r"'accuracy' must be in \[0, 1\]"),
    ("eval_seq_len", 0, "'eval_seq_len' must be >= 1"),
    ("device", 3, "'device' must be a text"),
    ("early_stopped", "no", "'early_stopped' must be a true/false"),
])
def test_row_values_of_the_wrong_type_or_range_are_refused(column, value, problem):
    with pytest.raises(ValueError, match=problem):
        _row(**{column: value})


def test_a_stored_row_with_a_bad_value_is_rejected_and_remeasured(tmp_path):
    store = ResultStore(tmp_path)
    good = _row(time_ms=1.0)
    (tmp_path / "p.jsonl").write_text(json.dumps({**good, "time_ms": "fast", "point_key": "p"}) + "\n")
    rows, problems = read_point_file(tmp_path / "p.jsonl")
    assert not rows and "time_ms" in problems[0] and "p.jsonl:1" in problems[0]
    with pytest.warns(RuntimeWarning, match="corrupt result file"):
        assert not store.has_valid("p")  # resume measures it again, never counts it as done
    assert (tmp_path / "p.jsonl.corrupt").exists()


def test_every_committed_row_passes_the_schema():
    problems = [p for path in point_files(ROOT / "results") for p in read_point_file(path)[1]]
    assert not problems, problems[:5]


def test_a_full_disk_while_writing_a_point_says_so_and_leaves_no_part(full_disk):
    store = ResultStore(full_disk / "res")
    with pytest.raises(OSError, match=r"disk full: cannot write .*res/p\.jsonl"):
        store.write(_row(), "p")
    assert not list((full_disk / "res").iterdir())
    (full_disk / "filler").unlink()
    store.write(_row(), "p")
    assert len(load_rows(full_disk / "res")) == 1


# --- one file per point: force and re-measured points leave no duplicate ------------------

@pytest.mark.slow
def test_force_leaves_no_duplicate_of_a_point_in_a_job_subfolder(tmp_path):
    args = [*COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "bench.modes=[forward]", "bench.seq_lens=[16]"]
    cost.run(compose("cost", *args))
    (first,) = point_files(tmp_path)
    (tmp_path / "0").mkdir()
    first.rename(tmp_path / "0" / first.name)  # as an earlier Hydra job wrote it, in its subfolder
    df = cost.run(compose("cost", *args, "force=true"))
    assert len(df) == 1 and len(load_rows(tmp_path)) == 1
    assert (tmp_path / "0" / f"{first.name}.replaced").exists()  # kept, out of the table


def test_a_point_with_files_in_two_folders_is_named_when_loaded(tmp_path):
    for sub in ("0", "1"):
        ResultStore(tmp_path / sub).write(_row(), "p")
    with pytest.warns(RuntimeWarning, match="point p has 2 files"):
        load_rows(tmp_path)


# --- labels that sanitise alike keep their own keys -----------------------------------------

@pytest.mark.slow
def test_labels_that_sanitise_alike_keep_separate_points(tmp_path):
    args = [*COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "bench.modes=[forward]", "bench.seq_lens=[16]"]
    for label in ("mämba", "mömba"):
        cost.run(compose("cost", *args, f"+arch.label='{label}'"))
    df = load_rows(tmp_path)
    assert sorted(df["label"]) == ["mämba", "mömba"] and df["point_key"].is_unique
    assert len(load_rows_where(tmp_path, label="mömba")) == 1


# --- collect ---------------------------------------------------------------------------------

def test_collect_that_accepts_no_row_leaves_the_tables(tmp_path, capsys):
    ResultStore(tmp_path).write(_row(), "p")
    assert collect_mod.main([str(tmp_path)]) == 0
    before = {name: _sha(tmp_path / name) for name in ("results.parquet", "results.csv")}
    (tmp_path / "p.jsonl").write_text("garbage\n")
    assert collect_mod.main([str(tmp_path)]) == 1
    assert "left as they were" in capsys.readouterr().err
    assert {name: _sha(tmp_path / name) for name in before} == before
    with pytest.raises(collect_mod.NoRowsError), pytest.warns(RuntimeWarning, match="rejected"):
        collect_mod.collect(tmp_path)


def test_collect_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    ResultStore(tmp_path).write(_row(), "p")
    (tmp_path / "out.txt").write_text("x")
    with pytest.raises(SystemExit) as info:
        collect_mod.main([str(tmp_path), "--out", str(tmp_path / "out.txt")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "out.txt: a file is in the way; --out takes a folder" in err, err


_COLLECTOR = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pandas as pd

    delay, ready, go, folder = float(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    to_csv = pd.DataFrame.to_csv

    def slow_to_csv(self, path=None, *args, **kwargs):  # the injected delay: a slow csv write
        if ".collect.new" in str(path):
            time.sleep(delay)
        return to_csv(self, path, *args, **kwargs)

    pd.DataFrame.to_csv = slow_to_csv
    from harness.report.collect import main

    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    sys.exit(main([folder]))
""")


@pytest.mark.slow
def test_two_collects_at_once_leave_tables_that_agree(tmp_path):
    res = tmp_path / "res"
    store = ResultStore(res)
    store.write(_row(seq_len=16), "a")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _COLLECTOR, str(delay), str(tmp_path / f"ready{i}"),
                               str(tmp_path / f"go{i}"), str(res)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i, delay in enumerate((2.0, 0.0))]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go0").touch()   # the slow collect reads one row and starts writing
    time.sleep(0.8)
    store.write(_row(seq_len=32), "b")
    (tmp_path / "go1").touch()   # the quick one starts while the slow one is writing
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    parquet, csv = pd.read_parquet(res / "results.parquet"), pd.read_csv(res / "results.csv")
    assert sorted(parquet["point_key"]) == sorted(csv["point_key"]) == ["a", "b"], outs
