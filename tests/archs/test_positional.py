"""Each positional encoding behaves as its definition says."""
import math

import pytest
import torch

from archs import SequenceTooLongError, create_arch
from archs.positional import ALiBi, RotaryEmbedding, alibi_slopes, sinusoidal_table


def test_sinusoidal_formula():
    d = 8
    table = sinusoidal_table(torch.arange(50), d)
    for pos in (0, 7, 49):
        for j in range(d // 2):
            angle = pos / 10000 ** (2 * j / d)
            assert table[pos, 2 * j].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[pos, 2 * j + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_sinusoidal_odd_width():
    assert sinusoidal_table(torch.arange(3), 5).shape == (3, 5)


def test_rope_scores_depend_only_on_relative_offset():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def score(i, j):
        return (rope(q, torch.tensor([i])) * rope(k, torch.tensor([j]))).sum().item()
    assert score(5, 2) == pytest.approx(score(105, 102), abs=1e-4)
    assert score(5, 2) == pytest.approx(score(3, 0), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_rope_preserves_norm_and_is_identity_at_zero():
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 5, 8)
    out = rope(x, torch.arange(5))
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(out[:, :, 0], x[:, :, 0])


def test_rope_needs_even_head_dim():
    with pytest.raises(ValueError, match="even head dimension"):
        RotaryEmbedding(7)


def test_alibi_slopes_as_in_the_paper():
    # Press et al. 2022: 8 heads -> 1/2, 1/4, ..., 1/256
    assert alibi_slopes(8).tolist() == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    # 16 heads -> 1/sqrt(2), 1/2, ...
    assert alibi_slopes(16)[:2].tolist() == pytest.approx([2 ** -0.5, 0.5])
    # not a power of two: 6 heads = the 4-head slopes + every other 8-head slope
    assert alibi_slopes(6).tolist() == pytest.approx([1/4, 1/16, 1/64, 1/256, 1/2, 1/8])


def test_alibi_bias_is_linear_in_distance():
    bias = ALiBi(2)(torch.arange(4), torch.arange(4))
    assert bias.shape == (2, 4, 4)
    assert bias[0, 3, 0].item() == pytest.approx(-3 * alibi_slopes(2)[0].item())
    assert torch.all(bias.diagonal(dim1=1, dim2=2) == 0)


def test_learned_table_beyond_length_is_a_clear_error():
    model = create_arch("transformer_learned", vocab_size=16, d_model=16, n_layers=1, n_heads=2, max_seq_len=8)
    model(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(SequenceTooLongError, match="supports at most 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    state = model.init_state(1)
    for _ in range(8):
        _, state = model.step(torch.zeros(1, dtype=torch.long), state)
    with pytest.raises(SequenceTooLongError):
        model.step(torch.zeros(1, dtype=torch.long), state)


def test_learned_needs_a_table_size():
    with pytest.raises(ValueError, match="needs max_seq_len"):
        create_arch("transformer_learned", d_model=16, n_heads=2, max_seq_len=None)


@pytest.mark.parametrize("pe", ["none", "sinusoidal", "learned", "rope", "alibi"])
def test_position_information_reaches_the_logits(pe):
    """With positions, a repeated token gets different logits at different positions;
    NoPE with a single-token context cannot tell positions apart."""
    torch.manual_seed(0)
    model = create_arch("transformer", vocab_size=8, d_model=16, n_layers=1, n_heads=2,
                        pos_encoding=pe, max_seq_len=64 if pe == "learned" else None)
    logits = model(torch.zeros(1, 6, dtype=torch.long))[0]
    differs = not torch.allclose(logits[1], logits[4], atol=1e-5)
    # rope/alibi act only on relative order: identical tokens give identical attention
    # averages, so like NoPE they cannot separate positions of a constant sequence
    assert differs == (pe in ("sinusoidal", "learned"))


@pytest.mark.parametrize("pe", ["sinusoidal", "learned"])
def test_absolute_positions_enter_at_the_token_embeddings_scale(pe):
    # Why: an unscaled sinusoidal table (RMS 0.71) drowned GPT-2-initialised tokens
    # (std 0.02) and a 2-layer induction model stayed at chance for 5 CPU minutes.
    model = create_arch("transformer", vocab_size=16, d_model=64, n_layers=1, pos_encoding=pe,
                        max_seq_len=512)
    tokens_rms = model.embed.weight.pow(2).mean().sqrt().item()
    positions_rms = model.positions(torch.arange(512)).pow(2).mean().sqrt().item()
    assert 0.5 < positions_rms / tokens_rms < 2.0, (positions_rms, tokens_rms)
