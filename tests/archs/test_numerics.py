"""Numerics that matter on a GPU: ALiBi's bias in bf16 models, float64 end to end."""
from __future__ import annotations

import pytest
import torch

from archs.attention.fused import attention_sdpa
from archs.attention.layer import Attention, AttentionConfig
from archs.attention.ref import attention_math
from archs.positional import ALiBi, alibi_slopes

LAST = 8191  # the last position of an 8K context


def _exact_bias(n_heads: int, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    slopes = alibi_slopes(n_heads, torch.float64)
    return -slopes[:, None, None] * (q_pos[:, None] - k_pos[None, :]).double()[None]


@pytest.mark.parametrize("n_heads", [8, 12])
def test_alibi_bias_stays_fp32_accurate_in_a_bf16_model_at_8k(n_heads):
    mixer = Attention(AttentionConfig(d_model=8 * n_heads, n_heads=n_heads, pos_encoding="alibi"))
    mixer = mixer.to(torch.bfloat16)
    assert mixer.q_proj.weight.dtype == torch.bfloat16
    # model.to(bf16) must not round the slopes (2^-0.5 would become 0.70703125)
    assert mixer.alibi.slopes.dtype == torch.float32
    assert torch.equal(mixer.alibi.slopes, alibi_slopes(n_heads))
    q_pos, k_pos = torch.tensor([LAST]), torch.arange(LAST + 1)
    bias = mixer.alibi(q_pos, k_pos)
    assert bias.dtype == torch.float32
    err = (bias.double() - _exact_bias(n_heads, q_pos, k_pos)).abs().max().item()
    assert err < 1e-3
    # what the review found: the same bias rounded to bf16 is off by whole units here
    bf16_err = (bias.to(torch.bfloat16).double() - _exact_bias(n_heads, q_pos, k_pos)).abs().max().item()
    assert bf16_err >= 4


def test_alibi_slopes_follow_the_model_to_float64_and_back():
    alibi = ALiBi(12).double()
    assert alibi.slopes.dtype == torch.float64
    assert torch.equal(alibi.slopes, alibi_slopes(12, torch.float64))
    assert alibi.half().slopes.dtype == torch.float32


def _competing_keys(n_heads: int, lk: int, dim: int = 8):
    """One query at position lk-1 whose head-0 logits q·k_j cancel the ALiBi bias of
    head 0 (slope 1/2) for a few far keys, to within ±16: they compete with the nearest
    keys, so a bias error of a few units (bf16 at distance ~8K) reweights them by e^±8.
    All values are exact in bf16."""
    distance = torch.arange(lk - 1, -1, -1, dtype=torch.float64)  # key j is at distance lk-1-j
    far = torch.tensor([lk - 1 - d for d in (8191, 7001, 6003, 5005, 4097) if d < lk])
    q = torch.zeros(1, n_heads, 1, dim, dtype=torch.float64)
    k = torch.zeros(1, n_heads, lk, dim, dtype=torch.float64)
    q[0, 0, 0, 0] = 1.0
    # multiples of 32 below 4096 are exact in bf16
    k[0, 0, far, 0] = torch.round(distance[far] * 0.5 / 32) * 32
    v = torch.randn(1, n_heads, lk, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("n_heads", [8, 12])
def test_bf16_alibi_attention_matches_fp64_at_8k(n_heads):
    lk = LAST + 1
    q, k, v = _competing_keys(n_heads, lk)
    q_pos, k_pos = torch.tensor([LAST]), torch.arange(lk)
    ref = attention_math(q, k, v.to(torch.bfloat16).double(), bias=_exact_bias(n_heads, q_pos, k_pos), scale=1.0)
    bias = ALiBi(n_heads).to(torch.bfloat16)(q_pos, k_pos)
    bf = [t.to(torch.bfloat16) for t in (q, k, v)]
    for out in (attention_sdpa(*bf, bias=bias, scale=1.0), attention_math(*bf, bias=bias, scale=1.0)):
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref, atol=1e-2, rtol=1e-2)
    # the old path (bias cast to the query dtype) is far off on head 0: the test can fail
    old = attention_math(*bf, bias=bias.to(torch.bfloat16), scale=1.0)
    assert (old.double() - ref)[0, 0].abs().max().item() > 0.1


# --- float64 end to end --------------------------------------------------------------------

def _first_mixer(name: str):
    from archs import arch_info, create_arch
    from archs.mixer import Mixer
    model = create_arch(name, vocab_size=16, **dict(arch_info(name).tiny or {})).double()
    return next(m for m in model.modules() if isinstance(m, Mixer)), model.cfg.d_model


def _neural_archs():
    """Every architecture with mixers (a count-based n-gram has none to differentiate)."""
    from archs import arch_info, create_arch, list_archs
    return [n for n in list_archs() if create_arch(n, vocab_size=16, **arch_info(n).tiny).mixers]


@pytest.mark.slow
@pytest.mark.parametrize("name", _neural_archs())
def test_float64_mixer_passes_gradcheck(name):
    """float64 must be computed in float64 (Mamba scans, RoPE, Mamba-2's dt, RetNet's decay,
    ALiBi...): a float32 step anywhere makes the finite differences disagree."""
    mixer, d_model = _first_mixer(name)
    x = torch.randn(1, 5, d_model, dtype=torch.float64, requires_grad=True)
    assert mixer(x).dtype == torch.float64
    assert torch.autograd.gradcheck(mixer, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_float64_rotary_and_scans_are_not_rounded_to_float32():
    from archs.mamba.ref import selective_scan_ref
    from archs.mamba.chunked import selective_scan_chunked
    from archs.positional import RotaryEmbedding
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64, generator=g)
    rope = RotaryEmbedding(8).double()
    assert rope.inv_freq.dtype == torch.float64
    out = rope(x, torch.arange(6))
    assert out.dtype == torch.float64
    # a float64 rotation preserves norms to float64 precision (float32 would give ~1e-7)
    assert (out.norm(dim=-1) - x.norm(dim=-1)).abs().max() < 1e-12
    assert RotaryEmbedding(8).to(torch.bfloat16).inv_freq.dtype == torch.float32
    u, delta = torch.randn(1, 3, 7, dtype=torch.float64, generator=g), torch.rand(1, 3, 7, dtype=torch.float64, generator=g)
    A = -torch.rand(3, 4, dtype=torch.float64, generator=g)
    B, C = torch.randn(1, 4, 7, dtype=torch.float64, generator=g), torch.randn(1, 4, 7, dtype=torch.float64, generator=g)
    y_ref, h_ref = selective_scan_ref(u, delta, A, B, C, return_last_state=True)
    y, h = selective_scan_chunked(u, delta, A, B, C, return_last_state=True)
    assert y.dtype == h.dtype == h_ref.dtype == torch.float64
    assert (y - y_ref).abs().max() < 1e-12 and (h - h_ref).abs().max() < 1e-12
