"""Where a measurement ran: device, library versions, host and code version.

Every result row carries this fingerprint (as ``env.<key>`` columns, see
``harness.results``) so a number can be traced to the machine and commit that
produced it. Optional GPU packages are looked up with ``importlib.metadata`` and
never imported: importing ``mamba_ssm`` on a CPU-only machine fails outright.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

# Distribution names on PyPI, keyed by the short name used in the fingerprint.
# Several names per entry because some packages were renamed or ship two spellings.
OPTIONAL_PACKAGES: dict[str, tuple[str, ...]] = {
    "triton": ("triton", "pytorch-triton"),
    "mamba_ssm": ("mamba-ssm", "mamba_ssm"),
    "causal_conv1d": ("causal-conv1d", "causal_conv1d"),
    "fla": ("flash-linear-attention", "fla-core"),
    "flash_attn": ("flash-attn", "flash_attn"),
}

REPO_ROOT = Path(__file__).resolve().parents[1]


def package_version(*dist_names: str) -> str | None:
    """Version of the first installed distribution among ``dist_names`` (None if none is)."""
    for name in dist_names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_name() -> str:
    """The CPU model ("AMD EPYC 7763 64-Core Processor"), from /proc/cpuinfo on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    # macOS / Windows, or a Linux without "model name" (some ARM boards).
    return platform.processor() or platform.machine() or "unknown cpu"


def device_name(device: str | torch.device = "cpu") -> str:
    """A human-readable name for ``device``: the CUDA device name, or the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} requested but CUDA is not available; use device='cpu'")
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_name(index)
    if device.type == "cpu":
        return cpu_name()
    return str(device)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args],
            capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the archbench checkout; (None, None) outside a git checkout.

    ``dirty`` looks at tracked files only: untracked result files written by a run
    must not mark the code as modified.
    """
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def _cudnn_version() -> int | None:
    try:
        return torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:
        return None


@functools.lru_cache(maxsize=1)
def _environment() -> tuple[tuple[str, Any], ...]:
    cuda = torch.cuda.is_available()
    commit, dirty = git_state()
    env: dict[str, Any] = {
        "cpu": cpu_name(),
        "gpu": torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "git_dirty": dirty,
    }
    for short, dists in OPTIONAL_PACKAGES.items():
        env[short] = package_version(*dists)
    return tuple(env.items())


def environment() -> dict[str, Any]:
    """The fingerprint of this process's environment (computed once, then cached).

    Keys: cpu, gpu (None without CUDA), gpu_count, torch, cuda, cudnn, python,
    platform, hostname, threads (torch intra-op threads), cpu_count, git_commit,
    git_dirty, the versions (or None) of triton, mamba_ssm, causal_conv1d, fla,
    flash_attn, and fp32_matmul / triton_fp32_dot (``fp32_precision``). ``threads`` and the
    precisions are read at every call; everything else is computed once.
    """
    # A fresh dict each call so callers can't mutate the cache.
    env = dict(_environment())
    env["threads"] = torch.get_num_threads()
    env.update(fp32_precision())
    return env


def fp32_precision() -> dict[str, str | None]:
    """What "float32" means for this process's matrix products, read at every call (a run
    may change it): PyTorch's matmul precision ("highest" = fp32, "high" = TF32 allowed) and,
    on a CUDA machine, the precision of Triton's fp32 ``tl.dot`` in kernels that name none
    (fla's, mamba_ssm's): TF32 unless TRITON_F32_DEFAULT says otherwise. Measured on an
    H200, TF32 there put fused linear attention up to 0.24 off its fp32 form (outputs up to
    370), so a row says which one it ran."""
    cuda = torch.cuda.is_available()
    try:
        matmul = torch.get_float32_matmul_precision()
    except RuntimeError:  # the new per-backend API was used: the legacy getter refuses to answer
        matmul = f"cuda matmul: {torch.backends.cuda.matmul.fp32_precision}"
    dot = None
    if cuda:
        dot = os.environ.get("TRITON_F32_DEFAULT") or "tf32 (default)"
        if not torch.version.hip and torch.cuda.get_device_capability()[0] < 8:
            dot = "ieee (no TF32 before Ampere)"
    return {"fp32_matmul": matmul, "triton_fp32_dot": dot}
