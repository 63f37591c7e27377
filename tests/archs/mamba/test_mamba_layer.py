"""MambaMixer: parallel forward == token-by-token step == chunked prefill, backends agree,
causality, init, state accounting, backend resolution and the guarded fast path."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archs.mamba import (
    FastKernelsUnavailable,
    MambaConfig,
    MambaMixer,
    mamba_ssm_available,
)
from archs.mamba import fused, fused_cpu

ATOL, RTOL = 1e-5, 1e-4
TINY = dict(d_state=4, d_conv=4, expand=2)
no_mamba_ssm = pytest.mark.skipif(mamba_ssm_available(), reason="mamba_ssm is installed")


def tiny_mixer(backend: str = "chunked", seed: int = 0, **kw) -> MambaMixer:
    torch.manual_seed(seed)
    return MambaMixer(16, backend=backend, block_len=4, **{**TINY, **kw})


@pytest.mark.parametrize("backend", ["ref", "chunked", "fused"])
def test_forward_equals_steps_and_chunked_prefill(backend: str) -> None:
    if backend == "fused" and not fused_cpu.cpu_kernel_available():
        pytest.skip("no C compiler: the CPU kernel cannot be built")
    m = tiny_mixer(backend)
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        y = m(x)
        state = m.init_state(2)
        steps = []
        for t in range(13):
            y_t, state = m.step(x[:, t], state)
            steps.append(y_t)
        # chunks of 1 and 2 tokens are shorter than the conv's d_conv - 1 = 3 inputs
        pieces, pstate = [], m.init_state(2)
        for sl in (slice(0, 5), slice(5, 6), slice(6, 8), slice(8, 13)):
            y_c, pstate = m.prefill(x[:, sl], pstate)
            pieces.append(y_c)
    torch.testing.assert_close(torch.stack(steps, 1), y, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(torch.cat(pieces, 1), y, atol=ATOL, rtol=RTOL)
    for key in ("conv", "ssm"):
        torch.testing.assert_close(pstate[key], state[key], atol=ATOL, rtol=RTOL)


def test_step_and_prefill_leave_the_given_state_untouched() -> None:
    m = tiny_mixer()
    state = m.init_state(1)
    state["ssm"].normal_()
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        m.step(torch.randn(1, 16), state)
        m.prefill(torch.randn(1, 3, 16), state)
    for k in state:
        assert torch.equal(state[k], before[k])


@pytest.mark.parametrize("form", ["device", "doubling"])
def test_ref_and_chunked_backends_agree_with_gradients(form: str, monkeypatch) -> None:
    """"doubling": the chunked scan's GPU form, forced on the CPU, through the whole layer."""
    if form == "doubling":
        from archs.mamba import chunked as chunked_mod
        monkeypatch.setattr(chunked_mod, "resolve_form", lambda form, device: "doubling")
    ref, chunked = tiny_mixer("ref"), tiny_mixer("chunked")
    chunked.load_state_dict(ref.state_dict())
    x = torch.randn(2, 11, 16)
    outs = []
    for m in (ref, chunked):
        xx = x.clone().requires_grad_()
        y = m(xx)
        grads = torch.autograd.grad(y.square().sum(), [xx, *m.parameters()])
        outs.append((y, grads))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=ATOL, rtol=RTOL)
    names = ["x"] + [n for n, _ in ref.named_parameters()]
    for name, g_ref, g_new in zip(names, outs[0][1], outs[1][1]):
        torch.testing.assert_close(g_new, g_ref, atol=ATOL, rtol=RTOL,
                                   msg=lambda msg, name=name: f"grad of {name}: {msg}")


def test_paper_initialisation() -> None:
    cfg = dict(d_state=16, dt_min=0.001, dt_max=0.1)
    m = MambaMixer(64, backend="chunked", **cfg)
    dt = F.softplus(m.dt_proj.bias.detach())
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    torch.testing.assert_close(m.A, -torch.arange(1, 17.0).repeat(128, 1))
    assert m.config.dt_rank == math.ceil(64 / 16) and m.dt_proj.in_features == 4
    assert torch.equal(m.D.detach(), torch.ones(128))


