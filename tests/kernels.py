"""Stand-in fused kernels: run a family's fused wiring on a CPU against its PyTorch forms."""
from __future__ import annotations

import importlib.machinery
import sys
import types

import torch

from archs import backends


def install_fake_modules(monkeypatch, modules: dict[str, dict | None], *fused_modules) -> None:
    """Put stand-in packages in sys.modules ({name: attributes}; None = not installed), let
    the fused wrappers take CPU tensors and forget cached import results (the fixture
    clears them again afterwards; monkeypatch undoes the rest)."""
    for name, attrs in modules.items():
        mod = None
        if attrs is not None:
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
    for module in fused_modules:
        monkeypatch.setattr(module, "require_cuda", lambda *a: None)
    backends.optional_import.cache_clear()


def assert_same_paths(fast_m, ref_m, x: torch.Tensor, split: int, keys=("kv",), tol=1e-5) -> None:
    """forward, two chained prefills and then steps agree, and so do the final states."""
    close = dict(rtol=tol, atol=tol)
    torch.testing.assert_close(fast_m(x), ref_m(x), **close)
    s_f, s_r = fast_m.init_state(x.shape[0]), ref_m.init_state(x.shape[0])
    for lo, hi in ((0, split // 2), (split // 2, split)):  # the second starts from a state
        y_f, s_f = fast_m.prefill(x[:, lo:hi], s_f)
        y_r, s_r = ref_m.prefill(x[:, lo:hi], s_r)
        torch.testing.assert_close(y_f, y_r, **close)
    for t in range(split, x.shape[1]):
        y_f, s_f = fast_m.step(x[:, t], s_f)
        y_r, s_r = ref_m.step(x[:, t], s_r)
        torch.testing.assert_close(y_f, y_r, **close)
    for key in keys:
        torch.testing.assert_close(s_f[key], s_r[key], **close)
