"""The three reference forms of causal linear attention agree, and match the definition."""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from archs.linear_attention import fused
from archs.linear_attention.chunked import linear_attn_chunked
from archs.linear_attention.ref import (
    linear_attn_quadratic,
    linear_attn_recurrent,
    linear_attn_step,
    retnet_log_decay,
    state_shape,
)

B, H, DK, DV, CHUNK = 2, 3, 5, 4, 8
FORMS = {
    "quadratic": linear_attn_quadratic,
    "chunked": functools.partial(linear_attn_chunked, chunk_size=CHUNK),
}
LENGTHS = [1, 2 * CHUNK, 2 * CHUNK + 5]  # L = 1, a multiple of the chunk, and not
DECAYS = ["none", "fixed", "gated"]


def _inputs(L: int, decay: str, normalize: bool, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = F.elu(torch.randn(B, L, H, DK, generator=g)) + 1
    k = F.elu(torch.randn(B, L, H, DK, generator=g)) + 1
    v = torch.randn(B, L, H, DV, generator=g)
    log_decay = {"none": None, "fixed": retnet_log_decay(H),
                 "gated": F.logsigmoid(torch.randn(B, L, H, generator=g) + 2)}[decay]
    s0 = torch.rand(state_shape(B, H, DK, DV, normalize), generator=g)
    return [t if t is None else t.to(dtype) for t in (q, k, v, log_decay)], s0


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("normalize", [True, False])
def test_forms_match_recurrence(form, L, decay, normalize):
    (q, k, v, ld), s0 = _inputs(L, decay, normalize)
    o_ref, s_ref = linear_attn_recurrent(q, k, v, ld, s0, True, normalize=normalize)
    o, s = FORMS[form](q, k, v, ld, s0, True, normalize=normalize)
    _close(o, o_ref)
    _close(s, s_ref)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("decay", ["none", "gated"])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradients_match_recurrence(form, decay, normalize):
    (q, k, v, ld), s0 = _inputs(2 * CHUNK + 5, decay, normalize)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, s0) + ((ld,) if ld is not None else ())]

    def grads(fn):
        ld_ = leaves[4] if ld is not None else None
        o, s = fn(*leaves[:3], ld_, leaves[3], True, normalize=normalize)
        (o.pow(2).sum() + s.sum()).backward()
        out = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        return out

    for g, g_ref in zip(grads(FORMS[form]), grads(linear_attn_recurrent)):
        _close(g, g_ref, tol=1e-4)


def _by_definition(q, k, v, gamma, normalize, eps=1e-6):
    """o_t = sum_{s<=t} gamma^(t-s) (q_t.k_s) v_s [/ sum_{s<=t} gamma^(t-s) q_t.k_s]:
    an independent double loop in float64, zero initial state."""
    q, k, v, gamma = q.double(), k.double(), v.double(), gamma.double()
    L = q.shape[1]
    out = torch.zeros(*v.shape, dtype=torch.float64)
    for t in range(L):
        num = torch.zeros(B, H, DV, dtype=torch.float64)
        den = torch.zeros(B, H, 1, dtype=torch.float64)
        for s in range(t + 1):
            w = (q[:, t] * k[:, s]).sum(-1, keepdim=True) * gamma[:, None] ** (t - s)
            num, den = num + w * v[:, s], den + w
        out[:, t] = num / (den + eps) if normalize else num
    return out.float()


@pytest.mark.parametrize("normalize", [True, False])
def test_fixed_decay_matches_definition_and_changes_result(normalize):
    (q, k, v, _), _ = _inputs(13, "none", normalize)
    ld = torch.tensor([-0.5, -0.1, -0.01])  # strong decays so the effect is large
    expected = _by_definition(q, k, v, ld.exp(), normalize)
    no_decay = _by_definition(q, k, v, torch.ones(H), normalize)
    for fn in list(FORMS.values()) + [linear_attn_recurrent]:
        o, _ = fn(q, k, v, ld, normalize=normalize)
        _close(o, expected)
        assert (o - no_decay).abs().max() > 1e-2


def test_retnet_decays():
    gammas = retnet_log_decay(4).exp()
    torch.testing.assert_close(gammas, 1 - 2.0 ** -torch.arange(5.0, 9.0))


