"""LinearAttentionMixer: parallel == step == chunked prefill, causality, config errors."""
from __future__ import annotations

import pytest
import torch

from archs.backends import BackendUnavailableError
from archs.linear_attention import LinearAttentionConfig, LinearAttentionMixer, fused

D_MODEL, BATCH, L = 24, 2, 21


def _mixer(backend="chunked", seed=0, **kw) -> LinearAttentionMixer:
    torch.manual_seed(seed)
    kw = {"chunk_size": 16 if backend == "fused" else 8, **kw}  # fla's kernels: >= 16
    cfg = LinearAttentionConfig(d_model=D_MODEL, n_heads=3, backend=backend, **kw)
    return LinearAttentionMixer(cfg)


def _x(length=L, seed=1):
    return torch.randn(BATCH, length, D_MODEL, generator=torch.Generator().manual_seed(seed))


VARIANTS = [dict(decay="none"), dict(decay="fixed"), dict(decay="gated"),
            dict(decay="fixed", normalize=False, feature_map="identity")]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
@pytest.mark.parametrize("backend", ["ref", "chunked"])
def test_forward_equals_steps_equals_two_prefills(backend, variant):
    m, x = _mixer(backend, **variant), _x()
    y = m(x)
    state, steps = m.init_state(BATCH), []
    for t in range(L):
        y_t, state = m.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-5, atol=1e-5)
    s = m.init_state(BATCH)
    y1, s = m.prefill(x[:, :11], s)
    y2, s = m.prefill(x[:, 11:], s)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s["kv"], state["kv"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("decay", ["none", "gated"])
def test_ref_and_chunked_backends_agree_with_gradients(decay):
    x = _x()
    outs = []
    for backend in ("ref", "chunked"):
        m = _mixer(backend, decay=decay)
        y = m(x)
        y.pow(2).sum().backward()
        outs.append((y, {n: p.grad for n, p in m.named_parameters()}))
    (y_a, g_a), (y_b, g_b) = outs
    torch.testing.assert_close(y_a, y_b, rtol=1e-5, atol=1e-5)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=1e-4, atol=1e-5)


def test_decay_option_changes_output():
    x = _x()
    y_none = _mixer(decay="none")(x)
    y_fixed = _mixer(decay="fixed")(x)  # same seed: same projections
    assert (y_none - y_fixed).abs().max() > 1e-3


def test_state_is_constant_size_and_matches_analytic_bytes():
    m = _mixer(decay="gated")
    s = m.init_state(BATCH)
    assert m.state_bytes(BATCH) == m.state_size_bytes(s) == BATCH * 3 * 8 * 9 * 4
    _, s_after = m.prefill(_x(40), s)
    assert m.state_size_bytes(s_after) == m.state_size_bytes(s)
    assert m.state_growth == "constant"


def test_bf16_mixer_runs():
    m = _mixer().to(torch.bfloat16)
    y = m(_x().bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    _, s = m.step(_x(1)[:, 0].bfloat16(), m.init_state(BATCH))
    assert s["kv"].dtype == torch.float32


def test_auto_resolves_to_chunked_on_cpu():
    m = _mixer("auto")
    assert m.resolved_backend("cpu") == "chunked"
    assert m.resolved_backend() == "chunked"


def test_fast_backend_without_fla_raises_clear_error(monkeypatch):
    from archs import backends
    from tests.kernels import install_fake_modules
    install_fake_modules(monkeypatch, {"fla": None})  # whether or not it is installed here
    try:
        with pytest.raises(ImportError, match=r"pip install archbench\[gpu\]"):
            _mixer("fused")
    finally:
        backends.optional_import.cache_clear()


def test_fused_needs_a_chunk_fla_can_tile_by():
    with pytest.raises(BackendUnavailableError, match="power of two >= 16"):
        _mixer("fused", chunk_size=8)
    with pytest.raises(BackendUnavailableError, match="power of two >= 16"):
        _mixer("fused", chunk_size=48)


@pytest.mark.parametrize("kw, match", [
    (dict(d_model=10, n_heads=3), "not divisible by n_heads"),
    (dict(d_model=12, backend="flash"), "unknown backend 'flash'"),
    (dict(d_model=12, decay="alibi"), "decay='alibi' is not one of"),
    (dict(d_model=12, feature_map="identity"), "needs a positive feature map"),
    (dict(d_model=12, chunk_size=0), "must all be >= 1"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        LinearAttentionConfig(**kw)


@pytest.fixture
def fake_fla(monkeypatch):
    """fla's simple-GLA kernels stood in by the shared recurrence, so the fused wiring (the
    guarded import, layouts, the normaliser column, states) runs on a CPU."""
    from archs import _ssd, backends
    from tests.kernels import install_fake_modules

    def chunk_simple_gla(q, k, v, g, scale, initial_state=None, output_final_state=False,
                         chunk_size=64):
        state = initial_state if initial_state is not None else q.new_zeros(
            q.shape[0], q.shape[2], q.shape[3], v.shape[3], dtype=torch.float32)
        o, final = _ssd.recurrent_core(q.float() * scale, k.float(), v.float(), g.float(), state)
        return o.to(v.dtype), (final if output_final_state else None)

    ops = {"chunk_simple_gla": chunk_simple_gla, "fused_recurrent_simple_gla": chunk_simple_gla}
    install_fake_modules(monkeypatch, {"fla": {}, "fla.ops": {}, "fla.ops.simple_gla": ops}, fused)
    yield
    backends.optional_import.cache_clear()


@pytest.mark.parametrize("decay", ["none", "fixed", "gated"])
def test_fused_wiring_matches_chunked_with_a_stand_in_kernel(fake_fla, decay):
    from tests.kernels import assert_same_paths
    assert fused.fla_available()
    assert_same_paths(_mixer("fused", decay=decay), _mixer("chunked", decay=decay), _x(), split=10)
