"""harness.results: schema, hashing, the atomic per-point store, resume, loading."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from harness.results import (
    CORE_COLUMNS, ResultStore, config_hash, load_rows, make_row, point_files, point_key,
)

ENV = {"torch": "test"}


def row(**kw):
    return make_row(**{"arch": "mamba", "mode": "forward", "seq_len": 128, "env": ENV, **kw})


# ---------------------------------------------------------------- hashing and rows


def test_config_hash_is_stable_and_sensitive():
    a = config_hash({"arch": "mamba", "lengths": (1, 2), "lr": np.float32(0.5)})
    assert a == config_hash({"lr": 0.5, "lengths": [1, 2], "arch": "mamba"})
    assert a != config_hash({"arch": "mamba", "lengths": [1, 2], "lr": 0.25})
    assert len(a) == 12 and all(c in "0123456789abcdef" for c in a)


def test_point_key_is_a_safe_file_name():
    key = point_key({"L": 4096}, "mamba / L=4096 (train)")
    assert key.startswith("mamba_L=4096_train-") and "/" not in key and " " not in key
    assert point_key({"L": 1}) == config_hash({"L": 1})


def test_make_row_fills_core_columns_and_extras():
    r = row(status="ok", time_ms=float("nan"), arch_kwargs={"d_state": 16, "dims": [1, 2]},
            settings={"L": 128}, flops_analytic=123)
    assert list(r)[: len(CORE_COLUMNS)] == list(CORE_COLUMNS)
    assert r["time_ms"] is None  # non-finite floats are stored as null
    assert r["arch.d_state"] == 16 and r["arch.dims"] == "[1, 2]"
    assert r["arch_kwargs"] == '{"d_state": 16, "dims": [1, 2]}'
    assert r["config_hash"] == config_hash({"L": 128}) and r["env.torch"] == "test"
    assert r["flops_analytic"] == 123 and r["timestamp"]


@pytest.mark.parametrize("kwargs, message", [
    ({"status": "crashed", "reason": "x"}, "not one of"),
    ({"status": "oom"}, "needs a reason"),
    ({"arch": None}, "missing 'arch'"),
])
def test_make_row_rejects_bad_rows(kwargs, message):
    with pytest.raises(ValueError, match=message):
        row(**kwargs)


# ---------------------------------------------------------------- store


def test_write_has_and_resume_keys(tmp_path):
    store = ResultStore(tmp_path)
    store.write(row(), "a")
    store.write([row(status="oom", reason="OOM"), row(status="oom", reason="OOM")], "b")
    store.write(row(status="error", reason="boom"), "c")
    assert store.has("a") and not store.has("zzz")
    assert store.completed_keys() == {"a", "b", "c"}
    assert store.completed_keys(statuses=["ok", "oom"]) == {"a", "b"}  # errors get retried
    assert store.has("b", statuses=["oom"]) and not store.has("c", statuses=["ok"])
    assert len(load_rows(tmp_path)) == 4


def test_rewrite_replaces_the_point_file(tmp_path):
    store = ResultStore(tmp_path)
    store.write(row(time_ms=1.0), "p")
    store.write(row(time_ms=2.0), "p")
    df = load_rows(tmp_path)
    assert df["time_ms"].tolist() == [2.0] and df["point_key"].tolist() == ["p"]


def test_store_rejects_bad_keys_and_empty_writes(tmp_path):
    store = ResultStore(tmp_path)
    for bad in ("../escape", ".hidden", "a/b", "", "x" * 300):
        with pytest.raises(ValueError, match="not a safe file name"):
            store.write(row(), bad)
    with pytest.raises(ValueError, match="no rows"):
        store.write([], "empty")


def test_resume_sees_points_in_subfolders(tmp_path):
    ResultStore(tmp_path / "multirun" / "3").write(row(), "deep")
    store = ResultStore(tmp_path)
    assert store.has("deep") and "deep" in store.completed_keys()


def test_temp_files_are_ignored_and_cleaned(tmp_path):
    store = ResultStore(tmp_path)
    store.write(row(), "done")
    dead = tmp_path / f".lost.jsonl.{_host()}.999999999.tmp"  # a writer that no longer exists
    alive = tmp_path / f".busy.jsonl.{_host()}.{os.getpid()}.tmp"  # a writer still running
    for p in (dead, alive):
        p.write_text('{"arch": "half-writ')
    assert [p.name for p in point_files(tmp_path)] == ["done.jsonl"]
    assert len(load_rows(tmp_path)) == 1 and store.completed_keys() == {"done"}
    assert store.clean_temp() == 1
    assert not dead.exists() and alive.exists()
    os.utime(alive, (time.time() - 7200, time.time() - 7200))
    assert store.clean_temp(max_age_s=3600) == 1  # stale beyond any plausible write


def _host():
    from harness.results import _host as host

    return host()


_KILLED_WRITER = textwrap.dedent("""
    import os, sys, time
    from harness.results import ResultStore, make_row
    def stall(*args, **kwargs):  # the write happened, the rename never will
        print("stalled", flush=True)
        time.sleep(60)
    os.replace = stall
    row = make_row(arch="mamba", mode="forward", env={})
    ResultStore(sys.argv[1]).write([row] * 1000, "victim")
""")


@pytest.mark.slow
def test_writer_killed_mid_write_leaves_no_result(tmp_path):
    from tests.paths import ROOT as repo
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], cwd=repo,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        assert proc.stdout.readline().strip() == b"stalled"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list(tmp_path.glob(".victim.jsonl.*.tmp"))  # the temp file is there...
    assert not (tmp_path / "victim.jsonl").exists()  # ...but no result file
    assert load_rows(tmp_path).empty
    store = ResultStore(tmp_path)  # a new run cleans up after the dead writer
    assert not store.has("victim") and not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------- loading


def test_load_rows_types_order_and_bad_lines(tmp_path):
    store = ResultStore(tmp_path)
    store.write(row(params=10, flops=None, extra="x"), "a")
    (tmp_path / "hand-edited.jsonl").write_text(store.path_for("a").read_text() + "{not json\n")
    with pytest.warns(RuntimeWarning, match=r"hand-edited.jsonl:2: not JSON"):
        df = load_rows(tmp_path)
    assert len(df) == 2
    assert list(df.columns[: len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
    assert str(df["params"].dtype) == "Int64" and df["flops"].isna().all()
    assert df.columns[-1].startswith("env.")


def test_load_rows_empty_and_missing_dirs(tmp_path):
    df = load_rows(tmp_path)
    assert df.empty and list(df.columns) == list(CORE_COLUMNS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows(tmp_path / "nope")
