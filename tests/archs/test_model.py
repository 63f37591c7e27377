"""The LM shell: shapes, dtypes, input validation, parameter accounting."""
import pytest
import torch

from archs import create_arch
from archs.blocks import MLP, MoE, mlp_hidden


def _tiny(**kw):
    return create_arch("transformer", **{"vocab_size": 16, "d_model": 16, "n_layers": 2, "n_heads": 2, **kw})


def test_forward_shapes_and_dtypes():
    model = _tiny()
    assert model(torch.zeros(3, 5, dtype=torch.long)).shape == (3, 5, 16)
    assert model.to(torch.bfloat16)(torch.zeros(1, 4, dtype=torch.long)).dtype == torch.bfloat16


@pytest.mark.parametrize("tokens,err,match", [
    (torch.zeros(1, 4), TypeError, "must be an integer tensor"),
    (torch.full((1, 4), 16), ValueError, r"token ids must be in \[0, 16\)"),
    (torch.full((1, 4), -1), ValueError, "token ids must be in"),
    (torch.zeros(4, dtype=torch.long), ValueError, r"\(batch, length\)"),
])
def test_bad_tokens_are_clear_errors(tokens, err, match):
    with pytest.raises(err, match=match):
        _tiny()(tokens)


def test_step_takes_one_token_per_sequence():
    model = _tiny()
    with pytest.raises(ValueError, match="one token per sequence"):
        model.step(torch.zeros(1, 2, dtype=torch.long), model.init_state(1))


def test_tied_head_counts_once():
    tied, untied = _tiny(), _tiny(tie_embeddings=False)
    assert untied.num_params() - tied.num_params() == 16 * 16
    assert tied.num_params(exclude_embeddings=True) == tied.num_params() - 16 * 16


@pytest.mark.parametrize("kind,norm", [("gelu", "layernorm"), ("swiglu", "rmsnorm")])
def test_mlp_and_norm_options(kind, norm):
    model = _tiny(mlp=kind, norm=norm)
    assert type(model.blocks[0].mlp_norm).__name__ == ("LayerNorm" if norm == "layernorm" else "RMSNorm")
    assert model.blocks[0].mlp.kind == kind


def test_swiglu_and_gelu_mlps_have_matching_params():
    a, b = MLP(96, "gelu", 4.0), MLP(96, "swiglu", 4.0)
    na, nb = (sum(p.numel() for p in m.parameters()) for m in (a, b))
    assert abs(na - nb) / na < 0.01
    assert mlp_hidden("gelu", 10, 4) == 40


def test_no_mlp_blocks():
    model = _tiny(mlp="none")
    assert model.blocks[0].mlp is None and model.blocks[0].mlp_norm is None


def test_moe_routes_each_token_to_exactly_top_k_experts():
    moe = MoE(8, n_experts=4, top_k=2)
    x = torch.randn(3, 5, 8)
    y = moe(x)
    assert y.shape == x.shape
    assert moe.last_topk.shape == (15, 2)
    assert all(len(set(row)) == 2 for row in moe.last_topk.tolist())
    aux = moe.aux_loss()
    assert torch.isfinite(aux) and aux.item() > 0
    # expert outputs really are mixed by the renormalised top-k gates
    probs = moe.router(x.reshape(-1, 8)).softmax(-1)
    g, idx = probs.topk(2, dim=-1)
    g = g / g.sum(-1, keepdim=True)
    t = 4
    manual = sum(g[t, s] * moe.experts[int(idx[t, s])](x.reshape(-1, 8)[t]) for s in range(2))
    assert torch.allclose(y.reshape(-1, 8)[t], manual, atol=1e-6)


def test_moe_bad_top_k():
    with pytest.raises(ValueError, match="top_k <= n_experts"):
        MoE(8, n_experts=2, top_k=3)


def test_aux_loss_balanced_is_one():
    moe = MoE(4, n_experts=2, top_k=1)
    torch.nn.init.zeros_(moe.router.weight)  # uniform router probabilities
    moe(torch.randn(10, 4))
    # all probabilities 1/2; top-1 of a tie is expert 0 -> frac = (1, 0): aux = 2*(1*0.5) = 1
    assert moe.aux_loss().item() == pytest.approx(1.0)


def test_analytic_flops_match_the_flop_counter_for_attention():
    """FlopCounterMode sees every matmul of the math backend, which computes the full L x L
    scores; the analytic count takes only the causal triangle. The difference is exact."""
    from torch.utils.flop_counter import FlopCounterMode
    b, length, d, h, layers = 2, 24, 32, 4, 2
    model = create_arch("transformer", vocab_size=16, d_model=d, n_layers=layers, n_heads=h, backend="ref")
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(b, length, dtype=torch.long))
    upper_triangle = length * length - length * (length + 1) // 2
    masked_work = layers * 2 * 2 * b * h * (d // h) * upper_triangle
    assert counter.get_total_flops() - model.analytic_flops(b, length) == masked_work


def test_analytic_flops_of_moe_count_only_active_experts():
    dense = create_arch("hybrid", pattern="AR", vocab_size=16, d_model=16, mixer_kwargs={"A": {"n_heads": 2}})
    moe = create_arch("hybrid", pattern="AR", vocab_size=16, d_model=16, moe_every=1, moe_offset=0,
                      n_experts=8, top_k=1, mixer_kwargs={"A": {"n_heads": 2}})
    router = 2 * 16 * 8
    assert moe.analytic_flops(1, 10) - dense.analytic_flops(1, 10) == 2 * 10 * router
