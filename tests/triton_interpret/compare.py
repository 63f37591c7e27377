"""Kernel vs reference, forward and backward: the one comparison of the Triton kernel tier.

The kernel runs in float32 (the interpreter cannot hold bf16, see shims.py); the reference
runs on float64 copies of the same inputs, so its error is negligible and the difference
is the kernel's own. Errors are relative to the largest magnitude of the reference
(outputs, or each input's gradient): float32 kernels that sum in another order land near
1e-6 of it, a wrong index or a missing term near 1.
"""
from __future__ import annotations

from typing import Callable

import torch

FWD_TOL = 1e-5
BWD_TOL = 1e-4


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach()
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def _outputs(out) -> list[torch.Tensor]:
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in out if o is not None]


def compare(kernel: Callable, reference: Callable, inputs: dict[str, torch.Tensor | None],
            grad: tuple[str, ...] = (), seed: int = 0) -> tuple[float, float | None]:
    """Run ``kernel(**inputs)`` (float32) and ``reference(**inputs)`` (float64 copies); return
    (forward error, backward error or None) and assert both are within tolerance. ``grad``
    names the inputs whose gradients are compared (through a fixed random weighting of every
    output, so no output's gradient path goes unchecked)."""
    def leaves(dtype):
        return {k: None if v is None else v.detach().to(dtype).requires_grad_(k in grad)
                for k, v in inputs.items()}
    k_in, r_in = leaves(torch.float32), leaves(torch.float64)
    k_out, r_out = _outputs(kernel(**k_in)), _outputs(reference(**r_in))
    assert [o.shape for o in k_out] == [o.shape for o in r_out], "outputs differ in shape"
    fwd = max(rel_err(k, r) for k, r in zip(k_out, r_out))
    assert fwd < FWD_TOL, f"forward error {fwd:.2e} >= {FWD_TOL}"
    if not grad:
        return fwd, None
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in r_out]
    k_loss = sum((o * w.float()).sum() for o, w in zip(k_out, weights))
    r_loss = sum((o * w).sum() for o, w in zip(r_out, weights))
    k_grads = torch.autograd.grad(k_loss, [k_in[n] for n in grad])
    r_grads = torch.autograd.grad(r_loss, [r_in[n] for n in grad])
    errs = {n: rel_err(k, r) for n, k, r in zip(grad, k_grads, r_grads)}
    bwd = max(errs.values())
    assert bwd < BWD_TOL, f"gradient errors {errs} (tolerance {BWD_TOL})"
    return fwd, bwd
