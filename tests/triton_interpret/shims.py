"""What Triton's interpreter needs to run archbench's fused kernels on CPU tensors.

Used ONLY by the ``triton_interpret`` test tier (tests/triton_interpret/), never at run
time: on a GPU the kernels compile and none of this applies. ``TRITON_INTERPRET=1`` must
be set before fla or mamba_ssm is imported (``@triton.jit`` reads it when a kernel is
defined): tests/conftest.py sets it when the tier is selected.

Each shim and why (triton 3.9.0, fla-core 0.6.0, mamba-ssm 2.3.2.post1):

1. Autotuning: an autotuned kernel with several configs benchmarks them through the GPU
   driver ("0 active drivers" under the interpreter). Only the first config is kept, so
   the tier runs one configuration per kernel, not the one a GPU would pick.
2. Loop indices: compiled Triton gives a ``for i in range(n)`` index tensor methods, and
   fla calls ``i_t.to(tl.int64)``; interpreted, ``range`` yields Python ints. Kernel
   modules get a ``range`` whose indices are ints with a ``.to``.
3. ``torch.cuda.device(x.device.index)`` (every mamba_ssm launcher) raises on a CPU build
   of torch: a no-op context here. mamba_ssm's backward sizes its grids from
   ``torch.cuda.get_device_properties(...).multi_processor_count``: SM_COUNT here, small
   so that the loops over tiles a GPU's SMs share run several rounds.
4. ``tl.dot`` shape limits: the interpreter accepts any shape; NVIDIA GPUs need an inner
   dimension of at least 16 for 16-bit operands (what a bf16 run feeds them). The
   interpreter is given that rule, so a tile too small to compile fails here too.
5. archbench's fused wrappers refuse CPU tensors (``require_cuda``); here CPU tensors are
   what the interpreter runs on, so the check is lifted in FUSED_MODULES.
6. The interpreter checks every integer add / mul for int32 overflow, which costs half its
   run time; at the tier's sizes no index comes near 2^31, so the check is off.
7. Every kernel launch and device-function call re-scans ``triton.language`` for the
   builtins to patch (``inspect.getmembers``, a third of a launch); the list is computed
   once and reused.
8. A mixer whose ``fused`` backend also has a CPU kernel (Mamba-2: the C scan) runs that
   kernel for CPU tensors; the tier wants the Triton route, so the mixers' device hook
   (``_fused_kernel``) answers "fused" (the GPU's kernels) for every device.

Not shimmed, so not tested by the tier: bf16 (the interpreter holds bf16 as raw 16-bit
integers: every tier test runs in float32), and the CUDA C++ kernels (causal_conv1d, the
Mamba-1 selective scan) - the fused routes use PyTorch's conv where causal_conv1d is
absent, and say so in ``resolved_backend``.
"""
from __future__ import annotations

import builtins
import contextlib
import dataclasses
import inspect
import os
import sys
from types import SimpleNamespace
from typing import Callable

import pytest
import torch

SM_COUNT = 4
MIN_DOT_K = 16  # NVIDIA's tl.dot minimum inner dimension for 16-bit operands
FUSED_MODULES = ("archs.linear_attention.fused", "archs.mamba2.fused", "archs.mamba.fused")


def interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class LoopIndex(int):
    """A loop index that, like compiled Triton's, can be cast: ``i.to(tl.int64)``."""

    def to(self, dtype, **_):
        from triton.runtime.interpreter import _implicit_cvt
        return _implicit_cvt(int(self)).to(dtype)


def _loop_range(*args):
    return map(LoopIndex, builtins.range(*args))


def _builtins_once(patch_attr, is_builtin) -> Callable:
    """``_patch_builtin`` with each package's builtins listed once (before any is patched)."""
    members: dict[int, list] = {}

    def patch_builtin(pkg, builder, scope) -> None:
        if id(pkg) not in members:
            members[id(pkg)] = [(n, m) for n, m in inspect.getmembers(pkg) if is_builtin(m)]
        for name, member in members[id(pkg)]:
            patch_attr(pkg, name, member, builder, scope)
    return patch_builtin


def _dot_limits(lhs_type, rhs_type) -> tuple[int, int, int]:
    """(min M, min N, min K) of tl.dot as NVIDIA's backend has it for 16-bit operands."""
    return (1, 1, MIN_DOT_K) if lhs_type.scalar.is_floating() else (1, 1, 1)


@contextlib.contextmanager
def interpreter_shims():
    """Apply shims 1-8 for the duration of the block (a MonkeyPatch undoes them)."""
    if not interpreter_on():
        raise RuntimeError("the triton_interpret tier needs TRITON_INTERPRET=1 before triton kernels "
                           "are imported; run it with `pytest -m triton_interpret`")
    from triton.runtime import autotuner, interpreter

    mp = pytest.MonkeyPatch()
    try:
        prune = autotuner.Autotuner.prune_configs
        mp.setattr(autotuner.Autotuner, "prune_configs", lambda self, kwargs: prune(self, kwargs)[:1])
        patch_lang = interpreter._patch_lang

        def _patch_lang(fn):
            # the kernel module's globals: ``range`` there shadows the builtin for its kernels
            if "range" not in fn.__globals__:
                mp.setitem(fn.__globals__, "range", _loop_range)
            return patch_lang(fn)
        mp.setattr(interpreter, "_patch_lang", _patch_lang)
        mp.setattr(interpreter, "_patch_builtin",
                   _builtins_once(interpreter._patch_attr, interpreter.tl.core.is_builtin))
        builder = interpreter.interpreter_builder
        mp.setitem(builder.codegen_fns, "min_dot_size", _dot_limits)
        mp.setattr(builder, "options", dataclasses.replace(builder.options, sanitize_overflow=False))
        mp.setattr(torch.cuda, "device", lambda index=None: contextlib.nullcontext())
        mp.setattr(torch.cuda, "get_device_properties",
                   lambda device=None: SimpleNamespace(multi_processor_count=SM_COUNT, name="interpreter"))
        for name in FUSED_MODULES:
            __import__(name)
            mp.setattr(sys.modules[name], "require_cuda", lambda *a, **k: None)
        from archs.mamba2 import Mamba2Mixer
        mp.setattr(Mamba2Mixer, "_fused_kernel", staticmethod(lambda device: "fused"))
        yield
    finally:
        mp.undo()
