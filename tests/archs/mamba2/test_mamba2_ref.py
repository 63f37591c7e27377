"""The three SSD forms agree with the recurrence and with the definition."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from archs.mamba2 import fused
from archs.mamba2.chunked import ssd_chunked
from archs.mamba2.ref import segsum, ssd_quadratic, ssd_recurrent, ssd_step

BATCH, H, P, G, N, CHUNK = 2, 4, 3, 2, 5, 8
FORMS = {"quadratic": ssd_quadratic, "chunked": functools.partial(ssd_chunked, chunk_size=CHUNK)}
LENGTHS = [1, 2 * CHUNK, 2 * CHUNK + 5]  # L = 1, a multiple of the chunk, and not


def _inputs(L: int, seed: int = 0):
    """x, dt (softplus, paper-like range), A < 0, B, C (grouped), D, initial state."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, L, H, P, generator=g)
    dt = F.softplus(torch.randn(BATCH, L, H, generator=g) - 1)
    A = -torch.empty(H).uniform_(0.5, 4, generator=g)
    B, C = (torch.randn(BATCH, L, G, N, generator=g) for _ in range(2))
    D = torch.randn(H, generator=g)
    s0 = torch.randn(BATCH, H, P, N, generator=g)
    return x, dt, A, B, C, D, s0


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_segsum_is_exact_segment_sums_and_stable():
    g = torch.Generator().manual_seed(0)
    T = 512
    a = -torch.rand(T, generator=g, dtype=torch.float64) * 0.5
    out = segsum(a.float())
    i, j = 400, 390
    torch.testing.assert_close(out[i, j].double(), a[j + 1:i + 1].sum(), rtol=1e-6, atol=1e-6)
    assert out[3, 3] == 0 and out[3, 4] == float("-inf")
    # Near the diagonal it is as accurate as a float64 cumsum difference, where a float32
    # difference of two ~-128 cumulative sums is visibly off.
    exact = a.cumsum(0)[:, None] - a.cumsum(0)[None, :]
    band = torch.ones(T, T, dtype=torch.bool).tril() & ~torch.ones(T, T, dtype=torch.bool).tril(-8)
    err_stable = (out.double() - exact)[band].abs().max()
    c32 = a.float().cumsum(0)
    err_naive = ((c32[:, None] - c32[None, :]).double() - exact)[band].abs().max()
    assert err_stable < 1e-6 < err_naive


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_forms_match_recurrence(form, L, with_state):
    x, dt, A, B, C, D, s0 = _inputs(L)
    s0 = s0 if with_state else None
    y_ref, s_ref = ssd_recurrent(x, dt, A, B, C, D, s0, True)
    y, s = FORMS[form](x, dt, A, B, C, D, s0, True)
    _close(y, y_ref)
    _close(s, s_ref)


@pytest.mark.parametrize("form", list(FORMS))
def test_gradients_match_recurrence(form):
    leaves = [t.clone().requires_grad_() for t in _inputs(2 * CHUNK + 5)]

    def grads(fn):
        y, s = fn(*leaves, True)
        (y.pow(2).sum() + s.sum()).backward()
        out = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        return out

    for g, g_ref in zip(grads(FORMS[form]), grads(ssd_recurrent)):
        _close(g, g_ref, tol=1e-4)


def test_matches_definition():
    """y_t = sum_{s<=t} C_t.B_s dt_s exp(A sum_{s<r<=t} dt_r) x_s + D x_t, float64 loops."""
    x, dt, A, B, C, D, _ = (t.double() for t in _inputs(9))
    r = H // G
    y = torch.zeros_like(x)
    for t in range(9):
        for s in range(t + 1):
            decay = torch.exp(A * dt[:, s + 1:t + 1].sum(1))  # (batch, H)
            cb = (C[:, t] * B[:, s]).sum(-1).repeat_interleave(r, dim=-1)  # (batch, H)
            y[:, t] += (cb * dt[:, s] * decay)[..., None] * x[:, s]
    y += x * D[:, None]
    for fn in list(FORMS.values()) + [ssd_recurrent]:
        _close(fn(*(t.float() for t in (x, dt, A, B, C, D)))[0].double(), y)


def test_two_chunks_equal_one_pass():
    x, dt, A, B, C, D, _ = _inputs(3 * CHUNK + 3)
    y_full, s_full = ssd_chunked(x, dt, A, B, C, D, None, True, chunk_size=CHUNK)
    cut = CHUNK + 3  # not on a chunk boundary
    a = [t[:, :cut] for t in (x, dt)] + [A] + [t[:, :cut] for t in (B, C)]
    b = [t[:, cut:] for t in (x, dt)] + [A] + [t[:, cut:] for t in (B, C)]
    y1, s1 = ssd_chunked(*a, D, None, True, chunk_size=CHUNK)
    y2, s2 = ssd_chunked(*b, D, s1, True, chunk_size=CHUNK)
    _close(torch.cat([y1, y2], 1), y_full)
    _close(s2, s_full)


def test_step_matches_recurrent():
    x, dt, A, B, C, D, s0 = _inputs(5)
    y_ref, s_ref = ssd_recurrent(x, dt, A, B, C, D, s0, True)
    state, ys = s0, []
    for t in range(5):
        y_t, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D)
        ys.append(y_t)
    _close(torch.stack(ys, 1), y_ref)
    _close(state, s_ref)


def test_bf16_inputs_give_bf16_outputs_and_fp32_state():
    x, dt, A, B, C, D, _ = _inputs(2 * CHUNK + 5)
    y32, _ = ssd_chunked(x, dt, A, B, C, D, chunk_size=CHUNK)
    y16, s16 = ssd_chunked(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), D, None, True,
                           chunk_size=CHUNK)
    assert y16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.05)


def test_bad_shapes_raise():
    x, dt, A, B, C, D, _ = _inputs(4)
    with pytest.raises(ValueError, match="dt must be"):
        ssd_chunked(x, dt[:, :2], A, B, C)
    with pytest.raises(ValueError, match="multiple of groups"):
        ssd_quadratic(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1))
    with pytest.raises(ValueError, match="initial_state must be"):
        ssd_recurrent(x, dt, A, B, C, D, torch.zeros(BATCH, H, N, P))


@pytest.mark.parametrize("absent, scan", [("mamba_ssm", "ssd_fused"), ("fla", "ssd_fused_fla")])
def test_fast_without_packages_names_the_install(monkeypatch, absent, scan):
    from archs import backends
    from tests.kernels import install_fake_modules
    install_fake_modules(monkeypatch, {absent: None})  # whether or not it is installed here
    x, dt, A, B, C, D, _ = _inputs(4)
    try:
        with pytest.raises(ImportError, match=r"pip install archbench\[gpu\]"):
            getattr(fused, scan)(x, dt, A, B, C, D)
    finally:
        backends.optional_import.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and fused.fused_available()),
                    reason="needs CUDA and mamba_ssm")
def test_fast_matches_reference_on_gpu():
    x, dt, A, B, C, D, s0 = _inputs(200)
    y, s = fused.ssd_fused(*(t.cuda() for t in (x, dt, A, B, C, D, s0)), True, chunk_size=64)
    y_ref, s_ref = ssd_chunked(x, dt, A, B, C, D, s0, True, chunk_size=64)
    torch.testing.assert_close(y.cpu(), y_ref, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(s.cpu(), s_ref, rtol=2e-3, atol=2e-3)
