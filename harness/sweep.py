"""The ONE point runner: resume by key, claim, measure, failure -> row, skip-after-failure.

An experiment kind (``harness.cost``, ``harness.extrapolate``) lists its points and gives
a measure function; ``run_points`` does everything else, the same way for every kind:

* **resume** - a point whose key already has a valid result file is skipped (unless
  ``force``). A file that does not parse to valid rows is moved aside as ``*.corrupt``,
  named in the log, and the point is measured again. Rows marked ``interrupted`` (a
  point cut short by SIGTERM/SIGUSR2) are not final: the next run measures them again.
* **claims** - before measuring, a point is claimed by creating ``<dir>/.claims/<key>.claim``
  with ``O_CREAT | O_EXCL`` (owner pid, host, time). A point claimed by a live process is
  left to it, so concurrent launchers (joblib, SLURM array tasks) sharing one results
  folder split the work and measure each point once. A claim whose owner is a dead process
  on this host, or that is older than ``claim_stale_s`` on another host, is taken over.
* **failure -> row** - an exception in ``measure`` becomes an ``oom``/``error``/``timeout``
  row with the reason; within a ``group`` (e.g. a cost mode), longer points after an
  oom/timeout are ``skipped`` rows when ``skip_after_failure``.
* **signals** - SIGTERM and SIGUSR2 (what SLURM/submitit send before a time limit or on
  cancel) raise ``Terminated`` in the point in flight: it becomes a ``timeout`` row whose
  reason names the signal (``interrupted`` set, so a re-run measures it again), points not
  yet started stay unclaimed with no row, every claim is released, and the process exits
  with status 128 + signal number (``exit_on_terminate`` in the apps' ``main``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from harness.results import ResultStore
from harness.timing import classify_exception, free_memory

log = logging.getLogger(__name__)

STOP_SIGNALS = ("SIGTERM", "SIGUSR2")
DEFAULT_CLAIM_STALE_S = 6 * 3600.0


class Terminated(BaseException):
    """A stop signal arrived (BaseException, like KeyboardInterrupt, so no ``except
    Exception`` on the way - Hydra's launcher included - swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(f"{self.name} received (job time limit or cancellation)")


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside, the first SIGTERM/SIGUSR2 raises ``Terminated`` and later ones are
    ignored (main thread only); the previous handlers come back afterwards."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def handler(signum, _frame):
        # SLURM signals a job more than once (every process of the step, then again at the
        # limit): from the first one on, further stop signals are ignored, so a second one
        # cannot cut the `timeout` row of the point in flight before it is written.
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    for name in STOP_SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, prev in old.items():
            signal.signal(sig, prev)


def exit_on_terminate(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a ``Terminated`` becomes ``SystemExit(128 + signum)`` (non-zero, and
    not caught by launchers that keep going after a failed job) - after the signal is handed
    to the handler that was there before the sweep's, if that one is Python code: submitit's
    requeues a SLURM job array task cut by its time limit or preempted (SIGUSR2), and the
    requeued task resumes (points by key, a training from its resume snapshot)."""
    try:
        return fn()
    except Terminated as stop:
        log.error("stopped by %s; rows written so far are kept, the rest stay unclaimed", stop.name)
        handler = signal.getsignal(stop.signum)
        if callable(handler):
            handler(stop.signum, None)  # may requeue the job and exit itself
        raise SystemExit(128 + stop.signum) from None


# ---------------------------------------------------------------- claims


def _host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


class Claims:
    """Exclusive-create claim files under ``<results_dir>/.claims`` (see the module doc)."""

    def __init__(self, results_dir: str | os.PathLike, stale_s: float = DEFAULT_CLAIM_STALE_S) -> None:
        self.dir = Path(results_dir) / ".claims"  # hidden: readers of point files skip it
        self.stale_s = stale_s
        self.held: set[str] = set()

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.claim"

    def owner(self, key: str) -> dict[str, Any] | None:
        try:
            text = self.path(key).read_text()
            mtime = self.path(key).stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
            if not isinstance(info, dict):
                raise ValueError
        except ValueError:
            info = {}  # a claim cut short while being written: judged by its age alone
        info.setdefault("time", mtime)
        return info

    def _stale(self, info: dict[str, Any]) -> bool:
        if info.get("host") == _host() and isinstance(info.get("pid"), int):
            return info["pid"] == os.getpid() or not _pid_alive(info["pid"])
        return time.time() - float(info.get("time", 0)) > self.stale_s

    def acquire(self, key: str) -> bool:
        """True if this process now holds ``key``'s claim."""
        path = self.path(key)
        for _ in range(5):
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileNotFoundError:
                continue  # the folder was removed by a finishing process just now
            except FileExistsError:
                info = self.owner(key)
                if info is None:
                    continue  # released meanwhile: try again
                if not self._stale(info):
                    return False
                # Take over by renaming the stale claim away: only one contender's rename succeeds.
                grave = path.with_name(f".{path.name}.{os.getpid()}.stale")
                try:
                    os.rename(path, grave)
                except FileNotFoundError:
                    continue
                grave.unlink(missing_ok=True)
                log.warning("took over a stale claim on %s (owner %s)", key, info)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": _host(), "time": time.time()}, f)
            self.held.add(key)
            return True
        return False

    def release(self, key: str) -> None:
        if key in self.held:
            self.held.discard(key)
            self.path(key).unlink(missing_ok=True)

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)
        try:
            self.dir.rmdir()  # only when empty: no claim of anyone is touched
        except OSError:
            pass


# ---------------------------------------------------------------- the runner


@dataclass
class Point:
    """One measurement to make: its resume ``key``, the ``group`` that skip-after-failure
    works within (e.g. the cost mode), and ``info`` for the measure/row functions."""

    key: str
    group: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    desc: str = ""      # for the log and the progress bar
    at: str = ""        # how a skipped row names this point ("seq_len=64"): "oom at seq_len=64"


@dataclass
class SweepSettings:
    results_dir: str
    force: bool = False
    skip_after_failure: bool = True
    claim_stale_s: float = DEFAULT_CLAIM_STALE_S
    progress: bool = True
    desc: str = ""


def run_points(
    points: Sequence[Point],
    measure: Callable[[Point], dict[str, Any]],
    failure_row: Callable[[Point, str, str], dict[str, Any]],
    settings: SweepSettings,
    *,
    precheck: Callable[[Point], dict[str, Any] | None] | None = None,
    before_first: Callable[[], None] | None = None,
    skips_longer: Callable[[dict[str, Any]], bool] | None = None,
) -> list[dict[str, Any]]:
    """Measure every point not already done; return the rows this call wrote.

    ``measure(point)`` returns the point's row (it may raise: the exception becomes
    ``failure_row(point, status, reason)``); ``precheck(point)`` may return a row that
    replaces the measurement (a length over the model's limit ...); ``before_first()``
    runs once, just before the first point this call will really measure (training);
    ``skips_longer(row)`` says whether a row makes the rest of its group ``skipped``
    (default: its status is oom or timeout)."""
    skips_longer = skips_longer or (lambda row: row["status"] in ("oom", "timeout"))
    store = ResultStore(settings.results_dir)
    claims = Claims(settings.results_dir, settings.claim_stale_s)
    failed_at: dict[str, tuple[str, str]] = {}
    written: list[dict[str, Any]] = []
    started = False
    bar = tqdm(points, desc=settings.desc, disable=not settings.progress, dynamic_ncols=True)
    try:
        with stop_signals_raise():
            for point in bar:
                bar.set_postfix_str(point.desc)
                if not settings.force and store.has_valid(point.key):
                    continue
                if not claims.acquire(point.key):
                    log.info("%s: claimed by another process (%s); leaving it to that one",
                             point.key, claims.owner(point.key))
                    continue
                try:
                    if not settings.force and store.has_valid(point.key):
                        continue  # finished by another process between our check and claim
                    if point.group in failed_at and settings.skip_after_failure:
                        status, at = failed_at[point.group]
                        row = failure_row(point, "skipped", f"{status} at {at}")
                    else:
                        row = precheck(point) if precheck else None
                        if row is None:
                            prepare = None
                            if not started and before_first:
                                started, prepare = True, before_first
                            row = _measure_one(point, measure, failure_row, store, prepare)
                    store.write(row, point.key)
                    written.append(row)
                    if skips_longer(row):
                        failed_at[point.group] = (row["status"], point.at or point.desc or point.key)
                    log.info("%s: %s%s", point.desc or point.key, row["status"],
                             f" ({row['reason']})" if row.get("reason") else "")
                finally:
                    claims.release(point.key)
    finally:
        bar.close()
        claims.release_all()
    return written


def _measure_one(point: Point, measure, failure_row, store: ResultStore, prepare=None) -> dict[str, Any]:
    """``prepare()`` (training) then ``measure(point)``. An exception from ``measure`` is the
    point's row; one from ``prepare`` propagates (a bad checkpoint is the user's to fix, not
    a result); a stop signal in either is the point's ``timeout`` row, then propagates."""
    try:
        if prepare is not None:
            prepare()
        try:
            return measure(point)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a row
            status, reason = classify_exception(exc)
            free_memory(exc)
            return failure_row(point, status, reason)
    except Terminated as stop:
        row = failure_row(point, "timeout", f"{stop}: the point was cut short; a re-run measures it again")
        row["interrupted"] = stop.name
        blocked = [getattr(signal, n) for n in STOP_SIGNALS if hasattr(signal, n)]
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # a second signal must not cut this write
        try:
            store.write(row, point.key)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        raise
