"""The ONE backend vocabulary and dispatch shared by every family.

Every mixer takes ``backend = "ref" | "chunked" | "fused" | "auto"``, meaning the same
thing in every family (fla's layout: ``ref.py`` / ``chunked.py`` / ``fused.py``):

  ref      the definition in plain PyTorch, written for reading: the numerical truth
           (attention: explicit L x L scores; linear attention: the L x L masked form;
           Mamba / Mamba-2: the step-by-step recurrence);
  chunked  the blocked PyTorch form, exact vs ref and linear in L (Mamba's cache-blocked
           scan, the chunked SSD of linear attention / Mamba-2, sliding-window blocks);
  fused    a fused kernel for the device the input is on: PyTorch's own
           ``scaled_dot_product_attention`` for the attention families (FlashAttention /
           memory-efficient / cuDNN on a GPU, a fused C++ kernel on the CPU; it needs no
           optional package), ``torch.nn.LSTM`` (cuDNN on a GPU), an optional CUDA package
           (mamba_ssm, causal_conv1d, fla) on a GPU, or a C kernel of the project's own
           compiled at first use on a CPU (Mamba-1's scan: ``archs/_native.py``); rows
           record the device beside the backend;
  auto     the fastest that runs here, resolved per device (and, for sliding windows, per
           length); ``Mixer.resolved_backend`` reports the choice, recorded in every row.

A family implements the subset that exists for it (``Mixer.backends``). Attention also
accepts ``flash_attn``: the flash-attn package's kernel, a second fused kernel asked for by
name only (``auto`` never depends on an optional package there). Mamba-2 has two fused
kernel sets, chosen by its ``fused_impl`` option, and records which ran after the word:
``fused:mamba_ssm/causal_conv1d``, ``fused:fla/torch_conv`` (SSD kernels / conv kernel).

Rules: an explicitly requested backend runs or raises ``BackendUnavailableError`` (with the
one install hint) - never a silent fallback. The words used before this vocabulary
(``math``, ``naive``, ``sdpa``, ``fast``, ``blocked``, ``torch``, ``cudnn``) are accepted
as deprecated aliases with a one-time warning, so old configs keep working.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Callable

import torch

REF, CHUNKED, FUSED, AUTO = "ref", "chunked", "fused", "auto"
VOCABULARY = (REF, CHUNKED, FUSED, AUTO)

# Old word -> new word. Same meaning in every family that used the old word.
DEPRECATED_ALIASES = {
    "math": REF,        # attention: explicit scores
    "naive": REF,       # linear attention: the L x L masked form
    "sdpa": FUSED,      # torch's fused attention kernel
    "fast": FUSED,      # mamba_ssm / causal_conv1d / fla kernels
    "blocked": CHUNKED,  # sliding-window blocks
    "torch": FUSED,     # torch.nn.LSTM (ATen / cuDNN kernel)
    "cudnn": FUSED,
}

INSTALL_HINT = ("install the fused kernels with `pip install archbench[gpu]` on a CUDA machine "
                "(mamba-ssm, causal-conv1d, fla-core; flash-attn separately: "
                "`pip install flash-attn --no-build-isolation`; see the README for build "
                "flags), or use backend='auto', which records what it ran")


class BackendUnavailableError(RuntimeError, ImportError):
    """A backend was requested explicitly but cannot run here (missing package or device).

    Also an ImportError, so code that caught the old per-family ImportErrors still does.
    """


_WARNED: set[str] = set()


def canonical_backend(word: str) -> str:
    """Map a deprecated backend word to the current one (warning once per word)."""
    new = DEPRECATED_ALIASES.get(word)
    if new is None:
        return word
    if word not in _WARNED:
        _WARNED.add(word)
        warnings.warn(f"backend {word!r} is deprecated; use {new!r} (same code path)",
                      FutureWarning, stacklevel=3)
    return new


def recorded_backend(label: str) -> str:
    """A ``backend`` value as recorded in result rows, in today's words: rows written
    before the vocabulary say e.g. "sdpa" or "chunked+sdpa" (a hybrid's paths joined by "+",
    an undecided auto by "|"); this maps them without warning, so old and new rows of the
    same code path fall on one curve."""
    parts = (DEPRECATED_ALIASES.get(p, p) for p in label.replace("|", "+").split("+"))
    joined = "+".join(dict.fromkeys(parts))
    return joined.replace("+", "|") if "|" in label and "+" not in label else joined


def check_backend(requested: str, allowed: tuple[str, ...], owner: str) -> str:
    """Canonicalise ``requested`` and check the mixer offers it; ValueError naming the choices."""
    word = canonical_backend(requested)
    if word not in allowed:
        raise ValueError(f"{owner}: unknown backend {requested!r}; choose one of {list(allowed)}")
    return word


# Packages whose __init__ imports more than the kernels archbench calls. mamba_ssm's loads
# its compiled Mamba-1 extension (absent from the no-CUDA build, which is pure Python +
# Triton, and on any CPU) and its models (transformers); its Triton kernels
# (mamba_ssm.ops.triton.*: Mamba-2's SSD, the decode step) need neither.
KERNELS_WITHOUT_INIT = ("mamba_ssm",)


@functools.lru_cache(maxsize=None)
def optional_import(module: str) -> ModuleType | None:
    """Import an optional (usually GPU-only) package, or None if it is absent or broken.

    ``import mamba_ssm`` raises on CPU-only machines even when installed (its compiled
    extension is missing), so any exception counts as unavailable, not just ImportError.
    A submodule of a package in ``KERNELS_WITHOUT_INIT`` is still imported when only the
    package's __init__ fails (mamba_ssm's Triton kernels from its no-CUDA build).
    """
    top = module.split(".")[0]
    try:
        if importlib.util.find_spec(top) is None:
            return None
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken optional install is "unavailable"
        if top not in KERNELS_WITHOUT_INIT or module == top or top in sys.modules:
            return None
    # The package's __init__ failed, but the kernel module needs none of it: register the
    # package without running its __init__ and import the module alone.
    sys.modules[top] = importlib.util.module_from_spec(importlib.util.find_spec(top))
    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001
        sys.modules.pop(top, None)
        return None


def available(*modules: str) -> bool:
    """True when every module imports (does not check for a GPU)."""
    return all(optional_import(m) is not None for m in modules)


# Import name -> pip name of the optional kernel packages.
PIP_NAMES = {"mamba_ssm": "mamba-ssm", "causal_conv1d": "causal-conv1d",
             "fla": "fla-core", "flash_attn": "flash-attn"}


def require(owner: str, *modules: str, backend: str = FUSED) -> list[ModuleType]:
    """The imported modules, or BackendUnavailableError naming the missing ones and the fix."""
    missing = [m for m in modules if optional_import(m) is None]
    if missing:
        names = ", ".join(f"`{m}` ({PIP_NAMES.get(m.split('.')[0], m.split('.')[0])})"
                          for m in missing)
        raise BackendUnavailableError(
            f"{owner}: backend {backend!r} needs {names}, which could not be imported; "
            f"{INSTALL_HINT}")
    return [optional_import(m) for m in modules]


def is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def require_cuda(owner: str, *tensors: torch.Tensor | None) -> None:
    """The fused CUDA/Triton kernels take CUDA tensors only."""
    for t in tensors:
        if t is not None and not t.is_cuda:
            raise BackendUnavailableError(
                f"{owner}: backend 'fused' runs CUDA kernels, got a tensor on '{t.device}'; "
                f"move the model to a GPU or use backend='chunked' (or 'auto')")


def fused_kernel_for(device: torch.device | str) -> str:
    """Whose kernels the ``fused`` backend runs for inputs on ``device``: "fused" (the optional
    CUDA/Triton packages) on a GPU, "fused_cpu" (the project's C kernels, archs/_native.py)
    on a CPU; other devices get their type name, which no mixer serves (an error naming it)."""
    kind = torch.device(device).type
    return {"cuda": "fused", "cpu": "fused_cpu"}.get(kind, kind)


def resolve_auto(requested: str, device: torch.device | str | None,
                 fused_available: Callable[[], bool],
                 cpu_fused_available: Callable[[], bool] | None = None) -> str:
    """What runs for a checked backend word: "auto" is the fused kernel on a CUDA device
    when its package imports, on a CPU when the family has a CPU kernel that builds here
    (``cpu_fused_available``), else the chunked PyTorch form; any other word is itself."""
    if requested != AUTO:
        return requested
    if is_cuda(device):
        return FUSED if fused_available() else CHUNKED
    on_cpu = device is None or torch.device(device).type == "cpu"
    return FUSED if on_cpu and cpu_fused_available is not None and cpu_fused_available() else CHUNKED


def resolve_backend(requested: str, *, allowed: tuple[str, ...], fallback: str,
                    fused_ok: bool = False, why_not: str = "", owner: str = "mixer",
                    fused: str = FUSED) -> str:
    """Turn a requested backend into the one that runs.

    requested: what the user asked for; allowed: the mixer's backends (incl. "auto");
    fallback: the pure-PyTorch backend "auto" uses when the fused one can't run;
    fused_ok: whether the fused backend (named ``fused``) can run on this device;
    why_not: the reason it can't (put in the error message).
    """
    requested = check_backend(requested, allowed, owner)
    if requested == AUTO:
        return fused if fused_ok else fallback
    if requested == fused and not fused_ok:
        raise BackendUnavailableError(
            f"{owner}: backend {fused!r} was requested but cannot run: {why_not}. "
            f"Use backend='auto' to fall back to {fallback!r} (recorded in results), or "
            f"{INSTALL_HINT}")
    return requested
