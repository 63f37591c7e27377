"""The chunked selective scan against the sequential reference: outputs, final states,
gradients of every input, state continuation, decoding steps, stability, dtypes, errors."""
from __future__ import annotations

import pytest
import torch

from archs.mamba import (
    selective_scan_chunked,
    selective_scan_chunked_bld,
    selective_scan_ref,
    selective_state_update_ref,
)

ATOL, RTOL = 1e-5, 1e-4
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch=2, dim=6, d_state=4, seqlen=19, groups=None, seed=0,
                grad=True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, d_state, seqlen) if groups is None else (batch, groups, d_state, seqlen)
    t = dict(
        u=torch.randn(batch, dim, seqlen, generator=g),
        delta=torch.randn(batch, dim, seqlen, generator=g) * 0.5,
        A=-torch.rand(dim, d_state, generator=g) * 2 - 0.1,
        B=torch.randn(*bc_shape, generator=g),
        C=torch.randn(*bc_shape, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, seqlen, generator=g),
        delta_bias=torch.randn(dim, generator=g) * 0.1,
        initial_state=torch.randn(batch, dim, d_state, generator=g),
    )
    return {k: v.requires_grad_(grad) for k, v in t.items()}


def run_with_grads(fn, inputs: dict, softplus: bool, **kw):
    """out, last state and d(loss)/d(input) for a loss touching both outputs."""
    out, last = fn(**inputs, delta_softplus=softplus, return_last_state=True, **kw)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g).to(out.device)  # the same weights on any device
    w_last = torch.randn(last.shape, generator=g).to(last.device)
    loss = (out * w_out).sum() + (last * w_last).sum()
    grads = torch.autograd.grad(loss, list(inputs.values()))
    return out, last, dict(zip(inputs, grads))


