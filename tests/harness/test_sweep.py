"""harness.sweep, the one point runner: a failure is a row and the sweep goes on, an oom or
timeout skips the longer points of its group, written points are resumed by key, and a stop
signal leaves a timeout row for the point in flight. (Claims: test_claims.py; the same
behaviour through the apps: test_cost.py, test_extrapolate.py, test_faults.py.)"""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from harness.results import load_rows, make_row
from harness.sweep import Point, SweepSettings, Terminated, run_points, stop_signals_raise


def _row(point, status="ok", reason=""):
    return make_row(status=status, reason=reason, arch="a", mode="eval", seq_len=point.info["n"], env={})


def _points(group: str, *lengths: int) -> list[Point]:
    return [Point(f"{group}{n}", group=group, info={"n": n}, at=f"seq_len={n}") for n in lengths]


def _settings(tmp_path, **kw) -> SweepSettings:
    return SweepSettings(str(tmp_path), progress=False, **kw)


def _failing_at(n_fail: int, exc: BaseException, calls: list | None = None):
    """A measure function that raises ``exc`` for the point of length ``n_fail``."""
    def measure(point):
        if calls is not None:
            calls.append(point.key)
        if point.info["n"] == n_fail:
            raise exc
        return _row(point)
    return measure


def test_a_failing_point_is_an_error_row_and_the_sweep_goes_on(tmp_path):
    rows = run_points(_points("a", 8, 16, 32), _failing_at(16, RuntimeError("kernel broke")), _row,
                      _settings(tmp_path))
    assert [(r["seq_len"], r["status"]) for r in rows] == [(8, "ok"), (16, "error"), (32, "ok")]
    assert rows[1]["reason"] == "RuntimeError: kernel broke"
    assert sorted(load_rows(tmp_path)["status"]) == ["error", "ok", "ok"]  # every row written


def test_an_oom_skips_the_longer_points_of_its_group_only(tmp_path):
    oom = torch.OutOfMemoryError("CUDA out of memory (simulated)")
    rows = run_points(_points("a", 8, 16, 32) + _points("b", 8, 32), _failing_at(16, oom), _row,
                      _settings(tmp_path))
    assert [r["status"] for r in rows] == ["ok", "oom", "skipped", "ok", "ok"]
    assert rows[2]["reason"] == "oom at seq_len=16"
    # skip_after_failure=false: the longer point is measured anyway
    rows = run_points(_points("c", 16, 32), _failing_at(16, oom), _row,
                      _settings(tmp_path, skip_after_failure=False))
    assert [r["status"] for r in rows] == ["oom", "ok"]


def test_written_points_are_resumed_by_key_unless_forced(tmp_path):
    calls, points = [], _points("a", 8, 16)
    measure = _failing_at(-1, RuntimeError(), calls)
    trained = []
    first = run_points(points, measure, _row, _settings(tmp_path), before_first=lambda: trained.append(1))
    assert len(first) == 2 and calls == ["a8", "a16"] and trained == [1]
    # everything written: nothing measured, nothing trained, nothing rewritten
    assert run_points(points, measure, _row, _settings(tmp_path), before_first=lambda: trained.append(1)) == []
    assert calls == ["a8", "a16"] and trained == [1]
    again = run_points(points, measure, _row, _settings(tmp_path, force=True))
    assert [r["seq_len"] for r in again] == [8, 16] and calls == ["a8", "a16", "a8", "a16"]
    assert len(load_rows(tmp_path)) == 2  # forced points replace their files


def test_a_precheck_row_replaces_the_measurement(tmp_path):
    def precheck(point):  # a length over the model's limit, say
        return _row(point, "skipped", "longer than max_seq_len") if point.info["n"] > 8 else None

    calls = []
    rows = run_points(_points("a", 8, 16), _failing_at(-1, RuntimeError(), calls), _row,
                      _settings(tmp_path), precheck=precheck)
    assert calls == ["a8"] and [r["status"] for r in rows] == ["ok", "skipped"]
    assert rows[1]["reason"] == "longer than max_seq_len"


def test_stop_signal_during_training_is_the_first_points_timeout_row(tmp_path):
    def train():
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while "training"
        time.sleep(5)

    points = [Point(f"p{n}", info={"n": n}) for n in (8, 16)]
    with pytest.raises(Terminated):
        run_points(points, _row, _row, SweepSettings(str(tmp_path), progress=False), before_first=train)
    rows = load_rows(tmp_path)
    assert list(rows["status"]) == ["timeout"] and "SIGTERM" in rows["reason"][0]
    assert not (tmp_path / ".claims").exists()
    # The interrupted row is not final: the next run measures both points.
    written = run_points(points, _row, _row, SweepSettings(str(tmp_path), progress=False))
    assert [r["seq_len"] for r in written] == [8, 16] and set(load_rows(tmp_path)["status"]) == {"ok"}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored


def test_a_second_stop_signal_cannot_cut_the_first_ones_row():
    # SLURM signals a job more than once at its time limit; only the first may raise, so
    # the timeout row of the point in flight is written whatever follows.
    before = signal.getsignal(signal.SIGTERM)
    raised = []
    with stop_signals_raise():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        except Terminated as stop:
            raised.append(stop.name)
            os.kill(os.getpid(), signal.SIGTERM)   # the repeat: ignored, no second raise
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.2)
            raised.append("survived")
    assert raised == ["SIGTERM", "survived"]
    assert signal.getsignal(signal.SIGTERM) == before
