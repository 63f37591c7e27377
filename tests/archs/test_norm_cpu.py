"""The RMSNorm C kernel (archs/_norm.c) behind blocks.RMSNorm and GatedRMSNorm (no gate) on a
CPU, against the PyTorch forms it replaces: outputs and the gradients of the input and the
weight, per group, at channel counts that are and are not whole 16-float vectors, strided
rows, several threads; and where the PyTorch form runs instead."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import archs.blocks as blocks
from archs import _native
from archs._norm import rms_norm_cpu
from archs.blocks import GatedRMSNorm, RMSNorm, make_norm

pytestmark = pytest.mark.skipif(_native.compiler() is None, reason="no C compiler for the CPU kernels")
TOL = {torch.float32: dict(atol=2e-6, rtol=2e-5), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def grads(fn, x, weight, seed=1):
    x = x.detach().requires_grad_()
    out = fn(x)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return [out, *torch.autograd.grad((out * g).sum(), [x, weight])]


def group_reference(x, weight, group_size, eps):
    """The per-group RMSNorm written out (what GatedRMSNorm computes without a gate)."""
    h = x.unflatten(-1, (-1, group_size))
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return h.flatten(-2) * weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape, group", [((8, 33, 64), 64), ((3, 5, 128), 32), ((2, 7, 20), 20),
                                          ((4, 24), 8), ((1, 1, 5), 5), ((6, 48), 16)])
def test_kernel_matches_the_pytorch_form(dtype, shape, group):
    g = torch.Generator().manual_seed(shape[-1] + group)
    x = torch.randn(*shape, generator=g, dtype=dtype) * 3
    weight = torch.randn(shape[-1], generator=g, dtype=dtype, requires_grad=True)
    got = grads(lambda t: rms_norm_cpu(t, weight, group, 1e-5), x, weight)
    want = grads(lambda t: group_reference(t, weight, group, 1e-5), x, weight)
    for name, a, e in zip(("out", "grad x", "grad weight"), got, want):
        torch.testing.assert_close(a, e, **TOL[dtype], msg=lambda m, n=name: f"{n}: {m}")


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 24, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(24, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: rms_norm_cpu(a, w, 8, 1e-6), (x, weight))


def test_double_backward_as_nn_rmsnorm():
    """create_graph=True: the backward runs as differentiable PyTorch ops, so a gradient of a
    gradient works as it does through nn.RMSNorm."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 24, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(24, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, w: rms_norm_cpu(a, w, 8, 1e-6), (x, weight))
    ours, theirs = RMSNorm(24, eps=1e-6).double(), nn.RMSNorm(24, eps=1e-6).double()
    for m in (ours, theirs):
        with torch.no_grad():
            m.weight.copy_(weight)
    seconds = []
    for m in (ours, theirs):
        gx, = torch.autograd.grad(m(x).pow(2).sum(), [x], create_graph=True)
        seconds.append(torch.autograd.grad(gx.pow(2).sum(), [x, m.weight]))
    for a, e in zip(*seconds):
        torch.testing.assert_close(a, e, **TOL[torch.float64])


