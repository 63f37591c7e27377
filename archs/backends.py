"""Backend selection shared by every family, so no family copies dispatch code.

Rules (the same everywhere, and recorded in every result row):
  * an explicitly requested backend runs or raises - never a silent fallback;
  * "auto" picks the fused kernel when its package imports and the device supports it,
    otherwise the named pure-PyTorch path; ``resolve_backend`` returns which one.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType

import torch


class BackendUnavailableError(RuntimeError):
    """A backend was requested explicitly but cannot run here."""


@functools.lru_cache(maxsize=None)
def optional_import(module: str) -> ModuleType | None:
    """Import an optional (usually GPU-only) package, or None if it is absent or broken.

    ``import mamba_ssm`` raises on CPU-only machines even when installed (its compiled
    extension is missing), so any exception counts as unavailable, not just ImportError.
    """
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return None
    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken optional install is "unavailable"
        return None


def is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def resolve_backend(requested: str, *, allowed: tuple[str, ...], fallback: str,
                    fast: str = "fast", fast_ok: bool = False, why_not: str = "",
                    owner: str = "mixer") -> str:
    """Turn a requested backend into the one that runs.

    requested: what the user asked for; allowed: the mixer's backends (incl. "auto");
    fallback: the pure-PyTorch backend "auto" uses when the fused one can't run;
    fast: the name of the fused backend; fast_ok: whether it can run on this device;
    why_not: the reason it can't (put in the error message).
    """
    if requested not in allowed:
        raise ValueError(f"{owner}: unknown backend {requested!r}; choose one of {list(allowed)}")
    if requested == "auto":
        return fast if fast_ok else fallback
    if requested == fast and not fast_ok:
        raise BackendUnavailableError(
            f"{owner}: backend {fast!r} was requested but cannot run: {why_not}. "
            f"Use backend='auto' to fall back to {fallback!r} (recorded in results), "
            f"or install the fused kernels with `pip install archbench[gpu]` on a CUDA machine."
        )
    return requested