def test_state_size_is_constant_and_analytic() -> None:
    m = tiny_mixer()
    assert m.state_growth == "constant"
    for dtype in (torch.float32, torch.bfloat16):
        state = m.init_state(3, dtype=dtype)
        assert state["ssm"].dtype == torch.float32 and state["conv"].dtype == dtype
        assert state["conv"].shape == (3, 32, 3) and state["ssm"].shape == (3, 32, 4)
        assert m.state_bytes(3, dtype) == m.state_size_bytes(state)


def test_bf16_module_runs_scan_in_fp32() -> None:
    m32 = tiny_mixer()
    m16 = tiny_mixer().to(torch.bfloat16)
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        y32, y16 = m32(x), m16(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, atol=5e-2, rtol=5e-2)


# -- backend resolution and the guarded fast path --------------------------------------------
def test_auto_on_cpu_is_the_cpu_kernel_else_chunked(monkeypatch) -> None:
    m = tiny_mixer("auto")
    want = "fused" if fused_cpu.cpu_kernel_available() else "chunked"
    assert m.resolved_backend() == want
    assert m.resolved_backend("cpu") == want
    assert tiny_mixer("ref").resolved_backend("cpu") == "ref"
    monkeypatch.setenv("ARCHBENCH_CPU_KERNELS", "0")
    assert m.resolved_backend("cpu") == "chunked"


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        MambaConfig(d_model=8, backend="cuda")
    with pytest.raises(ValueError, match="dt_rank"):
        MambaConfig(d_model=8, dt_rank=0)
    with pytest.raises(ValueError, match="dt_min <= dt_max"):
        MambaConfig(d_model=8, dt_min=0.1, dt_max=0.01)


@no_mamba_ssm
def test_fast_backend_without_mamba_ssm_raises_clear_error(monkeypatch) -> None:
    assert not mamba_ssm_available()
    monkeypatch.setenv("ARCHBENCH_CPU_KERNELS", "0")  # neither fused kernel can run
    with pytest.raises(FastKernelsUnavailable, match=r"backend='chunked'"):
        tiny_mixer("fused")
    x = torch.randn(1, 4, 3)
    with pytest.raises(ImportError, match=r"archbench\[gpu\]"):
        fused.selective_scan_fused(x, x, torch.zeros(4, 2), torch.zeros(1, 2, 3),
                                 torch.zeros(1, 2, 3))
    with pytest.raises(ImportError, match=r"archbench\[gpu\]"):
        fused.causal_conv1d_fused(x, torch.zeros(4, 4))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and mamba_ssm_available()),
                    reason="needs CUDA and mamba_ssm")
def test_fast_backend_matches_chunked_on_cuda() -> None:  # pragma: no cover - GPU only
    fast_m, chunked = tiny_mixer("fused").cuda(), tiny_mixer("chunked").cuda()
    x = torch.randn(2, 64, 16, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fast_m(x), chunked(x), atol=1e-4, rtol=1e-3)
        state_f, state_c = fast_m.init_state(2), chunked.init_state(2)
        for t in range(3):
            y_f, state_f = fast_m.step(x[:, t], state_f)
            y_c, state_c = chunked.step(x[:, t], state_c)
            torch.testing.assert_close(y_f, y_c, atol=1e-4, rtol=1e-3)
        y_f, _ = fast_m.prefill(x[:, 3:], state_f)
        y_c, _ = chunked.prefill(x[:, 3:], state_c)
        torch.testing.assert_close(y_f, y_c, atol=1e-4, rtol=1e-3)


