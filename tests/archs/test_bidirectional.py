"""Bidirectional (encoder-only) models: causal=False really sees the future, the two-pass
form is the documented formula with its own parameters per direction, the reference and
the fast paths agree, and bad combinations are clear errors."""
from __future__ import annotations

import pytest
import torch

from archs import create_arch, register_arch
from archs import _registry
from archs.bidirectional import BidirectionalDecodeError, BidirectionalMixer
from archs.mixer import Mixer
from archs.model import LanguageModel, LMConfig, build_lm
from archs.positional import ALiBi

from tests.tiny import tiny_model

VOCAB = 20
CAPABLE = ["transformer", "transformer_alibi", "transformer_learned", "mamba", "mamba2",
           "linear_attention", "retnet", "lstm", "jamba", "hybrid"]


def _tiny(name: str, seed: int = 0, **kw) -> LanguageModel:
    return tiny_model(name, VOCAB, seed=seed, **kw).eval()


def _tokens(length: int = 24, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CAPABLE)
def test_bidirectional_sees_the_future_and_causal_does_not(name):
    x = _tokens()
    later = x.clone()
    later[:, -1] = (later[:, -1] + 1) % VOCAB  # only the last token changes
    for causal in (True, False):
        model = _tiny(name, causal=causal)
        assert model.causal is causal
        with torch.no_grad():
            moved = (model(later)[:, :-1] - model(x)[:, :-1]).abs().max().item()
        if causal:
            assert moved == 0.0, f"causal {name}: an earlier output moved by {moved}"
        else:  # position 0 and every other one before the change hears of it
            with torch.no_grad():
                first = (model(later)[:, 0] - model(x)[:, 0]).abs().max().item()
            assert first > 1e-6, f"bidirectional {name}: position 0 does not see the last token"


@pytest.mark.parametrize("name", ["mamba", "mamba2", "linear_attention", "lstm"])
def test_two_pass_is_forward_plus_reversed_backward_with_separate_weights(name):
    model = _tiny(name, causal=False)
    mixer = model.mixers[0]
    assert isinstance(mixer, BidirectionalMixer)
    fwd, bwd = mixer.forward_mixer, mixer.backward_mixer
    assert type(fwd) is type(bwd) and not any(p is q for p in fwd.parameters() for q in bwd.parameters())
    # each direction was initialised on its own (the factory ran twice)
    assert any(not torch.equal(p, q) for p, q in zip(fwd.parameters(), bwd.parameters()))
    x = torch.randn(2, 11, model.cfg.d_model)
    with torch.no_grad():
        by_hand = fwd(x) + torch.flip(bwd(torch.flip(x, dims=[1])), dims=[1])
        torch.testing.assert_close(mixer(x), by_hand)
    # twice the mixer parameters of the causal twin, the rest unchanged
    causal = _tiny(name)
    mixer_params = sum(p.numel() for p in causal.mixers[0].parameters())
    assert model.num_params() - causal.num_params() == causal.cfg.n_layers * mixer_params


@pytest.mark.parametrize("name,fast", [("transformer", "fused"), ("transformer_alibi", "fused"),
                                       ("mamba", "chunked"), ("mamba2", "chunked"),
                                       ("linear_attention", "chunked"), ("retnet", "chunked")])
def test_reference_and_fast_path_agree(name, fast):
    ref, quick = _tiny(name, causal=False, backend="ref"), _tiny(name, causal=False, backend=fast)
    quick.load_state_dict(ref.state_dict())
    x = _tokens(length=45)  # past several chunks of the tiny variants
    with torch.no_grad():
        torch.testing.assert_close(quick(x), ref(x), atol=1e-5, rtol=1e-4)
    assert quick.backends("cpu", 45) == fast


def test_unmasked_attention_is_softmax_over_every_key():
    from archs.attention.ref import attention_math
    q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64) for _ in range(3))
    scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / 2.0
    want = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)
    torch.testing.assert_close(attention_math(q, k, v, causal=False), want)
    from archs.attention.fused import attention_sdpa
    torch.testing.assert_close(attention_sdpa(q, k, v, causal=False), want)


def test_bidirectional_alibi_biases_by_absolute_distance():
    alibi = ALiBi(2)
    pos = torch.arange(4)
    bias = alibi(pos, pos, symmetric=True)
    distance = (pos[:, None] - pos[None, :]).abs().float()
    torch.testing.assert_close(bias, -alibi.slopes[:, None, None] * distance)
    assert torch.equal(bias, bias.transpose(-1, -2))  # keys to the right count like keys to the left


def test_bidirectional_attention_counts_every_pair():
    causal, full = _tiny("transformer"), _tiny("transformer", causal=False)
    a, b = causal.mixers[0].sequence_flops(1, 10), full.mixers[0].sequence_flops(1, 10)
    assert b / a == pytest.approx(100 / 55)


# --- what a bidirectional model refuses ---------------------------------------------------

def test_bidirectional_models_do_not_decode():
    model = _tiny("mamba", causal=False)
    state = model.init_state(2)
    with pytest.raises(BidirectionalDecodeError, match="do not decode"):
        model.step(_tokens()[:, 0], state)
    with pytest.raises(BidirectionalDecodeError, match="do not decode"):
        model.prefill(_tokens(), state)
    with pytest.raises(BidirectionalDecodeError):
        _tiny("transformer", causal=False).mixers[0].step(torch.zeros(1, 32), None)
    assert model.expected_state_bytes(1, 64) is None  # no decode state to report


@pytest.mark.parametrize("name", ["sliding_window", "infini_attention"])
def test_a_family_that_cannot_is_refused_naming_those_that_can(name):
    with pytest.raises(TypeError, match=r"cannot run bidirectionally.*can: .*lstm, mamba, mamba2.*transformer"):
        _tiny(name, causal=False)


def test_a_hybrid_with_a_causal_only_letter_is_refused():
    with pytest.raises(TypeError, match="SlidingWindowAttention.*cannot run bidirectionally"):
        create_arch("hybrid", vocab_size=VOCAB, d_model=32, pattern="MW", causal=False)


class _Local(Mixer):
    """A mixer that sees its neighbours on both sides (a non-causal convolution)."""
    causal = False

    def __init__(self, d_model: int):
        super().__init__()
        self.conv = torch.nn.Conv1d(d_model, d_model, 3, padding=1)

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def _local_lm(vocab_size=16, d_model=8, n_layers=1, **shell):
    return build_lm(LMConfig(vocab_size, d_model, n_layers, **shell), lambda i: _Local(d_model))


def test_mixers_that_disagree_with_causal_are_refused():
    from archs.attention import Attention, AttentionConfig
    causal_mixer = Attention(AttentionConfig(8, 2))
    with pytest.raises(ValueError, match="causal=False but layer 0 .*Attention.* is causal"):
        LanguageModel(LMConfig(16, 8, 1, causal=False), [causal_mixer])
    with pytest.raises(ValueError, match="bidirectional but the model was built with causal=True"):
        _local_lm()


def test_an_encoder_only_plugin_registers_with_causal_false(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    register_arch("local_encoder", family="test", defaults={"causal": False})(_local_lm)
    model = create_arch("local_encoder")
    assert model.causal is False and model(_tokens(seed=1) % 16).shape == (2, 24, 16)
    with pytest.raises(BidirectionalDecodeError):
        model.step(torch.zeros(1, dtype=torch.long), model.init_state(1))
    from harness.conformance import assert_conformance
    assert_conformance("local_encoder", checks=["shapes", "batch_independence", "causality", "gradients",
                                                "step_matches_forward", "long_decode"])
