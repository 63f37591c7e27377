"""Mutation tests: toy mixers with planted bugs that start past a boundary must fail the
conformance suite with the right message, and the clean toy must pass it - so the suite
cannot silently weaken again (each bug below once passed it). The toys live in
tests/conformance_toys.py; issue 27's blind spots are in test_conformance_blind_spots.py."""
import pytest
import torch

from harness.conformance import CHECKS, DTYPE_CHECKS, ConformanceError, assert_conformance, run_check
from tests.conformance_toys import (LENGTHS, BatchNormalised, DriftFrom50, HalvedState, LeakAtChunkEnd,
                                    LeakFrom512, ListState, Noisy, PrefillDropsCarryAcrossChunks, PrefixMean,
                                    TrainDiffers, WeightAsBuffer, registered, toy)  # noqa: F401 - a fixture


# (mixer, the check that must fail, what its message must say)
PLANTED = [
    (LeakFrom512, "long_causality", r"causality leak at length 1024 in float32: .* position 51[23]"),
    (LeakAtChunkEnd, "long_causality", r"causality leak at length 1024 in float32: .*last of chunk=64"),
    (DriftFrom50, "long_decode", r"token-by-token step from position 0 vs parallel forward at length 1024 in "
                                 r"float32: first disagreement at position 5[01].*agrees with the forward there, so "
                                 r"token-by-token step from position 0 is the likely culprit"),
    (PrefillDropsCarryAcrossChunks, "long_prefill", r"^prefill in chunks .* at length 1024 in float32: .*from "
                                                    r"position 0 agrees with the forward there, so prefill in chunks "
                                                    r".* is the likely culprit"),
    (BatchNormalised, "batch_independence", r"output depends on other rows of the batch"),
    (BatchNormalised, "long_causality", r"output depends on other rows of the batch at length 1024 in float32"),
    (TrainDiffers, "train_eval", r"train mode differs from eval mode"),
    (WeightAsBuffer, "buffers", r"buffer 'blocks.0.mixer.gain' .*make it an nn.Parameter"),
    (HalvedState, "state_size", r"state_size_bytes says 64 B but its state's tensors hold 128 B"),
    (ListState, "state_size", r"\['history'\] is a list holding Python numbers, which the suite cannot count"),
    (Noisy, "determinism", r"not deterministic"),
    (Noisy, "long_causality", r"not deterministic at length 1024 in float32"),
]


@pytest.mark.slow
@pytest.mark.parametrize("mixer,check,message", PLANTED, ids=lambda v: getattr(v, "__name__", None))
def test_planted_bug_fails_its_check_with_the_right_message(mixer, check, message):
    with pytest.raises(ConformanceError, match=message):
        CHECKS[check](toy(mixer), lengths=LENGTHS, rebuild=lambda seed: toy(mixer))


@pytest.mark.parametrize("mixer", [LeakFrom512, LeakAtChunkEnd, DriftFrom50, PrefillDropsCarryAcrossChunks],
                         ids=lambda m: m.__name__)
def test_planted_bugs_pass_the_old_short_checks(mixer):
    """These bugs start past what a ~21-token check sees: the short checks pass them."""
    model = toy(mixer)
    for check in ("causality", "step_matches_forward", "prefill_matches_forward"):
        CHECKS[check](model)


CLEAN_CASES = [(c, torch.float32) for c in CHECKS] + \
    [(c, d) for d in (torch.bfloat16, torch.float64) for c in DTYPE_CHECKS]


@pytest.mark.slow
@pytest.mark.parametrize("check,dtype", CLEAN_CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in CLEAN_CASES])
def test_clean_toy_passes_every_check(check, dtype):
    CHECKS[check](toy(PrefixMean, dtype=dtype), lengths=LENGTHS, rebuild=lambda seed: toy(PrefixMean, dtype=dtype))


@pytest.mark.slow
def test_assert_conformance_names_the_failed_check_and_passes_the_clean_toy(registered):
    assert_conformance(registered("toy_clean", PrefixMean), lengths=LENGTHS)
    with pytest.raises(ConformanceError, match=r"^long_causality \[float32\]: causality leak at length 1024"):
        assert_conformance(registered("toy_leak", LeakFrom512), lengths=LENGTHS)
    result = run_check("toy_leak", "causality")  # the short check alone misses it
    assert result.passed, result.detail


@pytest.mark.slow
def test_a_leak_planted_in_a_builtin_past_512_tokens_fails_the_suite(monkeypatch):
    """The issue's first report: a built-in's parallel forward leaking only past 512 tokens."""
    from archs.linear_attention.layer import LinearAttentionMixer

    clean = LinearAttentionMixer.forward

    def leaky(self, x):
        y = clean(self, x)
        return y if x.shape[1] <= 512 else torch.cat([y[:, :-1] + 0.1 * x[:, 1:], y[:, -1:]], 1)

    monkeypatch.setattr(LinearAttentionMixer, "forward", leaky)
    assert run_check("linear_attention", "causality").passed  # 21 tokens: unseen
    result = run_check("linear_attention", "long_causality", lengths=LENGTHS)
    assert not result.passed and "causality leak at length 1024" in result.detail, result.detail
