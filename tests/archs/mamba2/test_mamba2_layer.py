"""Mamba2Mixer: parallel == step == chunked prefill, causality, paper inits, config errors."""
from __future__ import annotations

import math

import pytest
import torch

from archs._scan_cpu import cpu_kernel_available
from archs.backends import BackendUnavailableError
from archs.mamba2 import GatedRMSNorm, Mamba2Config, Mamba2Mixer, fused

D_MODEL, BATCH, L = 16, 2, 21
TINY = dict(d_model=D_MODEL, d_state=8, headdim=8, chunk_size=8)  # 4 heads


def _mixer(backend="chunked", seed=0, **kw) -> Mamba2Mixer:
    torch.manual_seed(seed)
    return Mamba2Mixer(Mamba2Config(**{**TINY, "backend": backend, **kw}))


def _x(length=L, seed=1):
    return torch.randn(BATCH, length, D_MODEL, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("backend", ["ref", "chunked", "fused"])
def test_forward_equals_steps_equals_two_prefills(backend, ngroups):
    if backend == "fused" and not cpu_kernel_available():
        pytest.skip("no C compiler: the CPU kernel cannot be built")
    m, x = _mixer(backend, ngroups=ngroups), _x()
    y = m(x)
    state, steps = m.init_state(BATCH), []
    for t in range(L):
        y_t, state = m.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, rtol=1e-5, atol=1e-5)
    s = m.init_state(BATCH)
    y1, s = m.prefill(x[:, :11], s)  # 11: not on a chunk boundary, and > d_conv
    y2, s = m.prefill(x[:, 11:], s)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-5, atol=1e-5)
    for key in ("conv", "ssm"):
        torch.testing.assert_close(s[key], state[key], rtol=1e-5, atol=1e-5)


def test_prefill_shorter_than_conv_window_carries_conv_state():
    m, x = _mixer(), _x()
    s, ys = m.init_state(BATCH), []
    for a, b in ((0, 2), (2, 3), (3, 12), (12, L)):  # chunks of 2 and 1 tokens < d_conv - 1
        y, s = m.prefill(x[:, a:b], s)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), m(x), rtol=1e-5, atol=1e-5)


def test_ref_and_chunked_backends_agree_with_gradients():
    x = _x()
    outs = []
    for backend in ("ref", "chunked"):
        m = _mixer(backend)
        y = m(x)
        y.pow(2).sum().backward()
        outs.append((y, {n: p.grad for n, p in m.named_parameters()}))
    (y_a, g_a), (y_b, g_b) = outs
    torch.testing.assert_close(y_a, y_b, rtol=1e-5, atol=1e-5)
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], rtol=1e-4, atol=1e-5)


def test_gated_rmsnorm_gates_then_normalises_each_group():
    norm = GatedRMSNorm(6, group_size=3, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    y, z = torch.randn(2, 6), torch.randn(2, 6)
    h = y * z * torch.sigmoid(z)
    g1, g2 = h[:, :3], h[:, 3:]
    expected = torch.cat([g1 / g1.pow(2).mean(-1, keepdim=True).sqrt(),
                          g2 / g2.pow(2).mean(-1, keepdim=True).sqrt()], -1) * norm.weight
    torch.testing.assert_close(norm(y, z), expected)


def test_paper_inits():
    m = _mixer(headdim=4)  # 8 heads
    A = -torch.exp(m.A_log)
    assert ((A <= -1) & (A >= -16)).all()
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt >= 0.001 - 1e-6) & (dt <= 0.1 + 1e-6)).all()
    assert torch.equal(m.D, torch.ones(8))


