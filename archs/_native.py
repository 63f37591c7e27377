"""C kernels for the CPU, compiled at first use and loaded with ctypes.

A family's ``fused`` backend on a CPU device is a small C file next to its Python wrapper
(e.g. ``archs/_scan_cpu.c``). It is compiled here the first time it is needed, with
the machine's C compiler (``$CC``, else ``cc``/``gcc``) for this CPU (``-march=native``)
and OpenMP, once in float32 and once in float64, into a cache folder
(``$ARCHBENCH_KERNEL_CACHE``, default ``~/.cache/archbench/kernels``). The library's name
carries a hash of the source, the flags, the compiler's version and the CPU's feature
flags, so an edited kernel, another compiler or a machine with other instructions never
loads a stale build. The build writes to a temporary name and renames it into place, so
processes that race to build the same kernel each end with a complete library.

Why ctypes and a plain C library rather than ``torch.utils.cpp_extension``: the kernels
take raw float pointers and strides and need no torch headers, so a build takes about a
second instead of the minute a torch extension needs, and nothing but a C compiler is
required (Debian/Ubuntu: ``apt-get install gcc``).

When the build is impossible (no compiler, a sandbox without one) the kernel is
*unavailable*, with the compiler's message as the reason: ``backend="auto"`` then runs
the chunked PyTorch form (and records that), and an explicit ``backend="fused"`` raises
``BackendUnavailableError`` carrying the reason. ``ARCHBENCH_CPU_KERNELS=0`` turns the
CPU kernels off, e.g. to time the PyTorch forms alone.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import torch

FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11", "-ffp-contract=fast",
         "-fno-math-errno", "-fno-trapping-math")
# float64 builds define REAL_IS_DOUBLE so a kernel can keep libm's exp at full precision.
VARIANTS = {torch.float32: ("-DREAL=float",), torch.float64: ("-DREAL=double", "-DREAL_IS_DOUBLE=1")}
DISABLE_ENV = "ARCHBENCH_CPU_KERNELS"
_LOCK = threading.Lock()
_LOADED: dict[tuple[str, torch.dtype], ctypes.CDLL | Exception] = {}


class NativeKernelUnavailable(RuntimeError):
    """The C kernel could not be built or loaded here; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("ARCHBENCH_KERNEL_CACHE",
                               Path.home() / ".cache" / "archbench" / "kernels"))


def compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


@functools.lru_cache(maxsize=None)
def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True,
                              timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> str:
    """The CPU's feature flags (what -march=native compiles for), or the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


HEADERS = sorted(Path(__file__).parent.glob("_native*.h"))  # shared by every kernel


def _build(source: Path, cc: str, variant: tuple[str, ...]) -> Path:
    text = b"\0".join(f.read_bytes() for f in (source, *HEADERS))
    digest = hashlib.sha256(b"\0".join([text, " ".join(FLAGS + variant).encode(),
                                        _compiler_version(cc).encode(),
                                        _cpu_flags().encode()])).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, *variant, f"-I{Path(__file__).parent}", str(source),
                               "-o", tmp, "-lm"],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise NativeKernelUnavailable(
                f"compiling {source.name} with `{cc}` failed:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load(source: str, dtype: torch.dtype) -> ctypes.CDLL:
    if dtype not in VARIANTS:
        raise NativeKernelUnavailable(f"no CPU kernel for {dtype}; float32 and float64 exist")
    cc = compiler()
    if cc is None:
        raise NativeKernelUnavailable(
            "no C compiler found ($CC, cc, gcc, clang); install one (e.g. `apt-get install "
            "gcc`) to build the CPU kernels")
    try:
        return ctypes.CDLL(str(_build(Path(source), cc, VARIANTS[dtype])))
    except OSError as exc:  # a library that does not load (e.g. built for another CPU)
        raise NativeKernelUnavailable(f"loading the kernel built from {source} failed: {exc}") from None


@functools.lru_cache(maxsize=None)
def _resolved(source: str | os.PathLike) -> str:
    return str(Path(source).resolve())  # once per source, not at every kernel call


def load(source: str | os.PathLike, dtype: torch.dtype,
         prototypes: Mapping[str, tuple[type[ctypes.Structure], int]] | None = None) -> ctypes.CDLL:
    """The compiled library of ``source`` for ``dtype`` (built on first use), or
    ``NativeKernelUnavailable`` with the reason. Both outcomes are remembered per process
    (a failed build is not retried at every call). ``prototypes``: {function: (its dims
    struct, number of pointer arguments after it)}, set once on the loaded library (every
    kernel takes a pointer to its dims struct, then raw pointers, and returns nothing)."""
    if os.environ.get(DISABLE_ENV, "1") == "0":
        raise NativeKernelUnavailable(f"CPU kernels are turned off ({DISABLE_ENV}=0)")
    key = (_resolved(source), dtype)
    with _LOCK:
        if key not in _LOADED:
            try:
                _LOADED[key] = _load(*key)
            except NativeKernelUnavailable as exc:
                _LOADED[key] = exc
        found = _LOADED[key]
        if isinstance(found, NativeKernelUnavailable):
            raise found
        if prototypes and not getattr(found, "_archbench_typed", False):  # a first load may come without them
            for name, (dims, n_pointers) in prototypes.items():
                fn = getattr(found, name)
                fn.argtypes = [ctypes.POINTER(dims)] + [ctypes.c_void_p] * n_pointers
                fn.restype = None
            found._archbench_typed = True
    return found


def unavailable_reason(source: str | os.PathLike) -> str | None:
    """None when the float32 build of ``source`` loads, else why it does not."""
    try:
        load(source, torch.float32)
    except NativeKernelUnavailable as exc:
        return str(exc)
    return None


def pointer(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    """A tensor's data pointer for a ctypes call (None stays NULL)."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())
