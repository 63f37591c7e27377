"""Mamba-2's SSD on the CPU kernel (archs/mamba2/fused_cpu.py) against the recurrent
reference: outputs, final states and the gradient of every input, f32 and f64, with groups,
head dims that split or share a kernel vector, and chunk boundaries."""
from __future__ import annotations

import pytest
import torch

from archs import _native
from archs.mamba2.fused_cpu import ssd_cpu, ssd_step_cpu
from archs.mamba2.ref import ssd_recurrent, ssd_step

# Skip only where no C compiler exists: a kernel that fails to *build* here must fail the
# tests, not skip them.
pytestmark = pytest.mark.skipif(_native.compiler() is None, reason="no C compiler for the CPU kernels")
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-4), torch.float64: dict(atol=1e-11, rtol=1e-10)}


def _inputs(b, l, h, p, g, n, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t = dict(x=torch.randn(b, l, h, p, generator=gen),
             dt=torch.nn.functional.softplus(torch.randn(b, l, h, generator=gen) - 1),
             A=-torch.rand(h, generator=gen) * 4 - 0.5,
             B=torch.randn(b, l, g, n, generator=gen), C=torch.randn(b, l, g, n, generator=gen),
             D=torch.randn(h, generator=gen), initial_state=torch.randn(b, h, p, n, generator=gen))
    return {k: v.to(dtype).requires_grad_() for k, v in t.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("b, l, h, p, g, n", [
    (2, 37, 4, 8, 1, 8),     # two heads per 16-lane vector, N = 8
    (1, 21, 4, 32, 2, 16),   # a head over two vectors, 2 groups, N = 16 (registers)
    (2, 5, 2, 6, 1, 64),     # partial vectors, the Mamba-2 default N = 64
    (2, 40, 2, 16, 1, 64),   # N = 64 in one checkpoint chunk: 8 state blocks of 8
    (1, 19, 2, 16, 1, 12),   # N not a multiple of 8: the generic backward
    (1, 150, 2, 16, 1, 64),  # past the forward's 64-step staging, 3 checkpoint chunks of 64, 64, 22
])
def test_ssd_on_the_cpu_kernel_matches_the_recurrence(dtype, b, l, h, p, g, n):
    inputs = _inputs(b, l, h, p, g, n, dtype)
    results = []
    for fn in (ssd_recurrent, ssd_cpu):
        y, last = fn(**inputs, return_final_state=True)
        gen = torch.Generator().manual_seed(1)
        loss = (y * torch.randn(y.shape, generator=gen, dtype=dtype)).sum() + \
            (last * torch.randn(last.shape, generator=gen, dtype=last.dtype)).sum()
        results.append([y, last, *torch.autograd.grad(loss, list(inputs.values()))])
    for name, want, got in zip(("y", "last", *inputs), *results):
        torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m, k=name: f"{k}: {m}")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("b, g", [(1, 1), (1, 2), (3, 1)])
def test_block_backward_sums_dB_dC_at_any_thread_count(threads, b, g):
    """The scalar-decay backward (blocks of 8 entries) with dB/dC summed in the kernel (units
    of (sequence, group) at least the threads) or per tile (fewer): 48 channels per group
    are 3 tiles, split unevenly among the threads."""
    inputs = _inputs(b, 23, 3 * g, 16, g, 64, torch.float32, seed=b * 10 + g)
    results = []
    old = torch.get_num_threads()
    try:
        for fn, n in ((ssd_recurrent, old), (ssd_cpu, threads)):
            torch.set_num_threads(n)
            y, last = fn(**inputs, return_final_state=True)
            gen = torch.Generator().manual_seed(1)
            loss = (y * torch.randn(y.shape, generator=gen)).sum() + (last * torch.randn(last.shape, generator=gen)).sum()
            results.append([y, last, *torch.autograd.grad(loss, list(inputs.values()))])
    finally:
        torch.set_num_threads(old)
    for name, want, got in zip(("y", "last", *inputs), *results):
        torch.testing.assert_close(got, want, **TOL[torch.float32], msg=lambda m, k=name: f"{k}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_gate_inside_the_kernel_is_y_times_silu_z(dtype):
    """The layer hands z to the kernel (y * silu(z) before the norm): the same values and
    gradients, z's included, as the gate applied to the ungated output."""
    inputs = _inputs(2, 19, 4, 8, 1, 64, dtype, seed=3)
    z = torch.randn(2, 19, 4 * 8, generator=torch.Generator().manual_seed(4), dtype=dtype).requires_grad_()
    gated, _ = ssd_cpu(**inputs, z=z)
    y, _ = ssd_recurrent(**inputs)
    want = y * torch.nn.functional.silu(z).view_as(y)
    torch.testing.assert_close(gated, want, **TOL[dtype])
    gy = torch.randn(want.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    wrt = [z, *inputs.values()]
    for name, got, exp in zip(("z", *inputs), torch.autograd.grad((gated * gy).sum(), wrt),
                              torch.autograd.grad((want * gy).sum(), wrt)):
        torch.testing.assert_close(got, exp, **TOL[dtype], msg=lambda m, k=name: f"{k}: {m}")


def test_step_matches_the_reference_step():
    inputs = {k: v.detach() for k, v in _inputs(3, 1, 4, 8, 2, 16, torch.float32).items()}
    args = (inputs["x"][:, 0], inputs["dt"][:, 0], inputs["A"], inputs["B"][:, 0], inputs["C"][:, 0],
            inputs["initial_state"], inputs["D"])
    for want, got in zip(ssd_step(*args), ssd_step_cpu(*args)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
