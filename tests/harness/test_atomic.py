"""harness.atomic: a group of files (collect's parquet and csv) changes together or not at all."""
from __future__ import annotations

import os

import pytest

from harness.results import atomic_write_group, finish_group


def test_collect_kill_leaves_both_tables_old_or_both_new(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("old")
    (tmp_path / "b.txt").write_text("old")
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):  # the process "dies" after the first table is in place
        calls.append(dst)
        if str(dst).endswith("b.txt"):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_group(tmp_path, "g", {"a.txt": "new", "b.txt": "new"})
    monkeypatch.setattr(os, "replace", real_replace)
    finish_group(tmp_path, "g")  # what the next collect does first
    assert (tmp_path / "a.txt").read_text() == (tmp_path / "b.txt").read_text() == "new"
    # A kill before the journal (the commit point) rolls back: both stay old.
    (tmp_path / ".a.txt.g.new").write_text("newer")
    finish_group(tmp_path, "g")
    assert (tmp_path / "a.txt").read_text() == "new" and not list(tmp_path.glob(".*.new"))
