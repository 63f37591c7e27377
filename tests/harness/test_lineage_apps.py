"""The LM lineage through both apps: the n-gram (trained by counting), the fixed-window FF
LM, and post-norm blocks give cost rows and extrapolation rows like any architecture."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from archs import create_arch
from harness import extrapolate
from harness.tasks import get_task
from harness.counting import count_training_tokens
from harness.config import TrainConfig
from harness.train import train, training_batch

from tests.apps import run_cost, run_extrapolate


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ngram", "ffn_lm"])
def test_cost_rows_with_a_constant_decode_state(tmp_path, arch):
    df = run_cost(tmp_path, f"arch={arch}", "bench.seq_lens=[32,128]")
    assert set(df["status"]) == {"ok"} and set(df["mode"]) == {"forward", "train_step", "decode"}
    decode = df[df["mode"] == "decode"].set_index("seq_len")
    assert decode["state_bytes"][32] == decode["state_bytes"][128] > 0  # constant per token
    assert (df["time_ms"] > 0).all()


@pytest.mark.slow
def test_ngram_cost_train_step_is_counting(tmp_path):
    df = run_cost(tmp_path, "arch=ngram", "bench.modes=[train_step]")
    assert set(df["status"]) == {"ok"} and (df["arch.n_layers"].isna()).all()
    assert (df["backend"] == "ref").all() and (df["sizing"] == "arch_config").all()


@pytest.mark.slow
def test_post_norm_runs_through_both_apps_as_its_own_curve(tmp_path):
    df = run_cost(tmp_path, "arch=transformer", "model.norm_position=post", "bench.modes=[forward,decode]")
    assert set(df["status"]) == {"ok"} and set(df["label"]) == {"transformer+postnorm"}
    assert (df["arch.norm_position"] == "post").all()
    ext = run_extrapolate(tmp_path, "task=lm", "arch=mamba", "model.norm_position=post")
    assert set(ext["status"]) == {"ok"} and set(ext["label"]) == {"mamba+postnorm"}
    pre = run_extrapolate(tmp_path, "task=lm", "arch=mamba")  # the default keeps its old identity
    assert set(pre["label"]) == {"mamba"} and pre.get("arch.norm_position", pd.Series([None])).isna().all()
    assert set(pre["train_key"]).isdisjoint(ext["train_key"])


@pytest.mark.slow
def test_bad_norm_position_or_one_that_cannot_apply_fails_before_compute(tmp_path):
    with pytest.raises(ValueError, match=r"model.norm_position.*\['pre', 'post'\]"):
        run_extrapolate(tmp_path, "task=lm", "model.norm_position=middle")
    with pytest.raises(TypeError, match=r"'ngram' got unknown keyword\(s\) \['norm_position'\]"):
        run_extrapolate(tmp_path, "task=lm", "arch=ngram", "model.norm_position=post")


@pytest.mark.slow
def test_ngram_extrapolation_rows_and_checkpoint(tmp_path, monkeypatch):
    df = run_extrapolate(tmp_path, "task=lm", "arch=ngram", "arch.order=3")
    assert set(df["status"]) == {"ok"} and sorted(df["eval_seq_len"]) == [32, 64]
    assert (df["train_tokens"] == 4 * 4 * 32).all() and (df["bpb"] > 0).all()
    assert (df["params"] > 0).all() and (df["state_bytes"] > 2 * 8).all()  # the tables are its state
    (curve,) = (tmp_path / "ckpt").glob("*.history.csv")
    assert pd.read_csv(curve)["loss"].notna().all()

    def no_counting(*args, **kwargs):
        raise AssertionError("should have loaded the counts")

    monkeypatch.setattr(extrapolate, "train", no_counting)
    shutil.rmtree(tmp_path / "res")  # evaluate again, from the saved counts
    again = run_extrapolate(tmp_path, "task=lm", "arch=ngram", "arch.order=3")
    assert again.sort_values("eval_seq_len")["loss"].tolist() == df.sort_values("eval_seq_len")["loss"].tolist()


@pytest.mark.slow
def test_ffn_lm_extrapolation_rows(tmp_path):
    df = run_extrapolate(tmp_path, "task=lm", "arch=ffn_lm")
    assert set(df["status"]) == {"ok"} and (df["bpb"] > 0).all() and (df["d_model"] == 16).all()


def test_counting_sees_the_batches_a_neural_model_trains_on():
    task = get_task("lm")
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=16, mixed_length=True, warmup_steps=0, seed=5)
    counted = create_arch("ngram", order=3)
    result = train(counted, task, cfg, progress=False)  # dispatches to count_training_tokens
    by_hand = create_arch("ngram", order=3)
    gen = torch.Generator().manual_seed(5)
    tokens = 0
    for _ in range(3):
        batch = training_batch(task, cfg, gen)
        by_hand.count(batch.inputs, batch.targets)
        tokens += batch.inputs.numel()
    assert result.tokens_seen == tokens and result.steps_done == 3
    for key, value in by_hand.state_dict().items():
        assert torch.equal(counted.state_dict()[key], value), key
    # the history's losses are on batches not yet counted, so they are real estimates
    assert result.history[0]["loss"] == pytest.approx(torch.log(torch.tensor(256.0)).item(), rel=1e-5)


def test_counting_refuses_a_start_state():
    with pytest.raises(ValueError, match="trained by counting and has none"):
        count_training_tokens(create_arch("ngram", order=2), get_task("lm"),
                              TrainConfig(steps=1, batch_size=1, seq_len=8, warmup_steps=0,
                                          initial_state="noise"), progress=False)