@pytest.mark.parametrize("decay", DECAYS)
def test_two_chunks_equal_one_pass(decay):
    (q, k, v, ld), _ = _inputs(3 * CHUNK + 3, decay, True)
    o_full, s_full = linear_attn_chunked(q, k, v, ld, None, True, chunk_size=CHUNK)
    cut = CHUNK + 3  # not on a chunk boundary
    part = (lambda t, sl: t if t is None or t.dim() == 1 else t[:, sl])
    o1, s1 = linear_attn_chunked(*(part(t, slice(None, cut)) for t in (q, k, v, ld)),
                                 None, True, chunk_size=CHUNK)
    o2, s2 = linear_attn_chunked(*(part(t, slice(cut, None)) for t in (q, k, v, ld)),
                                 s1, True, chunk_size=CHUNK)
    _close(torch.cat([o1, o2], dim=1), o_full)
    _close(s2, s_full)


def test_step_matches_recurrent():
    (q, k, v, ld), s0 = _inputs(6, "gated", True)
    o_ref, s_ref = linear_attn_recurrent(q, k, v, ld, s0, True)
    state, outs = s0, []
    for t in range(6):
        o_t, state = linear_attn_step(q[:, t], k[:, t], v[:, t], ld[:, t], state)
        outs.append(o_t)
    _close(torch.stack(outs, 1), o_ref)
    _close(state, s_ref)


def test_long_sequence_state_stays_finite():
    """16K tokens with GLA-style gates (logsigmoid / 16) and elu+1 features."""
    L, g = 16384, torch.Generator().manual_seed(1)
    q, k = (F.elu(torch.randn(1, L, 2, 8, generator=g)) + 1 for _ in range(2))
    v = torch.randn(1, L, 2, 8, generator=g)
    for ld in (None, F.logsigmoid(torch.randn(1, L, 2, generator=g)) / 16):
        o, s = linear_attn_chunked(q, k, v, ld, None, True, chunk_size=64)
        assert torch.isfinite(o).all() and torch.isfinite(s).all()
        assert s.dtype == torch.float32


def test_bf16_inputs_give_bf16_outputs_close_to_fp32():
    (q, k, v, ld), _ = _inputs(2 * CHUNK + 5, "gated", True)
    o32, _ = linear_attn_chunked(q, k, v, ld, chunk_size=CHUNK)
    o16, s16 = linear_attn_chunked(q.bfloat16(), k.bfloat16(), v.bfloat16(), ld, None, True,
                                   chunk_size=CHUNK)
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    torch.testing.assert_close(o16.float(), o32, rtol=0.05, atol=0.05)


def test_bad_shapes_raise():
    (q, k, v, _), _ = _inputs(4, "none", True)
    with pytest.raises(ValueError, match="log_decay must be"):
        linear_attn_chunked(q, k, v, torch.zeros(H + 1))
    with pytest.raises(ValueError, match="initial_state must be"):
        linear_attn_chunked(q, k, v, None, torch.zeros(B, H, DK, DV))  # missing z column
    with pytest.raises(ValueError, match="expected q, k"):
        linear_attn_quadratic(q, k[:, :, :1], v)


def test_fast_without_fla_names_the_install(monkeypatch):
    from archs import backends
    from tests.kernels import install_fake_modules
    install_fake_modules(monkeypatch, {"fla": None})  # whether or not it is installed here
    (q, k, v, _), _ = _inputs(4, "none", True)
    try:
        with pytest.raises(ImportError, match=r"pip install archbench\[gpu\]"):
            fused.linear_attn_fused(q, k, v)
    finally:
        backends.optional_import.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and fused.fla_available()),
                    reason="needs CUDA and flash-linear-attention")
@pytest.mark.parametrize("decay", DECAYS)
@pytest.mark.parametrize("normalize", [True, False])
def test_fast_matches_reference_on_gpu(decay, normalize):
    (q, k, v, ld), s0 = _inputs(200, decay, normalize)
    cuda = [t if t is None else t.cuda() for t in (q, k, v, ld, s0)]
    o, s = fused.linear_attn_fused(*cuda, True, normalize=normalize)
    o_ref, s_ref = linear_attn_chunked(q, k, v, ld, s0, True, normalize=normalize)
    torch.testing.assert_close(o.cpu(), o_ref, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(s.cpu(), s_ref, rtol=2e-3, atol=2e-3)
