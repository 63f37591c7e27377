"""Claims (issue 24): a point is skipped only because a live process demonstrably holds it.

Every fault below once made a sweep skip a point nobody measured, or measure one twice: a
full disk, a reused PID, clock skew, a claim whose ``time`` is not a number, two processes
taking over one stale claim, a negative ``claim_stale_s``. Processes on other hosts, in
containers, or racing are faked with real subprocesses, hostnames and file times."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import cost
from harness.results import load_rows, make_row
from harness.sweep import Claims, Point, SweepSettings, run_points
from tests.apps import COST_SMOKE, compose
from tests.paths import ROOT

HOUR = 3600.0


def _claim(claims: Claims, key: str, owner: dict, heartbeat_age: float = 0.0) -> Path:
    """Write ``key``'s claim as another process would, its last heartbeat ``heartbeat_age`` ago."""
    claims.dir.mkdir(parents=True, exist_ok=True)
    path = claims.path(key)
    path.write_text(json.dumps({"time": time.time(), **owner}))
    stamp = time.time() - heartbeat_age
    os.utime(path, (stamp, stamp))
    return path


def _here(pid: int) -> dict:
    """What a claim made by ``pid`` on this host records (its start time from /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return {"pid": pid, "host": socket.gethostname(), "start": stat[stat.rindex(")") + 2:].split()[19],
            "boot": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "pidns": os.readlink("/proc/self/ns/pid"), "token": "someone-else"}


@pytest.fixture
def sleeper():
    """A live process on this host that is not us."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _row(point, status="ok", reason=""):
    return make_row(status=status, reason=reason, arch="a", mode="forward", seq_len=8, env={})


# --- a full disk while claiming ---------------------------------------------------------

def test_full_disk_while_claiming_leaves_no_claim_and_the_rerun_measures(full_disk):
    res = full_disk / "res"
    with pytest.raises(OSError, match="disk full") as info:
        Claims(res).acquire("p")
    assert str(res / ".claims") in str(info.value)
    assert not list((res / ".claims").glob("*.claim")), "no empty claim may be left behind"
    (full_disk / "filler").unlink()  # space comes back
    written = run_points([Point("p")], _row, _row, SweepSettings(str(res), progress=False))
    assert len(written) == 1 and len(load_rows(res)) == 1


def test_an_empty_or_unreadable_claim_is_taken_over(tmp_path):
    claims = Claims(tmp_path)
    claims.dir.mkdir(parents=True)
    claims.path("empty").write_text("")               # what a full disk left before (issue 24)
    claims.path("garbage").write_bytes(b"\x00\xff{")
    written = run_points([Point("empty"), Point("garbage")], _row, _row,
                         SweepSettings(str(tmp_path), progress=False))
    assert len(written) == 2 and not claims.dir.exists()


# --- the same host: PID reuse, reboots, containers, and heartbeats ---------------------

def test_a_reused_pid_does_not_hold_a_claim(tmp_path, sleeper):
    claims = Claims(tmp_path)
    _claim(claims, "reused", {**_here(sleeper.pid), "start": "1"})      # that pid is another process now
    _claim(claims, "rebooted", {**_here(sleeper.pid), "boot": "an-earlier-boot"})
    _claim(claims, "live", _here(sleeper.pid))
    assert claims.acquire("reused") and claims.acquire("rebooted")
    assert not claims.acquire("live")
    claims.release_all()


def test_claim_stale_s_applies_on_the_same_host_too(tmp_path, sleeper):
    # A live pid whose heartbeat stopped two hours ago (a hung job; an old-format claim with
    # no start time, whose pid may be anyone's now) no longer holds its point.
    claims = Claims(tmp_path, stale_s=600)
    _claim(claims, "hung", _here(sleeper.pid), heartbeat_age=2 * HOUR)
    _claim(claims, "old_format", {"pid": sleeper.pid, "host": socket.gethostname()}, heartbeat_age=2 * HOUR)
    assert claims.acquire("hung") and claims.acquire("old_format")
    claims.release_all()


def test_a_container_on_this_host_is_judged_by_its_heartbeat(tmp_path):
    # Same hostname, other PID namespace: its pid means nothing here, its fresh heartbeat does.
    claims = Claims(tmp_path)
    _claim(claims, "p", {"pid": 999_999, "host": socket.gethostname(), "pidns": "pid:[1]", "token": "c"})
    assert not claims.acquire("p")


# --- clock skew and malformed claims ------------------------------------------------------

def test_a_claim_stamped_in_the_future_still_expires(tmp_path):
    claims = Claims(tmp_path, stale_s=600)
    ahead = time.time() + 24 * HOUR  # the owner's clock runs a day ahead
    _claim(claims, "skewed", {"pid": 1, "host": "node7", "time": ahead}, heartbeat_age=2 * HOUR)
    path = _claim(claims, "absurd", {"pid": 1, "host": "node7", "time": ahead})
    os.utime(path, (ahead, ahead))  # a filesystem that took the skewed client's clock
    assert claims.acquire("skewed") and claims.acquire("absurd")
    claims.release_all()


def test_our_clock_running_ahead_does_not_steal_a_live_claim(tmp_path, monkeypatch):
    claims = Claims(tmp_path, stale_s=600)
    _claim(claims, "p", {"pid": 1, "host": "node7", "token": "t"})  # heartbeat just now
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 24 * HOUR)
    assert not claims.acquire("p")