# -- pieces checked against independent implementations ----------------------------------------
@pytest.mark.parametrize("taps", [1, 2, 4])
def test_channels_last_conv_matches_conv1d_with_prefix(taps: int) -> None:
    from archs._conv import causal_conv1d_channels_last

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 5, generator=g, requires_grad=True)
    w = torch.randn(5, taps, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True)
    prefix = torch.randn(2, 5, taps - 1, generator=g, requires_grad=True)
    out, new_prefix = causal_conv1d_channels_last(x, w, b, prefix)
    full = torch.cat([prefix, x.transpose(1, 2)], dim=-1)  # (B, E, K-1+L)
    ref = F.conv1d(full, w.unsqueeze(1), b, groups=5).transpose(1, 2)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(new_prefix, full[..., full.shape[-1] - (taps - 1):])
    gy = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad((out * gy).sum(), [x, w, b, prefix], allow_unused=True)
    want = torch.autograd.grad((ref * gy).sum(), [x, w, b, prefix], allow_unused=True)
    for name, a, e in zip(("x", "w", "b", "prefix"), got, want):
        if e is None:  # taps == 1: no prefix
            continue
        torch.testing.assert_close(a, e, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("d_conv", [1, 2])
def test_short_conv_widths_step_equals_forward(d_conv: int) -> None:
    m = tiny_mixer(d_conv=d_conv)
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        y = m(x)
        state, steps = m.init_state(1), []
        for t in range(6):
            y_t, state = m.step(x[:, t], state)
            steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, atol=ATOL, rtol=RTOL)


def test_fast_path_initial_state_superposition() -> None:
    """selective_scan_fused adds h0's decayed contribution to a zero-state kernel run; check
    that identity on the reference (runs on CPU, no mamba_ssm needed)."""
    from archs.mamba.ref import discretize_dt, selective_scan_ref

    g = torch.Generator().manual_seed(0)
    u, delta = torch.randn(2, 6, 11, generator=g), torch.randn(2, 6, 11, generator=g)
    A = -torch.rand(6, 4, generator=g) - 0.1
    B, C = torch.randn(2, 2, 4, 11, generator=g), torch.randn(2, 2, 4, 11, generator=g)
    h0, bias = torch.randn(2, 6, 4, generator=g), torch.randn(6, generator=g)
    kw = dict(delta_bias=bias, delta_softplus=True, return_last_state=True)
    want, want_last = selective_scan_ref(u, delta, A, B, C, initial_state=h0, **kw)
    zero, zero_last = selective_scan_ref(u, delta, A, B, C, **kw)
    y_h0, last_h0 = fused._initial_state_term(discretize_dt(delta, bias, True), A, C, h0, chunk=4)
    torch.testing.assert_close(zero + y_h0, want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(zero_last + last_h0, want_last, atol=ATOL, rtol=RTOL)


@pytest.fixture
def fake_mamba_ssm(monkeypatch):
    """mamba_ssm's scan and decode kernels stood in by the references with the same
    signatures (causal_conv1d absent: the short conv stays in PyTorch, as on such installs),
    so the fused wiring and its initial-state handling run on a CPU."""
    import archs.mamba.layer
    from archs import backends
    from archs.mamba.ref import selective_scan_ref, selective_state_update_ref
    from tests.kernels import install_fake_modules

    install_fake_modules(monkeypatch, {
        "mamba_ssm": {}, "mamba_ssm.ops": {}, "mamba_ssm.ops.triton": {},
        "mamba_ssm.ops.selective_scan_interface": {"selective_scan_fn": selective_scan_ref},
        "mamba_ssm.ops.triton.selective_state_update": {"selective_state_update": selective_state_update_ref},
        "causal_conv1d": None}, fused)
    # CPU tensors take mamba_ssm's route here, not the CPU kernel's
    monkeypatch.setattr(archs.mamba.layer.MambaMixer, "_fused_kernel", staticmethod(lambda device: "fused"))
    yield
    backends.optional_import.cache_clear()


def test_fused_wiring_matches_chunked_with_stand_in_kernels(fake_mamba_ssm):
    from tests.kernels import assert_same_paths
    assert mamba_ssm_available() and not fused.causal_conv1d_available()
    x = torch.randn(2, 13, 16, generator=torch.Generator().manual_seed(1))
    # the second prefill runs the kernel from zero and adds the carried state in PyTorch
    assert_same_paths(tiny_mixer("fused"), tiny_mixer("chunked"), x, split=10, keys=("ssm",))


def test_low_rank_linear_matches_linear_and_passes_gradcheck():
    """The dt projection's reshaped gradient products (archs.blocks.low_rank_linear) give
    F.linear's gradients: float64 gradcheck on a strided slice (as torch.split gives it),
    and plain F.linear when no gradient is recorded."""
    from archs.blocks import low_rank_linear

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 12, dtype=torch.float64, generator=g)[..., :4].requires_grad_()
    w = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(low_rank_linear, (x, w))
    out = low_rank_linear(x, w)
    assert out.grad_fn is not None and "LowRank" in type(out.grad_fn).__name__
    with torch.no_grad():
        torch.testing.assert_close(low_rank_linear(x, w), torch.nn.functional.linear(x, w))


