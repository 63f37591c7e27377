"""Counting what one call consumes: peak memory and FLOPs (``harness.timing`` times the call).

Peak memory
-----------
``peak_memory(fn, device)`` reports the *extra* bytes of tensor storage the call holds
at its peak, above what was live when it started (weights and inputs are not counted;
activations, workspaces, gradients and outputs are).

* CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated`` minus
  the allocated bytes before the call - the caching allocator's own accounting.
* CPU: there is no allocator counter, and process RSS is noisy (glibc keeps freed
  pages, other threads allocate, the OS pages lazily). Instead we run the call under
  ``torch.profiler.profile(profile_memory=True)``, which receives every allocation and
  free of torch's CPU allocator as a signed byte count; the running sum of those
  events, in time order, is the live tensor memory allocated by the call, and its
  maximum is the peak. This counts exactly the tensors the step allocates - including
  temporaries inside fused kernels and the backward pass, which run on the calling
  thread on CPU - and nothing else. Limitations: memory allocated outside torch's
  allocator (numpy arrays, oneDNN scratch pads obtained from malloc directly) is not
  seen, and the profiler cannot be nested inside another active profiler.
  Quiet: torch's profiler backend (Kineto) writes a ``USDT: ... profiler_start`` and a
  ``... profiler_stop`` line to file descriptor 2 on every profile session - these are
  its user-space trace-point markers (``SyncActivityProfilerHandler``), logged at its
  highest severity, so no ``KINETO_LOG_LEVEL`` hides them without hiding its errors too.
  ``_kineto_markers_dropped`` therefore captures fd 2 around the profiler only and
  writes back every other line; set ``KINETO_LOG_LEVEL`` to see Kineto's raw output.

FLOPs
-----
``count_flops(fn)`` runs the call once under ``FlopCounterMode`` (matmuls, convs and
the fused attention kernels it has formulas for; elementwise ops count zero by design).
Two gaps are handled explicitly: CPU SDPA (``_scaled_dot_product_flash_attention_for_cpu``
and its backward), which torch has no formula for, is counted with torch's own SDPA
formula; and every op the counter saw but could not count that looks expensive (custom
namespaces, attention/conv/matmul/scan-like names) is listed in ``uncounted_ops`` with
``complete=False``. Kernels called outside the dispatcher (pybind extensions such as
mamba_ssm's selective scan, raw Triton launches) are invisible to any dispatch-based
counter: record an analytic count beside the measured one for those.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_backward_flop_count, sdpa_flop_count

# ---------------------------------------------------------------- peak memory


@dataclass(frozen=True)
class MemoryPeak:
    """``peak_bytes``: extra bytes held at the call's peak, above the live bytes before it.
    ``baseline_bytes``: allocated bytes before the call (None where not knowable, on CPU)."""

    peak_bytes: int
    baseline_bytes: int | None
    method: str

    def as_row(self) -> dict[str, object]:
        """The result-row columns (harness.results schema) this measurement fills."""
        return {"peak_mem_bytes": self.peak_bytes, "mem_baseline_bytes": self.baseline_bytes,
                "mem_method": self.method}


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> MemoryPeak:
    """Run ``fn()`` once and report the extra memory it allocates at its peak (see module doc)."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        return _peak_cuda(fn, device)
    if device.type == "cpu":
        return _peak_cpu(fn)
    raise ValueError(f"peak_memory supports cpu and cuda devices, got {device}")


def _peak_cuda(fn, device: torch.device) -> MemoryPeak:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - baseline
    return MemoryPeak(int(peak), int(baseline), "torch.cuda.max_memory_allocated - baseline")


# Kineto's trace-point lines: "USDT:<date> <time> <pid>:<tid> <file>:<line>] profiler_start".
_KINETO_MARKER = re.compile(rb"^USDT:.*\] profiler_(start|stop)\s*$")