def test_a_claim_whose_time_is_not_a_number_is_judged_not_crashed_on(tmp_path):
    claims = Claims(tmp_path, stale_s=600)
    _claim(claims, "fresh", {"pid": 1, "host": "node7", "time": "yesterday"})
    _claim(claims, "old", {"pid": 1, "host": "node7", "time": "yesterday"}, heartbeat_age=2 * HOUR)
    assert not claims.acquire("fresh") and claims.acquire("old")
    claims.release_all()


# --- taking over is atomic: two processes, one winner ------------------------------------

_CONTENDER = textwrap.dedent("""
    import logging, os, sys, time
    from pathlib import Path
    from harness.sweep import Claims

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    res, delay, ready, go = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    rename = os.rename

    def slow_rename(src, dst):  # the injected delay: between judging a claim stale and moving it
        if str(src).endswith(".claim"):
            time.sleep(delay)
        return rename(src, dst)

    os.rename = slow_rename
    claims = Claims(res, stale_s=60)
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    print("ACQUIRED" if claims.acquire("p") else "LEFT", flush=True)
    time.sleep(4)  # alive while the other one judges
""")


@pytest.mark.slow
def test_two_processes_taking_over_one_stale_claim_one_wins(tmp_path):
    claims = Claims(tmp_path, stale_s=60)
    _claim(claims, "p", {"pid": 1, "host": "node7", "time": time.time() - 2 * HOUR}, heartbeat_age=2 * HOUR)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    for i, delay in enumerate((0.3, 1.5)):
        procs.append(subprocess.Popen([sys.executable, "-c", _CONTENDER, str(tmp_path), str(delay),
                                       str(tmp_path / f"ready{i}"), str(tmp_path / "go")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    verdicts = [line for out in outs for line in out.splitlines() if line in ("ACQUIRED", "LEFT")]
    assert sorted(verdicts) == ["ACQUIRED", "LEFT"], outs
    assert sum(out.count("took over") for out in outs) == 1, outs


# --- heartbeats: a long measurement keeps its claim --------------------------------------

_HOLDER = textwrap.dedent("""
    import socket, sys, time
    socket.gethostname = lambda: "node-a"  # another host, as far as the claim says
    from harness.sweep import Claims

    claims = Claims(sys.argv[1], stale_s=2)
    assert claims.acquire("p")
    print("HOLDING", flush=True)
    time.sleep(6)  # measuring for three times claim_stale_s
    claims.release_all()
""")


@pytest.mark.slow
def test_a_heartbeat_keeps_a_long_measurement_its_claim(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert holder.stdout.readline().strip() == "HOLDING"
    time.sleep(4)
    assert not Claims(tmp_path, stale_s=2).acquire("p"), "a live holder's claim was taken over"
    holder.communicate(timeout=60)


# --- claim_stale_s is checked; points left to others are reported -------------------------

@pytest.mark.parametrize("bad", [-1, 0, float("inf"), float("nan")])
def test_a_claim_stale_s_that_makes_no_sense_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="claim_stale_s"):
        Claims(tmp_path, stale_s=bad)
    with pytest.raises(ValueError, match="claim_stale_s"):
        SweepSettings(str(tmp_path), claim_stale_s=bad)


def test_a_negative_claim_stale_s_fails_before_compute(tmp_path):
    cfg = compose("cost", *COST_SMOKE, f"results_dir={tmp_path}", "arch=lstm", "claim_stale_s=-5")
    with pytest.raises(ValueError, match="claim_stale_s=-5"):
        cost.run(cfg)
    assert not list(tmp_path.iterdir())


def test_points_left_to_other_processes_are_reported_at_warning(tmp_path, caplog):
    claims = Claims(tmp_path)
    _claim(claims, "theirs", {"pid": 1, "host": "node7", "token": "t"})
    with caplog.at_level(logging.INFO):
        written = run_points([Point("theirs"), Point("mine")], _row, _row,
                             SweepSettings(str(tmp_path), progress=False))
    assert len(written) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 point(s) left to other processes" in m and "theirs" in m for m in warned), warned


def test_debris_of_killed_claimers_is_cleared(tmp_path):
    claims = Claims(tmp_path, stale_s=600)
    claims.dir.mkdir(parents=True)
    debris = [claims.dir / ".p.claim.0123.new", claims.dir / ".p.claim.4567.taken", claims.dir / ".clock.node7.12"]
    for path in debris:
        path.write_text("{}")
        os.utime(path, (time.time() - 2 * HOUR, time.time() - 2 * HOUR))
    fresh = claims.dir / ".q.claim.89ab.new"  # another process is creating its claim right now
    fresh.write_text("{}")
    run_points([Point("p")], _row, _row, SweepSettings(str(tmp_path), progress=False))
    assert not any(p.exists() for p in debris) and fresh.exists()


def test_claims_of_dead_or_stale_owners_are_taken_over(tmp_path):
    claims = Claims(tmp_path, stale_s=60)
    claims.dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    claims.path("dead").write_text(json.dumps({"pid": dead.pid, "host": host, "time": time.time()}))
    claims.path("live").write_text(json.dumps({"pid": os.getppid(), "host": host, "time": time.time()}))
    claims.path("far").write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time()}))
    claims.path("old").write_text(json.dumps({"pid": 1, "host": "elsewhere", "time": time.time()}))
    os.utime(claims.path("old"), (time.time() - 120, time.time() - 120))  # its last heartbeat
    assert claims.acquire("dead") and claims.acquire("old") and claims.acquire("new")
    assert not claims.acquire("live") and not claims.acquire("far")
    assert json.loads(claims.path("dead").read_text())["pid"] == os.getpid()
    claims.release_all()
    assert not claims.path("dead").exists() and claims.path("live").exists()
