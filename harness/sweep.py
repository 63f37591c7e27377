"""The ONE point runner: resume by key, claim, measure, failure -> row, skip-after-failure.

An experiment kind (``harness.cost``, ``harness.extrapolate``) lists its points and gives
a measure function; ``run_points`` does everything else, the same way for every kind:

* **resume** - a point whose key already has a valid result file is skipped (unless
  ``force``). A file that does not parse to valid rows is moved aside as ``*.corrupt``,
  named in the log, and the point is measured again. Rows marked ``interrupted`` (a
  point cut short by SIGTERM/SIGUSR2) are not final: the next run measures them again.
* **claims** - before measuring, a point is claimed (``harness.claims``: an exclusively
  created ``<dir>/.claims/<key>.claim``, kept alive by a heartbeat). A point whose claim
  shows a live owner is left to it, so concurrent launchers (joblib, SLURM array tasks)
  sharing one results folder split the work and measure each point once; an empty,
  unreadable or expired claim, or one whose owner is provably gone, is taken over by
  exactly one process. The points left to others are counted at the end, at WARNING.
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
import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from harness.claims import DEFAULT_STALE_S, Claims, check_stale_s
from harness.results import ResultStore
from harness.timing import classify_exception, free_memory

log = logging.getLogger(__name__)

STOP_SIGNALS = ("SIGTERM", "SIGUSR2")


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
    claim_stale_s: float = DEFAULT_STALE_S
    progress: bool = True
    desc: str = ""

    def __post_init__(self) -> None:
        self.claim_stale_s = check_stale_s(self.claim_stale_s)


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
                    log.info("%s: claimed by a live process (%s); leaving it to that one",
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
    if claims.left:
        log.warning("%d point(s) left to other processes that hold their claims (they write those "
                    "rows; re-run to measure any they did not finish): %s", len(claims.left),
                    ", ".join(sorted(claims.left)[:5]) + (" ..." if len(claims.left) > 5 else ""))
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