# -- fused_impl="triton": the project's Triton scan on CUDA (tests/triton_interpret runs it) ---
def test_fused_impl_is_checked_and_named():
    with pytest.raises(ValueError, match=r"fused_impl=.cuda.*\(.mamba_ssm., .triton., .triton_tiled.\)"):
        MambaMixer(16, fused_impl="cuda")


def test_triton_impl_resolves_on_cuda_only(monkeypatch):
    from archs.mamba import layer as mamba_layer

    m = tiny_mixer("auto", fused_impl="triton")
    monkeypatch.setattr(mamba_layer, "triton_available", lambda: True)
    assert m.resolved_backend("cuda") == "fused:triton"
    # a CPU runs the C kernel (or the chunked scan without a compiler) whatever fused_impl says
    assert m.resolved_backend("cpu") == ("fused" if fused_cpu.cpu_kernel_available() else "chunked")
    assert tiny_mixer("auto").resolved_backend("cuda") == ("fused" if fused.mamba_ssm_available() else "chunked")
    monkeypatch.setattr(mamba_layer, "triton_available", lambda: False)
    assert m.resolved_backend("cuda") == "chunked"  # auto falls back, and says so


def test_triton_impl_without_triton_is_a_clear_error(monkeypatch):
    from archs.backends import BackendUnavailableError

    import archs.backends

    m = tiny_mixer("fused", fused_impl="triton")
    # as on a CUDA machine whose triton does not import
    monkeypatch.setattr(MambaMixer, "resolved_backend", lambda self, device=None, seq_len=None: "fused:triton")
    real = archs.backends.optional_import
    monkeypatch.setattr(archs.backends, "optional_import", lambda name: None if name == "triton" else real(name))
    with pytest.raises(BackendUnavailableError, match=r"Mamba: backend 'fused' needs `triton`"):
        m(torch.randn(1, 4, 16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "triton_tiled"])
def test_triton_scan_matches_chunked_on_cuda(impl) -> None:  # pragma: no cover - GPU only
    """fused_impl="triton" / "triton_tiled" on a GPU: forward, prefill from a carried state,
    and every parameter's gradient against the chunked scan (fp32; the kernels compute in fp32)."""
    tri, chunked = tiny_mixer("fused", fused_impl=impl).cuda(), tiny_mixer("chunked").cuda()
    assert tri.resolved_backend() == f"fused:{impl}"
    x = torch.randn(2, 150, 16, device="cuda")
    for m in (tri, chunked):
        m(x).square().sum().backward()
    torch.testing.assert_close(tri(x), chunked(x), atol=1e-4, rtol=1e-3)
    for (name, p), q in zip(tri.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-3, rtol=1e-3, msg=name)
    state = tri.init_state(2)
    with torch.no_grad():
        torch.testing.assert_close(tri.prefill(x, state)[0], chunked.prefill(x, state)[0], atol=1e-4, rtol=1e-3)
