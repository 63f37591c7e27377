"""harness.report.collect: merge point files into results.parquet and results.csv."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.report.collect import collect, main
from harness.results import CORE_COLUMNS, ResultStore, make_row


@pytest.mark.slow
def test_collect_writes_parquet_and_csv_core_columns_first(results_dir, tmp_path):
    parquet, csv, n = collect(results_dir, tmp_path / "out")
    for frame in (pd.read_parquet(parquet), pd.read_csv(csv)):
        assert len(frame) == n > 0
        assert list(frame.columns[: len(CORE_COLUMNS)]) == list(CORE_COLUMNS)
        assert set(frame["status"]) == {"ok", "oom", "timeout"}
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind


def test_collect_handles_columns_of_mixed_types(tmp_path):
    store = ResultStore(tmp_path)
    store.write(make_row(arch="a", mode="m", env={}, note=1), "one")
    store.write(make_row(arch="a", mode="m", env={}, note="text"), "two")
    parquet, _, _ = collect(tmp_path)
    assert sorted(pd.read_parquet(parquet)["note"]) == ["1", "text"]


@pytest.mark.slow
def test_collect_cli(results_dir, capsys):
    assert main([str(results_dir)]) == 0
    assert (results_dir / "results.parquet").exists() and (results_dir / "results.csv").exists()
    assert "rows ->" in capsys.readouterr().out
    # Re-collecting does not read its own outputs back in as rows.
    n_before = len(pd.read_csv(results_dir / "results.csv"))
    main([str(results_dir)])
    assert len(pd.read_csv(results_dir / "results.csv")) == n_before


def test_collect_files_agree_after_a_rerun(tmp_path):
    ResultStore(tmp_path).write(make_row(arch="a", mode="forward", seq_len=16, env={}), "k1")
    collect(tmp_path)
    ResultStore(tmp_path).write(make_row(arch="a", mode="forward", seq_len=32, env={}), "k2")
    collect(tmp_path)
    assert len(pd.read_csv(tmp_path / "results.csv")) == len(pd.read_parquet(tmp_path / "results.parquet")) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
