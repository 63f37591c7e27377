"""harness.timing: timers, budgets, peak memory, FLOPs, OOM handling, device peaks."""
from __future__ import annotations

import gc
import time
import weakref

import pytest
import torch

from harness import timing
from harness.counters import count_flops, peak_memory
from harness.devices import device_peak, lookup_gpu, precision_key
from harness.timing import (
    Deadline, PointTimeout, classify_exception, current_deadline, free_memory, is_oom, job_limits,
    run_with_timeout, time_budget, time_callable,
)

MiB = 2**20
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ---------------------------------------------------------------- timing


def test_time_callable_fixed_repeats_gives_real_percentiles():
    x = torch.randn(64, 64)
    t = time_callable(lambda: x @ x, repeats=7, warmup=1)
    assert t.n == 7 and len(t.times_ms) == 7
    assert all(v > 0 for v in t.times_ms)
    assert min(t.times_ms) <= t.p10_ms <= t.median_ms <= t.p90_ms <= max(t.times_ms)
    assert t.iqr_ms >= 0
    assert f"num_threads={torch.get_num_threads()}" in t.method
    row = t.as_row()
    assert (row["time_ms"], row["time_ms_p10"], row["n_repeats"]) == (t.median_ms, t.p10_ms, 7)


def test_time_callable_min_run_time_tops_up_to_min_repeats():
    # Each call takes longer than min_run_time, so autorange alone yields < 3 blocks.
    t = time_callable(lambda: time.sleep(0.02), min_run_time=0.01, min_repeats=3, warmup=0)
    assert t.n >= 3
    assert t.median_ms >= 15  # it measured the sleeping call, not an empty statement


def test_time_callable_rejects_conflicting_settings():
    with pytest.raises(ValueError, match="either min_run_time or repeats"):
        time_callable(lambda: None, min_run_time=0.1, repeats=3)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        time_callable(lambda: None, repeats=0)


# ---------------------------------------------------------------- budgets


def test_budget_stops_between_repetitions():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.01)

    with pytest.raises(PointTimeout, match="between timed repetitions"):
        # warmup=0: no prediction, so the check between repetitions must catch it.
        run_with_timeout(lambda: time_callable(fn, warmup=0, repeats=10_000), 0.1)
    assert 1 <= len(calls) < 10_000


def test_budget_refuses_repetitions_that_cannot_fit():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.05)

    with pytest.raises(PointTimeout, match="would need"):
        time_callable(fn, warmup=1, repeats=100, deadline=Deadline(1.0))
    assert len(calls) == 1  # only the warm-up ran


def _compiling(first_s: float, then_s: float):
    """A call whose first run takes first_s (a JIT compile), every later one then_s."""
    calls = []

    def fn():
        time.sleep(first_s if not calls else then_s)
        calls.append(1)
    return fn, calls


def test_compile_allowance_does_not_charge_the_first_calls_excess():
    # 0.3 s of "compiling" in a 0.2 s budget: without an allowance the point times out,
    # with one it is measured, and the row reports what the first call took
    fn, _ = _compiling(0.3, 0.002)
    with pytest.raises(PointTimeout, match="after warm-up call 1/2"):
        time_callable(fn, warmup=2, repeats=5, deadline=Deadline(0.2))
    fn, calls = _compiling(0.3, 0.002)
    t = time_callable(fn, warmup=2, repeats=5, deadline=Deadline(0.2), compile_allowance_s=1.0)
    assert t.n == 5 and len(calls) >= 7  # (torch Timer adds calls of its own)
    assert t.first_call_ms >= 300 and t.median_ms < 100
    assert t.as_row()["first_call_ms"] == t.first_call_ms


def test_compile_allowance_is_capped_and_slow_calls_still_time_out():
    # a first call past budget + allowance stops right after it
    fn, calls = _compiling(0.3, 0.002)
    with pytest.raises(PointTimeout, match="compile allowance"):
        time_callable(fn, warmup=3, repeats=5, deadline=Deadline(0.05), compile_allowance_s=0.1)
    assert len(calls) == 1
    # a call that is slow every time is no compile: nothing is credited, the budget holds
    fn, calls = _compiling(0.15, 0.15)
    with pytest.raises(PointTimeout, match="after warm-up call 2/3"):
        time_callable(fn, warmup=3, repeats=5, deadline=Deadline(0.2), compile_allowance_s=10.0)
    assert len(calls) == 2
    # a tighter outer (job-level) budget in force for the point does not bend for it
    fn, _ = _compiling(0.3, 0.002)
    with time_budget(0.2) as outer:
        with pytest.raises(PointTimeout):
            run_with_timeout(lambda: time_callable(fn, warmup=2, repeats=3, compile_allowance_s=1.0), 100)
        assert outer.remaining() < 0
    # one warm-up call cannot tell compiling from running: the allowance does not apply
    fn, _ = _compiling(0.3, 0.002)
    with pytest.raises(PointTimeout, match="after warm-up call 1/1"):
        time_callable(fn, warmup=1, repeats=5, deadline=Deadline(0.2), compile_allowance_s=10.0)


