"""Every Triton kernel archbench calls, under the interpreter, against its reference.

Linear attention / RetNet / GLA and Mamba-2's fla route: fla's chunk_simple_gla and
fused_recurrent_simple_gla. Mamba-2: mamba_ssm's mamba_chunk_scan_combined and
selective_state_update (also Mamba-1's decode step). Every decay / gating shape, with and
without a skip D and an initial state, grouped B/C, and a length that is not a multiple of
the chunk; outputs, final states and the gradients of every input.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from archs.linear_attention import fused as la_fused
from archs.linear_attention.ref import linear_attn_recurrent, linear_attn_step, retnet_log_decay, state_shape
from archs.mamba import fused as mamba_fused
from archs.mamba.ref import selective_state_update_ref
from archs.mamba2 import fused as ssd_fused
from archs.mamba2.ref import ssd_recurrent, ssd_step
from tests.triton_interpret.compare import compare

pytestmark = pytest.mark.triton_interpret

# 40 = 2 chunks of 16 + 8: a partial last chunk (16: the smallest chunk fla's kernels can
# tile by on a GPU, see shims.py). Head and state dims of 16, as real models have (>= 16).
BATCH, L, CHUNK = 2, 40, 16
H, DK, DV = 2, 16, 16          # linear attention
P, G, N = 16, 2, 16            # Mamba-2: head dim, groups, state (H heads)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- linear attention (fla simple GLA) --------------------------------------------------------
def _la_inputs(length: int, decay: str, normalize: bool) -> dict:
    g = _g()
    q, k = (F.elu(torch.randn(BATCH, length, H, DK, generator=g)) + 1 for _ in range(2))
    return dict(q=q, k=k, v=torch.randn(BATCH, length, H, DV, generator=g),
                log_decay={"none": None, "fixed": retnet_log_decay(H),
                           "gated": F.logsigmoid(torch.randn(BATCH, length, H, generator=g) + 2)}[decay],
                initial_state=torch.rand(state_shape(BATCH, H, DK, DV, normalize), generator=g))


def _grads(inputs: dict, decay: str) -> tuple[str, ...]:
    return tuple(n for n in inputs if inputs[n] is not None and (n != "log_decay" or decay == "gated"))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("decay", ["none", "fixed", "gated"])
def test_chunk_simple_gla_linear_attention(report, decay, normalize):
    inputs = _la_inputs(L, decay, normalize)
    kw = dict(return_final_state=True, normalize=normalize)
    errs = compare(lambda **a: la_fused.linear_attn_fused(**a, chunk_size=CHUNK, **kw),
                   lambda **a: linear_attn_recurrent(**a, **kw), inputs, _grads(inputs, decay))
    report(f"fla chunk_simple_gla: linear attn decay={decay} normalize={normalize}", *errs)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("decay", ["none", "fixed", "gated"])
def test_fused_recurrent_simple_gla_linear_attention_step(report, decay, normalize):
    full = _la_inputs(1, decay, normalize)
    inputs = {f"{n}_t": full[n][:, 0] for n in ("q", "k", "v")}
    ld = full["log_decay"]
    inputs.update(log_decay_t=None if ld is None else (ld if decay == "fixed" else ld[:, 0]),
                  state=full["initial_state"])
    grads = tuple(n for n in inputs if inputs[n] is not None and (n != "log_decay_t" or decay == "gated"))
    errs = compare(lambda **a: la_fused.linear_attn_fused_step(**a, normalize=normalize),
                   lambda **a: linear_attn_step(**a, normalize=normalize), inputs, grads)
    report(f"fla fused_recurrent_simple_gla: step decay={decay} normalize={normalize}", *errs)


def test_step_leaves_the_state_passed_in_unchanged():
    full = _la_inputs(1, "fixed", True)
    state = full["initial_state"].clone()
    la_fused.linear_attn_fused_step(full["q"][:, 0], full["k"][:, 0], full["v"][:, 0], full["log_decay"],
                                    state)
    torch.testing.assert_close(state, full["initial_state"], rtol=0, atol=0)


# -- Mamba-2 SSD: mamba_ssm's kernels and fla's ---------------------------------------------
def _ssd_inputs(length: int, groups: int, skip: bool) -> dict:
    g = _g(1)
    return dict(x=torch.randn(BATCH, length, H, P, generator=g),
                dt=F.softplus(torch.randn(BATCH, length, H, generator=g) - 1),
                A=-torch.empty(H).uniform_(0.5, 4, generator=g),
                B=torch.randn(BATCH, length, groups, N, generator=g),
                C=torch.randn(BATCH, length, groups, N, generator=g),
                D=torch.randn(H, generator=g) if skip else None,
                initial_state=torch.randn(BATCH, H, P, N, generator=g))


SCANS = {"mamba_ssm mamba_chunk_scan_combined": ssd_fused.ssd_fused,
         "fla chunk_simple_gla": ssd_fused.ssd_fused_fla}
STEPS = {"mamba_ssm selective_state_update": ssd_fused.ssd_step_fused,
         "fla fused_recurrent_simple_gla": ssd_fused.ssd_step_fused_fla}


# (groups, D): both group layouts and both skip settings in two calls (each costs seconds)
SHAPES = [(1, False), (2, True)]


@pytest.mark.parametrize("groups, skip", SHAPES, ids=["G1_no_D", "G2_D"])
@pytest.mark.parametrize("kernel", list(SCANS))
def test_ssd_scan(report, kernel, groups, skip):
    inputs = _ssd_inputs(L, groups, skip)
    grads = tuple(n for n, t in inputs.items() if t is not None)
    errs = compare(lambda **a: SCANS[kernel](**a, return_final_state=True, chunk_size=CHUNK),
                   lambda **a: ssd_recurrent(**a, return_final_state=True), inputs, grads)
    report(f"{kernel}: Mamba-2 SSD groups={groups} {'D' if skip else 'no D'}", *errs)


@pytest.mark.parametrize("skip", [True, False], ids=["D", "no_D"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("kernel", list(STEPS))
def test_ssd_step(report, kernel, groups, skip):
    """mamba_ssm's step crashed before its launch (dt_bias=None, D=None) at c1ceaec."""
    full = _ssd_inputs(1, groups, skip)
    inputs = dict(x_t=full["x"][:, 0], dt_t=full["dt"][:, 0], A=full["A"], B_t=full["B"][:, 0],
                  C_t=full["C"][:, 0], state=full["initial_state"], D=full["D"])
    # selective_state_update is a decode kernel without a backward
    grads = () if kernel.startswith("mamba_ssm") else tuple(n for n, t in inputs.items() if t is not None)
    state = inputs["state"].clone()
    errs = compare(STEPS[kernel], ssd_step, inputs, grads)
    torch.testing.assert_close(inputs["state"], state, rtol=0, atol=0)  # a copy is updated
    report(f"{kernel}: Mamba-2 step groups={groups} {'D' if skip else 'no D'}", *errs)


# -- Mamba-1's decode step (mamba_ssm selective_state_update, per-channel) -------------------
@pytest.mark.parametrize("extras", [False, True], ids=["plain", "D_z_bias_softplus"])
def test_mamba1_selective_state_update(report, extras):
    g, dim = _g(2), 32
    inputs = dict(state=torch.randn(BATCH, dim, N, generator=g), x=torch.randn(BATCH, dim, generator=g),
                  dt=torch.rand(BATCH, dim, generator=g) * 0.5, A=-torch.rand(dim, N, generator=g) - 0.5,
                  B=torch.randn(BATCH, N, generator=g), C=torch.randn(BATCH, N, generator=g))
    if extras:
        inputs.update(D=torch.randn(dim, generator=g), z=torch.randn(BATCH, dim, generator=g),
                      dt_bias=torch.randn(dim, generator=g) * 0.1)

    def run(fn):
        def call(state, **a):  # both update the state in place: compare the new state too
            state = state.clone()
            return fn(state, **a, dt_softplus=extras), state
        return call
    errs = compare(run(mamba_fused.selective_state_update_fused), run(selective_state_update_ref), inputs)
    report(f"mamba_ssm selective_state_update: Mamba-1 step {'D z dt_bias softplus' if extras else ''}", *errs)
