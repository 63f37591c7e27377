"""Keep freed memory in the process instead of handing it back to the OS at every step.

glibc's malloc serves large blocks (>= 128 KiB, raised adaptively up to 32 MiB) with their
own mmap and unmaps them when freed, and trims the heap's free top beyond 128 KiB. A
training step of a small model allocates and frees the same few-MiB activations every
step, so each one arrives as fresh pages that fault in one 4 KiB page at a time: measured
on a 2-core AMD EPYC VM, ~550 page faults per step of the Mamba induction model (batch 8,
L 256), a few milliseconds of a ~50 ms step. Raising both thresholds once makes the
allocator reuse those blocks (~70 faults per step). It changes no result, only where
freed memory waits; the cost is a resident set that stays at its high-water mark (which
the peak already was). No-op on other C libraries (macOS, musl) and off with
``ARCHBENCH_KEEP_HEAP=0``. ``release_freed_memory`` hands the free heap back when training
ends, so what comes next in the process (the next job of a multirun, its memory cap)
starts from what is held, not from the training's high-water mark.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL | None:
    """The C library, once per process (find_library may run ldconfig), or None."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; True if they were set."""
    if os.environ.get("ARCHBENCH_KEEP_HEAP", "1") == "0":
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def release_freed_memory() -> None:
    """Return free heap memory to the OS (glibc's malloc_trim); a no-op elsewhere."""
    if os.environ.get("ARCHBENCH_KEEP_HEAP", "1") == "0":
        return
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        malloc_trim(0)
