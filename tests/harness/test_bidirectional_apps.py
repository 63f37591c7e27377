"""model.causal=false and the encoder-decoder through both apps: one source for the default,
cost rows (no decode for bidirectional models, encoder + decoder rows for the shell),
extrapolation rows, refused combinations, one-pass evaluation of bidirectional models."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from archs import create_arch
from archs.model import LMConfig
from harness.config import ModelConfig
from harness.evaluate import logits_for

from tests.apps import compose, run_cost, run_extrapolate
from tests.paths import ROOT  # noqa: E402


def test_the_causal_default_has_one_source():
    default = {f.name: f.default for f in dataclasses.fields(LMConfig)}["causal"]
    assert default is True and ModelConfig().causal is default
    for app in ("cost", "extrapolate"):
        restated = yaml.safe_load((ROOT / "conf" / f"{app}.yaml").read_text())["model"]["causal"]
        assert restated is default, f"conf/{app}.yaml restates model.causal as {restated}"
        assert compose(app).model.causal is default


@pytest.mark.slow
def test_cost_rows_of_a_bidirectional_model_skip_decoding(tmp_path):
    df = run_cost(tmp_path, "arch=mamba", "model.causal=false")
    assert set(df["label"]) == {"mamba+bidirectional"}
    ok, skipped = df[df["status"] == "ok"], df[df["status"] == "skipped"]
    assert set(ok["mode"]) == {"forward", "train_step"} and set(skipped["mode"]) == {"decode"}
    assert skipped["reason"].str.contains("bidirectional models do not decode").all()
    causal = run_cost(tmp_path / 'c', "arch=mamba", "bench.modes=[forward]")
    # matched parameters: the two-pass model is narrower than its causal twin
    assert ok["d_model"].iloc[0] < causal["d_model"].iloc[0]
    assert abs(ok["params"].iloc[0] - causal["params"].iloc[0]) / causal["params"].iloc[0] < 0.1


@pytest.mark.slow
def test_max_len_search_of_decoding_is_skipped_for_bidirectional(tmp_path):
    df = run_cost(tmp_path, "arch=transformer", "model.causal=false", "bench.search=max_len",
                  "bench.max_len.mode=decode")
    assert list(df["status"]) == ["skipped"] and "do not decode" in df["reason"].iloc[0]


@pytest.mark.slow
def test_cost_rows_of_the_encoder_decoder(tmp_path):
    df = run_cost(tmp_path, "arch=encoder_decoder_mamba")
    assert set(df["status"]) == {"ok"} and set(df["mode"]) == {"forward", "train_step", "decode"}
    decode = df[df["mode"] == "decode"].sort_values("seq_len")
    # the state: each layer's cross-attention cache of the source (half the context) plus
    # Mamba's constant decoder state - it grows with the source, as a KV cache would
    assert decode["state_bytes"].is_monotonic_increasing and decode["state_bytes"].iloc[0] > 0
    assert df["flops_analytic"].notna().all()


@pytest.mark.slow
def test_bad_model_and_arch_combinations_fail_before_compute(tmp_path):
    with pytest.raises(TypeError, match="SlidingWindowAttention.*cannot run bidirectionally"):
        run_cost(tmp_path, "arch=sliding_window", "model.causal=false")
    with pytest.raises(ValueError, match="model.causal=false but the arch config of mamba sets causal: true"):
        run_cost(tmp_path, "arch=mamba", "model.causal=false", "+arch.causal=true")
    with pytest.raises(ValueError, match="causal=False does not apply"):
        run_cost(tmp_path, "arch=encoder_decoder", "model.causal=false")


@pytest.mark.slow
def test_extrapolation_rows_of_a_bidirectional_model_on_a_masked_task(tmp_path):
    df = run_extrapolate(tmp_path, "arch=transformer", "model.causal=false", "task=masked_recall")
    assert set(df["label"]) == {"transformer+bidirectional"} and set(df["status"]) == {"ok"}
    assert len(df) == 2 and df["accuracy"].between(0, 1).all()


@pytest.mark.slow
def test_extrapolation_rows_of_the_encoder_decoder_on_seq2seq(tmp_path):
    df = run_extrapolate(tmp_path, "arch=encoder_decoder", "task=seq2seq_sort")
    assert set(df["status"]) == {"ok"} and set(df["task"]) == {"seq2seq"}
    assert df["seq_acc"].between(0, 1).all()


@pytest.mark.parametrize("overrides,match", [
    (["arch=mamba", "model.causal=false", "task=induction_heads"], "sees in its input; use a masked task"),
    (["arch=encoder_decoder", "task=masked_recall"], "needs a source, a separator and a target"),
    (["arch=encoder_decoder", "task=seq2seq", "model.vocab_size=64"], "splits at token 63"),
])
def test_unfair_task_and_model_combinations_are_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        run_extrapolate(tmp_path, *overrides)


def test_a_bidirectional_model_is_evaluated_in_one_pass_and_the_shell_in_chunks():
    x = torch.randint(0, 18, (2, 40))
    bidirectional = create_arch("mamba", vocab_size=20, d_model=16, n_layers=1, causal=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(logits_for(bidirectional, x, chunk_len=8), bidirectional(x))
    encdec = create_arch("encoder_decoder", vocab_size=20, d_model=16, n_layers=1, encoder="mamba",
                         decoder="mamba", cross_heads=2).eval()
    x[:, 13] = 19  # the separator inside the second chunk
    with torch.no_grad():  # chunked (state-carrying prefill) == one pass
        torch.testing.assert_close(logits_for(encdec, x, chunk_len=8), encdec(x), atol=1e-5, rtol=1e-4)