def assert_same_scan(inputs: dict, softplus: bool, **kw) -> None:
    ref = run_with_grads(selective_scan_ref, inputs, softplus)
    new = run_with_grads(selective_scan_chunked, inputs, softplus, **kw)
    torch.testing.assert_close(new[0], ref[0], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(new[1], ref[1], atol=ATOL, rtol=RTOL)
    for name in inputs:
        torch.testing.assert_close(new[2][name], ref[2][name], atol=ATOL, rtol=RTOL,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")


# "steps": one op per time step (the CPU's form); "doubling": log-depth rounds over each
# block (the GPU's form, chunked_blocks.doubling_states) - both run here on the CPU
FORMS = ["steps", "doubling"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("seqlen", [1, 5, 8, 16, 19])
@pytest.mark.parametrize("full", [True, False], ids=["z-D-bias-softplus-h0", "bare"])
def test_chunked_matches_reference(seqlen: int, full: bool, form: str) -> None:
    inputs = make_inputs(seqlen=seqlen)
    if not full:
        inputs = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    assert_same_scan(inputs, softplus=full, block_len=8, form=form)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("seqlen", [3, 17])
def test_chunked_matches_reference_grouped_bc(seqlen: int, form: str) -> None:
    assert_same_scan(make_inputs(dim=8, seqlen=seqlen, groups=2), softplus=True, block_len=8, form=form)


@pytest.mark.parametrize("block_len", [2, 3, 7, 16, 37, 64])
def test_doubling_blocks_of_any_length(block_len: int) -> None:
    """Rounds of span 1, 2, 4, ... over blocks that are and are not powers of two, with
    ragged tails (37 steps), one block holding everything (64) and the state carried in."""
    assert_same_scan(make_inputs(seqlen=37), softplus=True, block_len=block_len, form="doubling")


def test_forms_resolve_by_device_and_bad_form_names_the_choices() -> None:
    from archs.mamba.chunked import default_block_len, resolve_form
    cpu = torch.device("cpu")
    assert resolve_form("auto", cpu) == "steps" and resolve_form("doubling", cpu) == "doubling"
    assert resolve_form("auto", torch.device("cuda")) == "doubling"  # (no GPU needed to decide)
    assert default_block_len(1, 1536, 16, "doubling") == 512  # 2^24 state entries per block
    assert default_block_len(1, 1536, 16) == 8  # ~1 MiB: cache-sized
    with pytest.raises(ValueError, match=r"form must be one of \['auto', 'steps', 'doubling'\]"):
        selective_scan_chunked(**make_inputs(seqlen=4, grad=False), form="parallel")


def test_default_block_length_with_ragged_tail() -> None:
    # tiny shapes pick the largest block (64); 70 steps leave a 6-step tail
    assert_same_scan(make_inputs(batch=1, dim=3, d_state=2, seqlen=70), softplus=True)


def test_channels_last_entry_point_matches() -> None:
    x = make_inputs(seqlen=11, grad=False)
    ref = selective_scan_ref(**x, delta_softplus=True)
    out = selective_scan_chunked_bld(
        x["u"].transpose(1, 2), x["delta"].transpose(1, 2), x["A"], x["B"].transpose(1, 2),
        x["C"].transpose(1, 2), x["D"], x["z"].transpose(1, 2), x["delta_bias"], True,
        x["initial_state"], block_len=4)
    torch.testing.assert_close(out.transpose(1, 2), ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("scan", [selective_scan_ref, selective_scan_chunked])
def test_initial_state_continuation(scan) -> None:
    x = make_inputs(seqlen=23, grad=False)
    kw = dict(A=x["A"], D=x["D"], delta_bias=x["delta_bias"], delta_softplus=True)

    def part(sl: slice, h0):
        return scan(x["u"][..., sl], x["delta"][..., sl], B=x["B"][..., sl],
                    C=x["C"][..., sl], z=x["z"][..., sl], initial_state=h0,
                    return_last_state=True, **kw)

    whole, last = part(slice(None), None)
    first, mid = part(slice(0, 10), None)
    second, end = part(slice(10, None), mid)
    torch.testing.assert_close(torch.cat([first, second], -1), whole, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(end, last, atol=ATOL, rtol=RTOL)


def test_state_update_steps_equal_scan() -> None:
    x = make_inputs(seqlen=9, grad=False)
    out, last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    state = x["initial_state"].clone()
    for t in range(9):
        y_t = selective_state_update_ref(
            state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t],
            x["D"], x["z"][..., t], dt_bias=x["delta_bias"], dt_softplus=True)
        torch.testing.assert_close(y_t, out[..., t], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(state, last, atol=ATOL, rtol=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("form", FORMS)
def test_long_sequence_large_dt_stays_finite(form: str) -> None:
    """Paper A init (A = -(1..N)) with dt up to ~20 over 16K steps: no overflow or NaN
    (doubling: 4096-step blocks, so products of up to 4096 decays)."""
    seqlen, dim, d_state = 16384, 2, 16
    g = torch.Generator().manual_seed(0)
    A = -torch.arange(1, d_state + 1.0).repeat(dim, 1).requires_grad_()
    delta = (torch.rand(1, dim, seqlen, generator=g) * 25 - 5).requires_grad_()
    u = torch.randn(1, dim, seqlen, generator=g).requires_grad_()
    B, C = (torch.randn(1, d_state, seqlen, generator=g).requires_grad_() for _ in range(2))
    out, last = selective_scan_chunked(u, delta, A, B, C, delta_softplus=True,
                                       return_last_state=True, form=form)
    grads = torch.autograd.grad(out.square().sum() + last.sum(), [u, delta, A, B, C])
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    assert all(torch.isfinite(gr).all() for gr in grads)
    with torch.no_grad():
        ref = selective_scan_ref(u, delta, A, B, C, delta_softplus=True)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_bf16_inputs_computed_in_fp32() -> None:
    x = make_inputs(seqlen=12, grad=False)
    low = {k: (v.bfloat16() if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    low = {k: v.requires_grad_() for k, v in low.items()}
    out, last = selective_scan_chunked(**low, delta_softplus=True, return_last_state=True,
                                       block_len=4)
    ref = selective_scan_ref(**{k: v.detach() for k, v in low.items()}, delta_softplus=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref.float(), atol=1e-2, rtol=1e-2)
    out.float().sum().backward()
    assert low["u"].grad.dtype == torch.bfloat16 and torch.isfinite(low["u"].grad.float()).all()


@pytest.mark.parametrize("scan", [selective_scan_ref, selective_scan_chunked])
@pytest.mark.parametrize("bad, match", [
    (dict(delta=torch.zeros(2, 6, 5)), "delta must have u's shape"),
    (dict(A=torch.zeros(5, 4)), "A must be"),
    (dict(B=torch.zeros(2, 3, 19)), "B must be"),
    (dict(C=torch.zeros(2, 4, 4, 19)), "C must be"),  # 4 groups do not divide dim=6
    (dict(D=torch.zeros(5)), "D must be"),
    (dict(initial_state=torch.zeros(2, 6, 3)), "initial_state must be"),
])
def test_bad_shapes_raise(scan, bad: dict, match: str) -> None:
    x = {**make_inputs(grad=False), **bad}
    with pytest.raises(ValueError, match=match):
        scan(**x)


def test_bad_block_len_raises() -> None:
    with pytest.raises(ValueError, match="block_len"):
        selective_scan_chunked(**make_inputs(grad=False), block_len=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chunked_scan_on_the_gpu_matches_the_reference() -> None:
    """The GPU's own form ("auto" = doubling there) with its default blocks, against the
    sequential reference on the CPU: outputs, last state, every gradient."""
    inputs = make_inputs(batch=2, dim=64, d_state=16, seqlen=300)
    ref = run_with_grads(selective_scan_ref, inputs, True)
    cuda = {k: v.detach().cuda().requires_grad_() for k, v in inputs.items()}
    for block_len in (None, 64):  # one block (the default here), then 5 with carries between
        new = run_with_grads(selective_scan_chunked, cuda, True, block_len=block_len)
        torch.testing.assert_close(new[0].cpu(), ref[0], atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(new[1].cpu(), ref[1], atol=1e-4, rtol=1e-3)
        for name in inputs:
            torch.testing.assert_close(new[2][name].cpu(), ref[2][name], atol=1e-4, rtol=1e-3,
                                       msg=lambda m, name=name, b=block_len: f"grad of {name}, block {b}: {m}")
