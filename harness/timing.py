"""Timing one call; classifying failures; per-point time budgets and CPU memory caps.

Everything here takes a zero-argument callable (``fn()`` runs one forward, one
training step, one decode step ...) and knows nothing about architectures.

* ``time_callable``  - median / p10 / p90 of per-call times (torch.utils.benchmark
  on CPU, CUDA events on GPU), with the raw times kept.
* ``is_oom`` / ``classify_exception`` / ``free_memory`` / ``limit_cpu_memory`` - failure
  handling so one point's OOM becomes a row with status=oom and the sweep goes on.
* ``run_with_timeout`` / ``Deadline`` / ``PointTimeout`` - a cooperative per-point
  time budget (see ``run_with_timeout`` for what it can and cannot stop).

Memory peaks and FLOP counts live in ``harness.counters``, datasheet peaks in
``harness.devices``; import them from there.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import gc
import re
import resource
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.benchmark import Timer

from harness.allocator import release_freed_memory

# ---------------------------------------------------------------- point budgets


class PointTimeout(Exception):
    """A point ran past its time budget; record it as status=timeout and move on."""


class Deadline:
    """A wall-clock budget that long-running loops check between units of work."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"a time budget must be > 0 seconds, got {seconds}")
        self.seconds = float(seconds)
        self.start = time.perf_counter()
        self._lent = 0  # > 0 while in force for an inner, looser budget (time_budget)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def check(self, where: str) -> None:
        """Raise PointTimeout if the budget is spent."""
        if self.remaining() <= 0:
            raise PointTimeout(f"{where}: {self.elapsed():.1f} s elapsed of a {self.seconds:g} s budget")

    def credit(self, seconds: float) -> None:
        """Give back ``seconds`` of spent budget (one-time compilation, see ``_warm_up``) -
        unless this budget is in force for an inner, looser one: a job-level limit does not
        bend for one point's compilation."""
        if not self._lent:
            self.start += max(float(seconds), 0.0)

    def check_predicted(self, seconds_needed: float, what: str) -> None:
        """Raise PointTimeout now if ``what`` (expected to take ``seconds_needed``) would
        end past the budget - cheaper than starting work that is bound to overrun."""
        if seconds_needed > self.remaining():
            raise PointTimeout(
                f"{what} would need ~{seconds_needed:.1f} s but only {max(self.remaining(), 0):.1f} s "
                f"of the {self.seconds:g} s budget is left"
            )


_CURRENT_DEADLINE: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("deadline", default=None)


def current_deadline() -> Deadline | None:
    """The innermost budget set by ``run_with_timeout`` (None outside one)."""
    return _CURRENT_DEADLINE.get()


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[Deadline | None]:
    """Make a Deadline current for the block; ``seconds=None`` means no budget.
    Nested budgets keep the tighter one."""
    if seconds is None:
        yield current_deadline()
        return
    deadline = Deadline(seconds)
    outer = current_deadline()
    lent = outer is not None and outer.remaining() < deadline.remaining()
    if lent:
        deadline = outer
        outer._lent += 1
    token = _CURRENT_DEADLINE.set(deadline)
    try:
        yield deadline
    finally:
        _CURRENT_DEADLINE.reset(token)
        if lent:
            outer._lent -= 1


def run_with_timeout(fn: Callable[[], object], seconds: float | None) -> object:
    """Run ``fn()`` under a cooperative time budget of ``seconds``.

    A running torch op cannot be stopped safely from inside the process (a signal
    or thread interrupt lands between ops at best, and can leave CUDA state or
    caches inconsistent), so the budget is *cooperative*: ``time_callable`` and any
    loop that calls ``current_deadline().check(...)`` stop between calls - after the
    warm-up, between repetitions, or up front when the warm-up shows the remaining
    repetitions cannot fit - by raising ``PointTimeout``. The caller records the
    point as status=timeout and continues the sweep.

    Limitation: one call that itself runs for hours is not interrupted; the budget
    notices only when it returns. Use the launcher's hard job limit (e.g. submitit's
    ``timeout_min``) as the backstop for that. A call that finishes returns its
    result even if it overran: its measurement is valid.
    """
    with time_budget(seconds):
        return fn()


