"""model.norm_position: pre-norm (GPT-2) and post-norm (the original Transformer) residual
blocks - the formula itself, no final norm after post-norm blocks, decoding, one default."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from archs import create_arch
from archs.blocks import Block, MLP
from archs.mixer import Mixer
from archs.model import LMConfig
from harness.conformance import run_check


class _Linear(Mixer):
    """A position-wise mixer: enough to pin the residual formula down."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(x)

    def step(self, x_t, state):
        return self.proj(x_t), state


def _block(position: str, seed: int = 0) -> Block:
    torch.manual_seed(seed)
    block = Block(8, _Linear(8), MLP(8, "gelu", 2.0), "layernorm", position)
    for norm in (block.mixer_norm, block.mlp_norm):  # not the identity affine of a fresh norm
        nn.init.normal_(norm.weight, 1.0, 0.3)
        nn.init.normal_(norm.bias, 0.0, 0.3)
    return block


def test_post_norm_block_is_norm_of_the_residual_sum():
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    b = _block("post")
    h = b.mixer_norm(x + b.mixer(x))
    want = b.mlp_norm(h + b.mlp(h))
    torch.testing.assert_close(b(x), want)
    # the same weights as a pre-norm block compute the other formula, and it differs
    p = _block("pre")
    p.load_state_dict(b.state_dict())
    h = x + p.mixer(p.mixer_norm(x))
    torch.testing.assert_close(p(x), h + p.mlp(p.mlp_norm(h)))
    assert (p(x) - b(x)).abs().max() > 0.1


def test_post_norm_block_without_mlp_and_in_decoding():
    torch.manual_seed(0)
    b = Block(8, _Linear(8), None, "rmsnorm", "post")
    x = torch.randn(3, 8)
    torch.testing.assert_close(b(x), b.mixer_norm(x + b.mixer(x)))
    y, _ = b.step(x, None)
    torch.testing.assert_close(y, b(x))
    y, _ = b.prefill(x[None], None)  # Mixer.prefill's default: step token by token
    torch.testing.assert_close(y[0], b(x))


def test_post_norm_model_has_no_final_norm():
    pre = create_arch("transformer", vocab_size=16, d_model=16, n_layers=2, n_heads=2)
    post = create_arch("transformer", vocab_size=16, d_model=16, n_layers=2, n_heads=2, norm_position="post")
    assert isinstance(post.norm, nn.Identity) and isinstance(pre.norm, nn.RMSNorm)
    assert all(b.post_norm for b in post.blocks) and not any(b.post_norm for b in pre.blocks)
    x = torch.randint(0, 16, (2, 7))
    h = post.embed(x)
    for block in post.blocks:
        h = block(h)
    torch.testing.assert_close(post(x), post.head(h))
    # the final norm's weights are the only parameters pre-norm has and post-norm lacks
    assert pre.num_params() - post.num_params() == 16


@pytest.mark.slow
@pytest.mark.parametrize("name", ["transformer", "mamba", "lstm", "jamba", "ffn_lm"])
@pytest.mark.parametrize("check", ["step_matches_forward", "prefill_matches_forward", "causality", "learns"])
def test_post_norm_models_decode_and_learn(name, check):
    result = run_check(name, check, norm_position="post")
    assert result.passed, result.detail


def test_bad_norm_position_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown norm_position 'middle'.*\['pre', 'post'\]"):
        LMConfig(norm_position="middle")
    with pytest.raises(ValueError, match="unknown norm_position"):
        create_arch("mamba", d_model=16, norm_position="Post")


def test_one_default_restated_by_the_schema_and_the_app_configs():
    from harness.config import ModelConfig
    from tests.apps import compose

    default = next(f.default for f in dataclasses.fields(LMConfig) if f.name == "norm_position")
    assert default == "pre" == ModelConfig().norm_position
    for app in ("cost", "extrapolate"):
        assert compose(app).model.norm_position == default, app