def test_long_sequence_state_stays_finite():
    """16K tokens through the tiny mixer with the paper's A / dt inits, in two prefills."""
    m = _mixer(chunk_size=64)
    x = torch.randn(1, 16384, D_MODEL, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        s = m.init_state(1)
        y1, s = m.prefill(x[:, :8192], s)
        y2, s = m.prefill(x[:, 8192:], s)
    assert torch.isfinite(y1).all() and torch.isfinite(y2).all()
    assert torch.isfinite(s["ssm"]).all() and s["ssm"].dtype == torch.float32
    assert s["ssm"].abs().max() > 0


def test_state_is_constant_size_and_matches_analytic_bytes():
    m = _mixer()
    s = m.init_state(BATCH)
    conv_dim = 2 * D_MODEL + 2 * 8  # d_inner + 2 * ngroups * d_state
    expected = BATCH * (conv_dim * 3 * 4 + 4 * 8 * 8 * 4)
    assert m.state_bytes(BATCH) == m.state_size_bytes(s) == expected
    _, s_after = m.prefill(_x(40), s)
    assert m.state_size_bytes(s_after) == expected
    assert m.state_bytes(BATCH, torch.bfloat16) == expected - BATCH * conv_dim * 3 * 2


def test_bf16_mixer_runs_with_fp32_ssm_state():
    m = _mixer().to(torch.bfloat16)
    y = m(_x().bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    s = m.init_state(BATCH)
    y_t, s = m.step(_x(1)[:, 0].bfloat16(), s)
    assert y_t.dtype == torch.bfloat16 and s["ssm"].dtype == torch.float32
    assert s["conv"].dtype == torch.bfloat16


def test_auto_on_cpu_is_the_cpu_kernel_else_chunked(monkeypatch):
    m = _mixer("auto")
    want = "fused" if cpu_kernel_available() else "chunked"
    assert m.resolved_backend("cpu") == want == m.resolved_backend()
    monkeypatch.setenv("ARCHBENCH_CPU_KERNELS", "0")
    assert m.resolved_backend("cpu") == "chunked"


@pytest.mark.parametrize("impl, absent", [("mamba_ssm", "mamba_ssm"), ("fla", "fla")])
def test_fused_backend_without_its_package_raises_clear_error(monkeypatch, impl, absent):
    from archs import backends
    from tests.kernels import install_fake_modules
    install_fake_modules(monkeypatch, {absent: None})  # whatever is installed here
    monkeypatch.setenv("ARCHBENCH_CPU_KERNELS", "0")  # and no C kernel: no fused route can run
    try:
        with pytest.raises(ImportError, match=r"pip install archbench\[gpu\]"):
            _mixer("fused", fused_impl=impl, chunk_size=16)
        assert _mixer("auto", fused_impl=impl, chunk_size=16).resolved_backend("cuda") == "chunked"
    finally:
        backends.optional_import.cache_clear()


def test_fla_route_needs_a_chunk_it_can_tile_by():
    with pytest.raises(BackendUnavailableError, match="power of two >= 16"):
        Mamba2Config(d_model=16, headdim=8, backend="fused", fused_impl="fla", chunk_size=8)
    with pytest.raises(ValueError, match="fused_impl='triton' is not one of"):
        Mamba2Config(d_model=16, headdim=8, fused_impl="triton")


@pytest.mark.parametrize("kw, match", [
    (dict(d_model=24, headdim=64), r"2 \* 24 = 48 is not divisible by headdim=64"),
    (dict(d_model=16, headdim=8, ngroups=3), "nheads = 4 .* not divisible by ngroups=3"),
    (dict(d_model=16, headdim=8, backend="cuda"), "unknown backend 'cuda'"),
    (dict(d_model=16, headdim=8, A_init_range=(0.0, 16.0)), "A_init_range"),
    (dict(d_model=16, headdim=8, d_state=0), "d_state must be >= 1"),
])
def test_bad_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        Mamba2Config(**kw)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["mamba_ssm", "fla"])
def test_fast_mixer_matches_chunked_on_gpu(impl):
    if not fused.fused_available(impl):
        pytest.skip(f"{impl} is not installed")
    m_fast, m_ref = _mixer("fused", chunk_size=64, fused_impl=impl).cuda(), _mixer("chunked").cuda()
    x = _x(200).cuda()
    torch.testing.assert_close(m_fast(x), m_ref(x), rtol=2e-3, atol=2e-3)
    s_f, s_r = m_fast.init_state(BATCH), m_ref.init_state(BATCH)
    for t in range(3):
        y_f, s_f = m_fast.step(x[:, t], s_f)
        y_r, s_r = m_ref.step(x[:, t], s_r)
        torch.testing.assert_close(y_f, y_r, rtol=2e-3, atol=2e-3)
    assert not math.isnan(s_f["ssm"].sum().item())


@pytest.fixture
def fake_kernels(monkeypatch):
    """mamba_ssm's SSD kernels and causal_conv1d stood in by the PyTorch forms (kernel
    signatures as documented in archs/mamba2/fused.py), so the fused wiring - the guarded
    imports, layouts, in-place state updates - runs on a CPU."""
    import torch.nn.functional as F
    from einops import rearrange

    from archs import backends
    from archs._conv import causal_conv1d_channels_last
    from archs.mamba2.ref import ssd_recurrent, ssd_step
    from tests.kernels import install_fake_modules

    def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, initial_states=None,
                                  return_final_states=False):
        y, final = ssd_recurrent(x, dt, A, B, C, D, initial_states, return_final_states)
        return (y, final) if return_final_states else y

    def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                               dt_softplus=False):
        assert dt_bias is not None and D is not None  # None crashes 2.3.2.post1 (fused.py)
        y, new = ssd_step(x, dt[..., 0] + dt_bias[:, 0], A[:, 0, 0], B, C, state, D[:, 0])
        state.copy_(new)
        return y

    def causal_conv1d_fn(x, weight, bias, initial_states=None, return_final_states=False,
                         activation=None):
        y, final = causal_conv1d_channels_last(rearrange(x, "b d l -> b l d"), weight, bias,
                                               initial_states)
        y = rearrange(F.silu(y), "b l d -> b d l")
        return (y, final) if return_final_states else y

    def causal_conv1d_update(x, conv_state, weight, bias, activation):
        y, new = causal_conv1d_channels_last(x[:, None], weight, bias, conv_state)
        conv_state.copy_(new)
        return F.silu(y[:, 0])

    fakes = {"mamba_ssm": {}, "mamba_ssm.ops": {}, "mamba_ssm.ops.triton": {},
             "mamba_ssm.ops.triton.ssd_combined": {"mamba_chunk_scan_combined": mamba_chunk_scan_combined},
             "mamba_ssm.ops.triton.selective_state_update": {"selective_state_update": selective_state_update},
             "causal_conv1d": {"causal_conv1d_fn": causal_conv1d_fn,
                               "causal_conv1d_update": causal_conv1d_update}}
    install_fake_modules(monkeypatch, fakes, fused)
    # CPU tensors take mamba_ssm's route here, not the CPU kernel's
    monkeypatch.setattr(Mamba2Mixer, "_fused_kernel", staticmethod(lambda device: "fused"))
    yield
    backends.optional_import.cache_clear()


@pytest.mark.parametrize("ngroups", [1, 2])
def test_fused_wiring_matches_chunked_with_stand_in_kernels(fake_kernels, ngroups):
    from tests.kernels import assert_same_paths
    assert fused.fused_available()
    fast = _mixer("fused", ngroups=ngroups)
    assert fast.resolved_backend() == "fused:mamba_ssm/causal_conv1d"
    assert_same_paths(fast, _mixer("chunked", ngroups=ngroups), _x(), split=14, keys=("conv", "ssm"))