@contextlib.contextmanager
def _kineto_markers_dropped():
    """Capture file descriptor 2 for the block; write back all but Kineto's marker lines.

    A C++ library writes straight to fd 2, so only an fd-level redirect catches it;
    output of other threads during the block is delayed, not lost. Left alone when the
    user set ``KINETO_LOG_LEVEL`` (they asked for Kineto's log)."""
    if "KINETO_LOG_LEVEL" in os.environ:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True)
                    if not _KINETO_MARKER.match(line)]
            if kept:
                os.write(2, b"".join(kept))


def _peak_cpu(fn) -> MemoryPeak:
    with _kineto_markers_dropped(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        # nbytes is signed: positive for an allocation, negative for a free.
        live += e.nbytes()
        peak = max(peak, live)
    return MemoryPeak(int(peak), None, "torch.profiler CPU allocator events (running sum)")


# ---------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopCount:
    """FLOPs one call performed, as far as ``FlopCounterMode`` can see.

    ``complete`` is False when ops that probably do real arithmetic went uncounted
    (listed in ``uncounted_ops`` with their call counts); ``notes`` says what to
    trust. ``int(count)`` gives ``flops``."""

    flops: int
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    complete: bool = True
    notes: str = ""

    def __int__(self) -> int:
        return self.flops

    def as_row(self) -> dict[str, object]:
        """The result-row columns (harness.results schema) this count fills."""
        return {"flops": self.flops, "flops_complete": self.complete,
                "flops_uncounted": ", ".join(sorted(self.uncounted_ops))}


_aten = torch.ops.aten


def _cpu_sdpa_flop(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward_flop(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


# torch has flop formulas for the CUDA attention kernels but not for the CPU one.
EXTRA_FLOP_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
}

# Names of ops that do real arithmetic; if one of these is seen but has no formula,
# the total is an undercount.
_HEAVY_OP = re.compile(r"attention|conv|mm|matmul|linear|einsum|scan|gemm|bmm|dot|fft", re.IGNORECASE)
_PLAIN_NAMESPACES = ("aten", "prims", "prim")


class _OpRecorder(TorchDispatchMode):
    """Counts every op (overload packet) that reaches the dispatcher."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen[func._overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def _packet_name(packet) -> str:
    return str(packet)  # "aten.mm", "mamba_ssm.selective_scan"


def count_flops(fn: Callable[[], object]) -> FlopCount:
    """Run ``fn()`` once and count its FLOPs (forward, and backward if ``fn`` runs one).

    Attention is counted as full (non-causal) ``L x L``, as torch's formulas do: a
    causal kernel that skips masked blocks does about half that work.
    """
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    recorder = _OpRecorder()
    # The recorder sits inside the counter: it sees each op first, then passes it on.
    with counter, recorder:
        fn()
    known = set(counter.flop_registry)
    uncounted = {
        _packet_name(p): n for p, n in recorder.seen.items()
        if p not in known and _is_heavy(p)
    }
    by_op = {_packet_name(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    total = int(counter.get_total_flops())
    notes = "attention counted as full L x L (causal masking not discounted)"
    if uncounted:
        notes = (f"undercount: no FLOP formula for {', '.join(sorted(uncounted))}; "
                 "record an analytic count beside this one. " + notes)
    return FlopCount(total, by_op, uncounted, complete=not uncounted, notes=notes)


def _decomposes(packet) -> bool:
    """True for composite ops (aten.linear, aten.einsum, aten.matmul): FlopCounterMode
    decomposes them and counts the mm/bmm they become, so they are not a gap."""
    try:
        return any(torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")
                   for op in (getattr(packet, o) for o in packet.overloads()))
    except (AttributeError, RuntimeError):
        return False


def _is_heavy(packet) -> bool:
    name = _packet_name(packet)
    namespace = name.split(".", 1)[0]
    heavy = namespace not in _PLAIN_NAMESPACES or bool(_HEAVY_OP.search(name.split(".", 1)[-1]))
    return heavy and not _decomposes(packet)


__all__ = ["MemoryPeak", "peak_memory", "FlopCount", "count_flops", "EXTRA_FLOP_FORMULAS", "flop_registry"]