# ---------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Per-call time statistics in milliseconds. ``times_ms`` holds every measurement
    (one per repetition; on CPU with min_run_time, one per block of ``number_per_run``
    calls, averaged), so the percentiles are computed from real samples."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    mean_ms: float
    n: int
    number_per_run: int
    method: str
    times_ms: tuple[float, ...] = field(repr=False)
    first_call_ms: float | None = None  # the first warm-up call: JIT compilation + autotuning + one call

    @classmethod
    def from_times(cls, times_ms: list[float], number_per_run: int, method: str) -> "Timing":
        t = np.asarray(times_ms, dtype=float)
        p10, p25, p50, p75, p90 = np.percentile(t, [10, 25, 50, 75, 90])
        return cls(float(p50), float(p10), float(p90), float(p75 - p25), float(t.mean()),
                   len(t), number_per_run, method, tuple(float(x) for x in t))

    def as_row(self) -> dict[str, object]:
        """The result-row columns (harness.results schema) this timing fills."""
        return {"time_ms": self.median_ms, "time_ms_p10": self.p10_ms, "time_ms_p90": self.p90_ms,
                "time_iqr_ms": self.iqr_ms, "n_repeats": self.n, "timing_method": self.method,
                "first_call_ms": self.first_call_ms}


def time_callable(
    fn: Callable[[], object],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    min_run_time: float | None = None,
    repeats: int | None = None,
    min_repeats: int = 3,
    flush_l2: bool = False,
    deadline: Deadline | None = None,
    compile_allowance_s: float = 0.0,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then either ``repeats`` timed calls or
    as many as fit in ``min_run_time`` seconds (default 0.2 s if neither is given),
    never fewer than ``min_repeats`` measurements.

    CPU: ``torch.utils.benchmark.Timer`` with the process's current thread count
    (Timer's own default is 1 thread, which would time a different configuration).
    CUDA: a CUDA event pair around each call, synchronised after each, so every
    sample is the device time of one call; ``flush_l2`` overwrites a 256 MiB buffer
    before each call so no call profits from the previous one's cache.
    We do not use ``triton.testing.do_bench``: one code path on every machine keeps
    numbers comparable whether or not triton is installed.

    ``deadline`` (default: the one set by ``run_with_timeout``) is checked after the
    warm-up and between measurements; see ``run_with_timeout``. ``compile_allowance_s``:
    with two or more warm-up calls, what the first took beyond the second (Triton's JIT
    compilation and autotuning, cuDNN plans, torch.compile) is not charged to the budget, up
    to this many seconds; the first call's time is reported as ``first_call_ms`` either way.
    """
    if min_run_time is not None and repeats is not None:
        raise ValueError("give either min_run_time or repeats, not both")
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0 or min_repeats < 1:
        raise ValueError(f"need warmup >= 0 and min_repeats >= 1, got {warmup}, {min_repeats}")
    if min_run_time is None and repeats is None:
        min_run_time = 0.2
    device = torch.device(device)
    deadline = deadline if deadline is not None else current_deadline()
    first_s, per_call_s = _warm_up(fn, device, warmup, deadline, compile_allowance_s)
    if deadline is not None and per_call_s is not None:
        needed = repeats if repeats is not None else min_repeats
        deadline.check_predicted(needed * per_call_s, f"{needed} timed calls at {per_call_s:.2f} s each")
    if device.type == "cuda":
        timing = _time_cuda(fn, device, min_run_time, repeats, min_repeats, flush_l2, deadline)
    else:
        timing = _time_cpu(fn, min_run_time, repeats, min_repeats, deadline)
    return timing if first_s is None else dataclasses.replace(timing, first_call_ms=first_s * 1e3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_up(fn, device: torch.device, warmup: int, deadline: Deadline | None,
             compile_allowance_s: float = 0.0) -> tuple[float | None, float | None]:
    """Run the warm-up calls; return the wall times of the first and of the last one (None,
    None if warmup=0).

    On a fresh GPU machine the first call of a shape compiles its kernels (fla's chunked
    linear attention: ~55 s of Triton compiling and autotuning on an H200's host), which a
    point's budget is not meant to measure. With ``compile_allowance_s`` and two or more
    warm-up calls, the first is checked against budget + allowance, and once the second shows
    what a call costs, the first's excess is credited back (at most the allowance)."""
    times: list[float] = []
    allow = compile_allowance_s > 0 and warmup >= 2
    for i in range(warmup):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if deadline is None:
            continue
        if allow and i == 0:
            if deadline.elapsed() > deadline.seconds + compile_allowance_s:
                raise PointTimeout(f"after warm-up call 1/{warmup} (compiling): {deadline.elapsed():.1f} s "
                                   f"elapsed of a {deadline.seconds:g} s budget + {compile_allowance_s:g} s "
                                   f"compile allowance")
            continue
        if allow and i == 1:
            deadline.credit(min(times[0] - times[1], compile_allowance_s))
        deadline.check(f"after warm-up call {i + 1}/{warmup}")
    return (times[0], times[-1]) if times else (None, None)


def _time_cpu(fn, min_run_time, repeats, min_repeats, deadline) -> Timing:
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    method = f"torch.utils.benchmark.Timer (num_threads={torch.get_num_threads()})"

    def between(*_: object) -> None:
        if deadline is not None:
            deadline.check("between timed repetitions")

    if repeats is not None:
        times = []
        for _ in range(repeats):
            times.append(timer.timeit(1).times[0] * 1e3)
            between()
        return Timing.from_times(times, 1, method + ".timeit(1) x repeats")
    m = timer.blocked_autorange(callback=between, min_run_time=min_run_time)
    times = [t * 1e3 for t in m.times]
    # A slow fn fills min_run_time with fewer blocks than we need for percentiles.
    while len(times) < min_repeats:
        times.append(timer.timeit(m.number_per_run).times[0] * 1e3)
        between()
    return Timing.from_times(times, m.number_per_run, method + ".blocked_autorange")


def _time_cuda(fn, device, min_run_time, repeats, min_repeats, flush_l2, deadline) -> Timing:
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=device) if flush_l2 else None
    times: list[float] = []
    total_s = 0.0
    while True:
        if flush is not None:
            flush.fill_(1)  # outside the event pair: evicts L2 without being timed
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        total_s += times[-1] / 1e3
        enough = len(times) >= repeats if repeats is not None else (
            total_s >= min_run_time and len(times) >= min_repeats)
        if enough:
            break
        if deadline is not None:
            deadline.check("between timed repetitions")
    flushed = ", L2 flushed" if flush_l2 else ""
    return Timing.from_times(times, 1, f"cuda events per call{flushed}")


# ---------------------------------------------------------------- failures

# Messages of allocation failures that reach Python as a plain RuntimeError.
_OOM_PATTERNS = re.compile(
    r"DefaultCPUAllocator: (can't allocate memory|not enough memory)"
    r"|CUDA out of memory|HIP out of memory|MPS backend out of memory|XPU out of memory"
    r"|CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|Failed to allocate",
    flags=re.IGNORECASE,
)


def is_oom(exc: BaseException) -> bool:
    """True if ``exc`` (or an exception it was raised from) is an out-of-memory error:
    ``torch.OutOfMemoryError`` (CUDA), ``MemoryError`` (Python / some CPU paths), or a
    RuntimeError carrying an allocator's out-of-memory message."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
            return True
        if isinstance(exc, RuntimeError) and _OOM_PATTERNS.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def limit_cpu_memory(gb: float | None) -> None:
    """Cap this process's data segment (RLIMIT_DATA) at ``gb`` GiB, so a CPU allocation past
    it raises (an ``oom`` row) instead of summoning the kernel's OOM killer, which would
    take the whole sweep down. ``None`` leaves the limit as it is; never raises the hard one."""
    if gb is None:
        return
    release_freed_memory()  # free heap kept by training (harness/allocator.py) is not "used"
    limit = int(gb * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


@contextlib.contextmanager
def cpu_memory_limit(gb: float | None) -> Iterator[None]:
    """``limit_cpu_memory(gb)`` for the block only: the previous limit comes back on the
    way out, so a capped job of a multirun does not cap the jobs after it."""
    before = resource.getrlimit(resource.RLIMIT_DATA)
    try:
        limit_cpu_memory(gb)
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, before)


@contextlib.contextmanager
def job_limits(device: torch.device, cpu_memory_limit_gb: float | None, threads: int | None = None) -> Iterator[None]:
    """One job of a multirun: torch's thread count (set to ``threads`` when given) and, on a
    CPU device, the memory cap hold for the block only; both come back on the way out, so
    the next job starts afresh."""
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        with cpu_memory_limit(cpu_memory_limit_gb if device.type == "cpu" else None):
            yield
    finally:
        torch.set_num_threads(before)


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for a failed point: 'timeout', 'oom' or 'error', and a one-line
    reason ("OutOfMemoryError: CUDA out of memory. Tried to allocate 8.00 GiB ...")."""
    status = "timeout" if isinstance(exc, PointTimeout) else "oom" if is_oom(exc) else "error"
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return status, reason[:300]


def free_memory(exc: BaseException | None = None) -> None:
    """Release memory after a failed point so the next one starts clean.

    The traceback of an OOM holds the frames of the failed call, and their locals
    hold the activations; clearing them (``traceback.clear_frames``) is what lets
    ``gc`` free those tensors. Call it after the ``except`` block has recorded the
    failure (inside it or after), passing the exception.
    """
    if exc is not None and exc.__traceback__ is not None:
        traceback.clear_frames(exc.__traceback__)
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
