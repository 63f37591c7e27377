"""Devices: which one a run uses, and its peak throughput for "fraction of peak" columns.

``resolve_device(name)`` turns the ``device`` setting (``auto``, ``cpu``, ``cuda[:N]``) into
a ``torch.device``, with an error naming the fix for anything else or a missing GPU.

``device_peak(device, dtype)`` answers (peak FLOP/s, peak memory bytes/s, source).
Known GPUs come from a datasheet table (dense numbers: NVIDIA quotes tensor-core
peaks "with sparsity", twice the dense figure; a dense matmul can never reach those).
An unknown GPU gets a measured lower bound (a large matmul and a large copy), and the
source string says so. CPUs return (None, None, reason): their peak depends on
clocks, vector width and core count in ways no small table captures honestly.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

TFLOPS = 1e12
TBPS = 1e12


def resolve_device(name: str) -> torch.device:
    """The ``device`` setting as a torch device: ``auto`` is a GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device torch knows; use device=auto, cpu, cuda "
                         f"or cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={name!r}: archbench runs on cpu or cuda; use device=auto, cpu, cuda "
                         f"or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=auto or cpu")
    return device


@dataclass(frozen=True)
class GpuSpec:
    """Dense peak TFLOP/s per precision and memory bandwidth (TB/s) of one GPU model."""

    name: str
    bf16: float
    fp16: float
    tf32: float
    fp32: float  # non-tensor-core FP32 (what float32 matmuls get with TF32 disabled)
    mem_tbps: float
    source: str


_H100_DS = "NVIDIA H100 datasheet (dense, without sparsity)"
_H200_DS = "NVIDIA H200 datasheet (dense, without sparsity)"
_A100_DS = "NVIDIA A100 datasheet (dense, without sparsity)"

# Ordered: the first pattern that matches torch.cuda.get_device_name wins, so the
# specific variants come before the general ones. NVL variants are deliberately
# absent (their clocks differ) and fall through to the measured fallback.
GPU_SPECS: tuple[tuple[str, GpuSpec], ...] = (
    (r"H200(?!.*NVL)", GpuSpec("H200 SXM", 989.4, 989.4, 494.7, 66.9, 4.8, _H200_DS)),
    (r"H100.*PCIe", GpuSpec("H100 PCIe", 756.0, 756.0, 378.0, 51.2, 2.0, _H100_DS)),
    (r"H100.*(SXM|HBM3)", GpuSpec("H100 SXM", 989.4, 989.4, 494.7, 66.9, 3.35, _H100_DS)),
    (r"A100.*SXM.*80GB", GpuSpec("A100 SXM 80GB", 312.0, 312.0, 156.0, 19.5, 2.039, _A100_DS)),
    (r"A100.*SXM", GpuSpec("A100 SXM 40GB", 312.0, 312.0, 156.0, 19.5, 1.555, _A100_DS)),
    (r"A100.*80GB.*PCIe", GpuSpec("A100 PCIe 80GB", 312.0, 312.0, 156.0, 19.5, 1.935, _A100_DS)),
    (r"A100.*PCIE", GpuSpec("A100 PCIe 40GB", 312.0, 312.0, 156.0, 19.5, 1.555, _A100_DS)),
)

_DTYPE_ALIASES = {
    "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16", "torch.float16": "fp16",
    "tf32": "tf32",
    "fp32": "fp32", "float32": "fp32", "float": "fp32", "torch.float32": "fp32",
}


def precision_key(dtype: torch.dtype | str) -> str:
    """'bf16' | 'fp16' | 'tf32' | 'fp32' for a dtype; float32 maps to 'tf32' when
    ``torch.set_float32_matmul_precision`` allows TF32 (its matmuls then use tensor cores)."""
    key = _DTYPE_ALIASES.get(str(dtype).lower())
    if key is None:
        raise ValueError(f"no peak table entry for dtype {dtype!r}; use one of bf16, fp16, tf32, fp32")
    if key == "fp32" and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return key


def lookup_gpu(name: str) -> GpuSpec | None:
    """The table entry whose pattern matches a ``torch.cuda.get_device_name`` string."""
    for pattern, spec in GPU_SPECS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return spec
    return None


def device_peak(device: str | torch.device, dtype: torch.dtype | str) -> tuple[float | None, float | None, str]:
    """(peak FLOP/s, peak bytes/s, source) for ``device`` at ``dtype``.

    CPU: (None, None, reason). Known GPU: datasheet numbers. Unknown GPU: measured
    once per (device, precision) with a large matmul and a large copy, cached; these
    are lower bounds on the true peak, so a "fraction of peak" built on them is an
    upper bound, and the source string says "measured".
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None, None, f"no peak table for {device.type} devices"
    key = precision_key(dtype)
    name = torch.cuda.get_device_name(device)
    spec = lookup_gpu(name)
    if spec is not None:
        return getattr(spec, key) * TFLOPS, spec.mem_tbps * TBPS, f"{spec.source}: {spec.name} {key}"
    return _measured_peak(str(device), key)


_MEASURE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32, "fp32": torch.float32}


@functools.lru_cache(maxsize=None)
def _measured_peak(device: str, key: str) -> tuple[float, float, str]:
    n, copy_bytes, reps = 8192, 1 << 30, 10  # big enough to saturate any current GPU
    dtype = _MEASURE_DTYPES[key]
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    src = torch.empty(copy_bytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    matmul_s = _best_seconds(lambda: torch.mm(a, b), reps)
    copy_s = _best_seconds(lambda: dst.copy_(src), reps)
    flops = 2 * n**3 / matmul_s
    # A copy reads and writes every byte once.
    bandwidth = 2 * copy_bytes / copy_s
    return flops, bandwidth, f"measured lower bound: {n}^3 {key} matmul, 1 GiB copy (best of {reps})"


def _best_seconds(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best
