"""The conformance suite on bidirectional models (model.causal=false) and encoder-decoders:
the checks that apply pass for the built-ins, the others are skipped with the reason, and
planted bugs - a "bidirectional" model that ignores the future, a fast path that is not the
reference, a decoder that recomputes its cross-attention cache - fail."""
import pytest
import torch

from archs.bidirectional import BidirectionalMixer
from archs.seq2seq import CrossAttention
from harness.conformance import SHORT_CHECKS, run_check

CAPABLE = ["transformer", "transformer_alibi", "mamba", "mamba2", "linear_attention", "lstm", "jamba"]
SKIPPED = {"prefill_matches_forward", "state_size", "long_decode", "long_causality"}


@pytest.mark.slow
@pytest.mark.parametrize("check", [*SHORT_CHECKS, "long_causality", "long_decode"])
@pytest.mark.parametrize("arch", CAPABLE)
def test_bidirectional_builtins_pass_what_applies(arch, check):
    result = run_check(arch, check, causal=False)
    assert result.passed, f"{arch} {check}: {result.detail}"
    if check in SKIPPED:
        assert result.detail.startswith("skipped: bidirectional")
    if check == "causality":
        assert result.detail.startswith("the future is used")


@pytest.mark.parametrize("arch,backend", [("transformer", "fused"), ("mamba", "chunked"),
                                          ("mamba2", "chunked"), ("linear_attention", "chunked")])
def test_the_fast_path_is_compared_with_the_reference(arch, backend):
    result = run_check(arch, "step_matches_forward", backend, causal=False)
    assert result.passed and result.detail == f"backend {backend} == ref (64 tokens)", result.detail


def test_a_bidirectional_model_that_ignores_the_future_fails(monkeypatch):
    # the backward pass reads the sequence in its original order: two causal passes
    monkeypatch.setattr(BidirectionalMixer, "forward",
                        lambda self, x: self.forward_mixer(x) + self.backward_mixer(x))
    result = run_check("mamba", "causality", causal=False)
    assert not result.passed and "does not see the future" in result.detail


def test_a_fast_path_that_is_not_the_reference_fails(monkeypatch):
    from archs.mamba import MambaMixer
    chunked = MambaMixer.forward

    def off_by_a_bit(self, x):
        y = chunked(self, x)
        return y * 1.01 if self.backend == "chunked" else y
    monkeypatch.setattr(MambaMixer, "forward", off_by_a_bit)
    result = run_check("mamba", "step_matches_forward", "chunked", causal=False)
    assert not result.passed and "backend chunked vs the reference" in result.detail


def test_an_encoder_decoder_that_recomputes_its_cross_cache_fails(monkeypatch):
    prefill = CrossAttention.prefill

    def recompute(self, x, state):
        y, state = prefill(self, x, state)
        state.k, state.v = state.k.clone(), state.v.clone()  # a new cache every call
        return y, state
    monkeypatch.setattr(CrossAttention, "prefill", recompute)
    result = run_check("encoder_decoder", "state_size")
    assert not result.passed and "computed once" in result.detail


def test_an_encoder_decoder_whose_decoder_sees_the_future_fails(monkeypatch):
    from archs.seq2seq.model import EncoderDecoderLM
    decode = EncoderDecoderLM._decode

    def peek(self, h, first_pos, layers, form):
        out = decode(self, h, first_pos, layers, form)
        if form == "forward":  # the parallel form adds the next position's logits
            out = out + torch.cat([out[:, 1:], out[:, -1:]], dim=1) * 0.1
        return out
    monkeypatch.setattr(EncoderDecoderLM, "_decode", peek)
    assert not run_check("encoder_decoder", "causality").passed
    assert not run_check("encoder_decoder", "step_matches_forward").passed
