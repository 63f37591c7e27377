"""Mamba-1's selective scan as archbench's own Triton kernels (archs/mamba/triton_scan.py)
against the sequential reference: outputs, the last state and the gradient of every input,
over several chunks of the forward's checkpoints, grouped B / C, a state size that is not a
power of two, and each optional input on and off."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archs.mamba import triton_scan
from archs.mamba.ref import selective_scan_ref
from tests.triton_interpret.compare import compare

pytestmark = pytest.mark.triton_interpret


def _inputs(batch, length, dim, dstate, groups, *, z=True, D=True, bias=True, h0=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    bc = (batch, length, dstate) if groups == 1 else (batch, length, groups, dstate)
    return dict(
        u=torch.randn(batch, length, dim, generator=g),
        delta=0.5 * torch.randn(batch, length, dim, generator=g) - 1.0,
        A=-torch.exp(0.5 * torch.randn(dim, dstate, generator=g)),
        B=torch.randn(*bc, generator=g), C=torch.randn(*bc, generator=g),
        D=torch.randn(dim, generator=g) if D else None,
        z=torch.randn(batch, length, dim, generator=g) if z else None,
        delta_bias=0.3 * torch.randn(dim, generator=g) if bias else None,
        initial_state=torch.randn(batch, dim, dstate, generator=g) if h0 else None)


def _kernel(softplus, tiled=False):
    def run(**a):
        return triton_scan.selective_scan_triton_bld(**a, delta_softplus=softplus, return_last_state=True,
                                                     tiled=tiled)
    return run


# both forms: step by step (triton_scan.py) and in tiles of steps by a parallel scan
# (triton_scan_tiled.py, TILE steps: 40 and 150 tokens are several tiles and a part)
FORMS = pytest.mark.parametrize("tiled", [False, True], ids=["steps", "tiled"])


def _reference(softplus):
    def run(u, delta, A, B, C, D, z, delta_bias, initial_state):
        out, last = selective_scan_ref(
            u.transpose(1, 2), delta.transpose(1, 2), A, B.movedim(1, -1), C.movedim(1, -1), D,
            None if z is None else z.transpose(1, 2), delta_bias, softplus, initial_state, True)
        return out.transpose(1, 2), last
    return run


def _grads(inputs):
    return tuple(k for k, v in inputs.items() if v is not None)


# 150 = two of the step form's 64-step checkpoint chunks and a part; the tiled form's tiles
# are 16 steps, which 40 already crosses twice (the interpreter runs its scans slowly)
@pytest.mark.parametrize("length,tiled", [(1, False), (40, False), (2 * triton_scan.CHUNK + 22, False),
                                          (1, True), (40, True)])
def test_scan_matches_reference(report, length, tiled):
    inputs = _inputs(2, length, 16, 16, 1)
    errs = compare(_kernel(True, tiled), _reference(True), inputs, _grads(inputs))
    report(f"archbench triton selective scan{' (tiled)' if tiled else ''}, L={length}", *errs)


@FORMS
@pytest.mark.parametrize("groups,dim,dstate", [(2, 32, 16), (1, 24, 12)])
def test_grouped_and_odd_sizes(report, groups, dim, dstate, tiled):
    """Two groups of 16 channels (one block each); 24 channels in blocks of 8, N = 12 in a
    16-wide block (masked)."""
    # past a boundary of each form; one batch row for the tiled one (its scans are slow here)
    inputs = _inputs(1 if tiled else 2, 35 if tiled else 70, dim, dstate, groups, seed=1)
    errs = compare(_kernel(True, tiled), _reference(True), inputs, _grads(inputs))
    report(f"archbench triton selective scan{' (tiled)' if tiled else ''}, G={groups} E={dim} N={dstate}", *errs)


@FORMS
@pytest.mark.parametrize("optional", ["none", "no_softplus"])
def test_without_the_optional_inputs(report, optional, tiled):
    softplus = optional != "no_softplus"
    inputs = _inputs(1, 35 if tiled else 70, 16, 16, 1, z=False, D=False, bias=False, h0=False, seed=2)
    if not softplus:
        inputs["delta"] = F.softplus(inputs["delta"])  # a positive step size as given
    errs = compare(_kernel(softplus, tiled), _reference(softplus), inputs, _grads(inputs))
    report(f"archbench triton selective scan{' (tiled)' if tiled else ''}, no z/D/bias/h0, "
           f"softplus={softplus}", *errs)


def test_block_never_straddles_a_group():
    assert [triton_scan.block_channels(c) for c in (1, 3, 8, 24, 32, 96, 1536)] == [1, 1, 8, 8, 32, 32, 32]
    assert [triton_scan.block_channels(c, 4) for c in (1, 6, 24, 1536)] == [1, 2, 4, 4]


@pytest.mark.parametrize("impl", ["triton", "triton_tiled"])
def test_mamba_layer_on_the_triton_scan(report, impl):
    """The whole Mamba-1 mixer with its scan on the Triton kernel (what ``fused_impl="triton"``
    runs on CUDA) against the sequential reference: output, carried state, every parameter's
    gradient, from a carried state (prefill) as from a fresh one."""
    from archs.mamba.layer import MambaMixer

    torch.manual_seed(0)
    layer = MambaMixer(16, d_state=16, fused_impl=impl).double()
    assert layer.resolved_backend("cuda") == f"fused:{impl}"
    # past a checkpoint of each form (64 steps; tiles of 16), kept short: interpreted scans are slow
    batch = 2 if impl == "triton" else 1
    x = torch.randn(batch, 90 if impl == "triton" else 40, 16, dtype=torch.float64)
    state = {k: torch.randn_like(v) for k, v in layer.init_state(batch, dtype=torch.float64).items()}
    worst_fwd = worst_bwd = 0.0
    for carried in (None, state):
        outs, grads = {}, {}
        for backend in ("fused_triton", "ref"):
            layer.zero_grad()
            y, new_state = layer._forward_from(backend, x, carried)
            loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
            if new_state is not None:
                loss = loss + new_state["ssm"].sum()
            loss.backward()
            outs[backend] = (y, None if new_state is None else new_state["ssm"])
            grads[backend] = {n: p.grad.clone() for n, p in layer.named_parameters()}
        for got, want in zip(outs["fused_triton"], outs["ref"]):
            if want is not None:
                worst_fwd = max(worst_fwd, float((got - want).abs().max() / want.abs().max()))
        for name, want in grads["ref"].items():
            got = grads["fused_triton"][name]
            worst_bwd = max(worst_bwd, float((got - want).abs().max() / want.abs().max()))
    assert worst_fwd < 1e-5 and worst_bwd < 1e-4, (worst_fwd, worst_bwd)
    report(f"MambaMixer with fused_impl={impl} (fresh and carried state)", worst_fwd, worst_bwd)


def test_mamba_layer_decode_with_the_triton_impl(report, monkeypatch):
    """fused_impl="triton" decodes with mamba_ssm's Triton step kernel (it needs no CUDA
    build): steps after a prefill agree with the reference's."""
    from archs.mamba import fused
    from archs.mamba.layer import MambaMixer

    assert fused.state_update_available()
    calls = []
    kernel = fused.selective_state_update_fused
    monkeypatch.setattr(fused, "selective_state_update_fused", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    torch.manual_seed(1)
    layer = MambaMixer(16, d_state=16, fused_impl="triton")
    x = torch.randn(2, 20, 16)
    worst = 0.0
    states = {}
    for backend in ("fused_triton", "ref"):
        monkeypatch.setattr(MambaMixer, "_backend_for", lambda self, x, b=backend: b)
        with torch.no_grad():
            _, state = layer.prefill(x[:, :17], layer.init_state(2))
            ys = []
            for t in range(17, 20):
                y, state = layer.step(x[:, t], state)
                ys.append(y)
        states[backend] = (torch.stack(ys, 1), state["ssm"])
    for got, want in zip(states["fused_triton"], states["ref"]):
        worst = max(worst, float((got - want).abs().max() / want.abs().max()))
    assert len(calls) == 3, "the triton impl's steps did not run mamba_ssm's kernel"
    assert worst < 1e-5, worst
    report("mamba_ssm selective_state_update as fused_impl=triton's decode step", worst)


@FORMS
@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_one_step_with_views_for_inputs(report, layout, tiled):
    """L = 1 with B and C as views: along a dimension of size 1 a tensor's stride can be
    anything, and the kernel must index its own buffers by theirs (before, dB / dC went to the
    wrong rows, or out of bounds). "sliced": batch 1, B and C sliced from one projection as
    the layer does, 64 channels (two blocks); "transposed": batch 2, B and C given
    (batch, N, L) and moved to (batch, L, N)."""
    g = torch.Generator().manual_seed(3)
    batch, dim = (1, 64) if layout == "sliced" else (2, 16)
    if layout == "sliced":
        proj = torch.randn(batch, 1, 4 + 2 * 16, generator=g)
        B, C = proj[..., 4:20], proj[..., 20:]
    else:
        B, C = (torch.randn(batch, 16, 1, generator=g).movedim(1, 2) for _ in range(2))
    inputs = dict(u=torch.randn(batch, dim, 1, generator=g).transpose(1, 2),
                  delta=torch.randn(batch, 1, dim, generator=g), A=-torch.rand(dim, 16, generator=g),
                  B=B, C=C, D=torch.randn(dim, generator=g), z=torch.randn(batch, 1, dim, generator=g),
                  delta_bias=None, initial_state=None)
    errs = compare(_kernel(True, tiled), _reference(True), inputs, ("u", "delta", "A", "B", "C", "D", "z"))
    report(f"archbench triton selective scan{' (tiled)' if tiled else ''}, L=1, B/C {layout} views", *errs)


@FORMS
def test_softplus_keeps_its_digits_for_small_steps(report, tiled):
    """delta + bias near -10 (dt ~ 5e-5; Mamba's dt bias starts at softplus^-1(0.001)
    = -6.9): float32 log(1 + exp(x)) loses ~4e-4 of dt there, the kernel's series does not."""
    inputs = _inputs(1, 40, 16, 16, 1, seed=4)
    inputs["delta"] = inputs["delta"] - 9.0
    errs = compare(_kernel(True, tiled), _reference(True), inputs, _grads(inputs))
    report(f"archbench triton selective scan{' (tiled)' if tiled else ''}, softplus at delta + bias ~ -10", *errs)


def test_b_and_c_must_share_their_groups():
    inputs = _inputs(1, 8, 16, 16, 2)
    inputs["C"] = inputs["C"][:, :, 0]  # ungrouped C beside a grouped B
    with pytest.raises(ValueError, match="same groups"):
        _kernel(True)(**inputs)