def test_weight_gradient_when_openmp_starts_fewer_threads(tmp_path):
    """OMP_THREAD_LIMIT=1 with 3 threads asked: rows of the per-thread weight gradient that no
    thread writes must add nothing (they were uninitialised memory: errors of 1e34)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "few_threads.py"
    script.write_text(
        "import torch\n"
        "from archs._norm import rms_norm_cpu\n"
        "torch.set_num_threads(3)\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x, w = torch.randn(6, 64, generator=g), torch.randn(64, generator=g, requires_grad=True)\n"
        "for _ in range(3):\n"
        "    torch.full((64, 64), float('nan')).sum()  # leave NaN in freed memory\n"
        "    gw, = torch.autograd.grad(rms_norm_cpu(x, w, 64, 1e-5).sum(), [w])\n"
        "    want = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)).sum(0)\n"
        "    torch.testing.assert_close(gw, want, atol=1e-5, rtol=1e-5)\n")
    root = Path(__file__).resolve().parents[2]
    env = {**__import__("os").environ, "OMP_THREAD_LIMIT": "1", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_rmsnorm_module_is_nn_rmsnorm_with_the_kernel():
    """Same state dict, same numbers as torch's module; eps=None means torch's default."""
    for eps in (1e-5, None):
        ours, theirs = RMSNorm(64, eps=eps), nn.RMSNorm(64, eps=eps)
        with torch.no_grad():
            ours.weight.normal_()
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(4, 9, 64)
        for a, e in zip(grads(ours, x, ours.weight), grads(theirs, x, theirs.weight)):
            torch.testing.assert_close(a, e, **TOL[torch.float32])
    assert isinstance(make_norm("rmsnorm", 16), nn.RMSNorm)


def test_strided_rows_and_threads():
    """A slice of a wider tensor (rows not packed) and two threads give the one-thread,
    packed numbers (the weight's gradient is summed over per-thread rows)."""
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(6, 40, 100, generator=g)
    x = wide[..., 10:74]  # 64 channels, rows 100 apart
    weight = torch.randn(64, generator=g, requires_grad=True)
    want = grads(lambda t: group_reference(t, weight, 32, 1e-5), x.contiguous(), weight)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got = grads(lambda t: rms_norm_cpu(t, weight, 32, 1e-5), x, weight)
            for a, e in zip(got, want):
                torch.testing.assert_close(a, e, **TOL[torch.float32])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_where_the_pytorch_form_runs(monkeypatch):
    """bf16 (autocast), a weight of another dtype, channels not divisible into groups, and
    CPU kernels turned off: rms_norm_cpu declines and the modules give PyTorch's numbers."""
    x = torch.randn(2, 3, 16)
    w = torch.ones(16)
    assert rms_norm_cpu(x.bfloat16(), w.bfloat16(), 16, 1e-5) is None
    assert rms_norm_cpu(x, w.double(), 16, 1e-5) is None
    assert rms_norm_cpu(x, w, 5, 1e-5) is None
    assert rms_norm_cpu(x, torch.ones(8), 16, 1e-5) is None  # a weight of another size
    assert rms_norm_cpu(x, torch.ones(32)[::2], 16, 1e-5) is None  # a strided weight
    with pytest.raises(RuntimeError):  # nn.RMSNorm's own error, not a read past the weight
        RMSNorm(8)(torch.randn(2, 64))
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False):  # a mode sees the PyTorch ops, not a ctypes call
        assert rms_norm_cpu(x, w, 16, 1e-5) is None
    norm = GatedRMSNorm(16, 8)
    monkeypatch.setattr(blocks, "rms_norm_cpu", lambda *a, **k: None)
    want = norm(x)
    monkeypatch.undo()
    torch.testing.assert_close(norm(x), want, **TOL[torch.float32])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = RMSNorm(16)(x.bfloat16())
    assert y.dtype == torch.bfloat16
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:  # shapes only: no data for a C function to read
        assert RMSNorm(16)(mode.from_tensor(x)).shape == x.shape
    monkeypatch.setenv(_native.DISABLE_ENV, "0")
    assert rms_norm_cpu(x, w, 16, 1e-5) is None


def test_gated_norm_with_a_gate_keeps_the_pytorch_form():
    """The gate y * silu(z) is not in the kernel: with z the module computes it in PyTorch."""
    g = torch.Generator().manual_seed(5)
    y, z = torch.randn(2, 4, 32, generator=g), torch.randn(2, 4, 32, generator=g)
    norm = GatedRMSNorm(32, 16)
    want = group_reference(y * torch.nn.functional.silu(z), norm.weight, 16, norm.eps)
    torch.testing.assert_close(norm(y, z), want, **TOL[torch.float32])