def test_run_with_timeout_returns_result_and_nests_tighter_budget():
    assert run_with_timeout(lambda: 42, 10) == 42
    assert current_deadline() is None
    with time_budget(0.5) as outer:
        with time_budget(100) as inner:
            assert inner is outer  # the tighter (outer) budget stays in force
    with pytest.raises(ValueError, match="must be > 0"):
        Deadline(0)


# ---------------------------------------------------------------- peak memory


@pytest.mark.slow
def test_cpu_peak_memory_sees_a_known_allocation():
    def fn():
        a = torch.ones(64 * MiB // 4)  # 64 MiB of float32
        return float(a[0])

    peak = peak_memory(fn)
    assert 64 * MiB <= peak.peak_bytes < 65 * MiB
    assert peak.as_row()["peak_mem_bytes"] == peak.peak_bytes


@pytest.mark.slow
def test_cpu_peak_memory_of_nothing_is_zero_and_excludes_prior_tensors():
    held = torch.ones(16 * MiB // 4)  # allocated before the call: not the call's memory
    assert peak_memory(lambda: None).peak_bytes == 0
    assert peak_memory(lambda: held.mul_(2)).peak_bytes < 4096


@pytest.mark.slow
def test_cpu_peak_memory_is_a_peak_not_a_sum():
    def fn():
        a = torch.ones(32 * MiB // 4)
        del a
        b = torch.ones(16 * MiB // 4)
        return b

    assert 32 * MiB <= peak_memory(fn).peak_bytes < 33 * MiB


@pytest.mark.slow
def test_cpu_peak_memory_counts_backward():
    w = torch.randn(256, 256, requires_grad=True)
    x = torch.randn(4096, 256)

    def step():
        w.grad = None
        (x @ w).square().sum().backward()

    # Forward keeps x@w (4 MiB) for backward; backward allocates its gradient (4 MiB).
    assert peak_memory(step).peak_bytes >= 8 * MiB


@pytest.mark.slow
def test_cpu_peak_memory_drops_kineto_markers_and_keeps_other_stderr(capfd, monkeypatch):
    # Kineto prints "USDT: ... profiler_start / profiler_stop" to fd 2 on every profile
    # session; they must not reach the terminal, while anything else written there does.
    import os

    monkeypatch.delenv("KINETO_LOG_LEVEL", raising=False)

    def fn():
        os.write(2, b"a line from the measured call\n")
        return torch.ones(1024) * 2

    for _ in range(2):
        peak_memory(fn)
    err = capfd.readouterr().err
    assert "USDT" not in err and "profiler_start" not in err
    assert err.count("a line from the measured call") == 2


# ---------------------------------------------------------------- FLOPs


def test_count_flops_matmul_exact():
    a, b = torch.randn(64, 32), torch.randn(32, 16)
    count = count_flops(lambda: a @ b)
    assert count.flops == 2 * 64 * 32 * 16 == int(count)
    assert count.complete and not count.uncounted_ops
    assert count.as_row() == {"flops": 65536, "flops_complete": True, "flops_uncounted": ""}


def test_composite_ops_are_counted_through_their_decomposition():
    # nn.Linear and einsum reach the counter as aten.linear / aten.einsum; they decompose
    # into addmm / bmm, which are counted, so the count is complete (no false gap).
    lin, x = torch.nn.Linear(64, 32), torch.randn(8, 64)
    count = count_flops(lambda: torch.einsum("ij,kj->ik", lin(x), lin(x)))
    assert count.flops == 2 * (2 * 8 * 64 * 32) + 2 * 8 * 8 * 32
    assert count.complete and not count.uncounted_ops


def test_count_flops_counts_cpu_sdpa_forward_and_backward():
    b, h, length, d = 1, 2, 32, 8
    q = torch.randn(b, h, length, d, requires_grad=True)
    count = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward())
    forward = 4 * b * h * length * length * d  # QK^T and PV, 2 FLOPs per multiply-add
    assert count.flops >= 3 * forward  # forward plus a backward about twice as large
    assert any("flash_attention_for_cpu" in op for op in count.by_op)
    assert count.complete


@torch.library.custom_op("archbench_test::scan", mutates_args=())
def _custom_scan(x: torch.Tensor) -> torch.Tensor:
    return x.cumsum(-1)


@_custom_scan.register_fake
def _(x):
    return torch.empty_like(x)


def test_count_flops_flags_ops_it_cannot_count():
    x = torch.randn(8, 16)
    count = count_flops(lambda: _custom_scan(x @ torch.randn(16, 16)))
    assert count.flops == 2 * 8 * 16 * 16  # the matmul still counts
    assert not count.complete
    assert "archbench_test.scan" in count.uncounted_ops
    assert "undercount" in count.notes


# ---------------------------------------------------------------- failures


def test_is_oom_recognises_allocation_failures():
    try:
        torch.empty(2**62, dtype=torch.uint8)  # a real CPU allocation failure
    except RuntimeError as exc:
        assert is_oom(exc)
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"))
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of memory"))  # only allocator errors count


def test_is_oom_follows_exception_chains():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert is_oom(outer)


def test_classify_exception_statuses_and_reasons():
    assert classify_exception(PointTimeout("over budget")) == ("timeout", "PointTimeout: over budget")
    assert classify_exception(MemoryError())[0] == "oom"
    status, reason = classify_exception(ValueError("bad shape\nsecond line"))
    assert status == "error" and reason == "ValueError: bad shape"


@pytest.mark.slow
def test_free_memory_releases_tensors_held_by_the_traceback():
    def failing_step():
        activations = torch.ones(1024)  # noqa: F841  (held by this frame)
        ref.append(weakref.ref(activations))
        raise MemoryError

    ref: list = []
    try:
        failing_step()
    except MemoryError as exc:
        caught = exc
    assert ref[0]() is not None  # the traceback keeps the frame and its tensor alive
    free_memory(caught)
    gc.collect()
    assert ref[0]() is None


# ---------------------------------------------------------------- device peaks


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_lookup_gpu_by_device_name(name, expected):
    spec = lookup_gpu(name)
    assert (spec.name if spec else None) == expected


def test_device_peak_cpu_is_unknown_and_gpu_uses_table(monkeypatch):
    flops, bw, source = device_peak("cpu", torch.float32)
    assert flops is None and bw is None and "cpu" in source
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H100 PCIe")
    flops, bw, source = device_peak("cuda", torch.bfloat16)
    assert flops == pytest.approx(756e12) and bw == pytest.approx(2.0e12)
    assert "datasheet" in source


def test_precision_key_follows_tf32_setting():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert precision_key(torch.float32) == "fp32"
        torch.set_float32_matmul_precision("high")
        assert precision_key("float32") == "tf32"
    finally:
        torch.set_float32_matmul_precision(before)
    assert precision_key(torch.bfloat16) == "bf16"
    with pytest.raises(ValueError, match="no peak table entry"):
        precision_key(torch.int8)


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@needs_cuda
def test_cuda_timing_and_memory():
    x = torch.randn(1024, 1024, device="cuda")
    t = time_callable(lambda: x @ x, device="cuda", repeats=5, flush_l2=True)
    assert t.n == 5 and "cuda events" in t.method and t.median_ms > 0
    peak = peak_memory(lambda: torch.empty(64 * MiB, dtype=torch.uint8, device="cuda"), "cuda")
    assert peak.peak_bytes >= 64 * MiB and peak.baseline_bytes is not None
    assert device_peak("cuda", torch.bfloat16)[0] > 0


def test_job_limits_restore_threads_and_memory_cap():
    import resource

    threads, cap = torch.get_num_threads(), resource.getrlimit(resource.RLIMIT_DATA)
    want = 1 if threads != 1 else 2
    with pytest.raises(RuntimeError, match="inside"):
        with job_limits(torch.device("cpu"), 64.0, threads=want):
            assert torch.get_num_threads() == want
            assert resource.getrlimit(resource.RLIMIT_DATA)[0] == min(int(64.0 * 2**30), cap[1] % 2**63)
            raise RuntimeError("inside")
    assert torch.get_num_threads() == threads
    assert resource.getrlimit(resource.RLIMIT_DATA) == cap
    with job_limits(torch.device("meta"), 64.0):  # no cap off the CPU
        assert resource.getrlimit(resource.RLIMIT_DATA) == cap
