"""The extrapolation app: composition, rows, skipped/oom/diverged rows, checkpoint reuse,
resume, bad task parameters, multirun over seeds, and the plots it feeds."""
from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import extrapolate
from harness.results import load_rows
from harness.train import TrainResult

from tests.apps import EXTRAP_SMOKE, cli, compose, run_extrapolate
from tests.configs import assert_option_applied, group_options  # noqa: E402
from tests.paths import ROOT  # noqa: E402

REQUIRED = ["arch", "task", "train_seq_len", "eval_seq_len", "accuracy", "loss", "status"]


@pytest.mark.slow
@pytest.mark.parametrize("group", ["task", "train", "eval", "model"])
def test_every_group_option_composes_validates_and_applies(group):
    from harness.checks import validate_eval
    from harness.tasks import get_task
    from harness.build import build
    for option in group_options(group):
        raw = compose("extrapolate", f"{group}={option}")
        assert_option_applied(raw[group], ROOT / "conf" / group / f"{option}.yaml")
        cfg = extrapolate._as_schema(raw)
        validate_eval(cfg.eval)
        task = get_task(**dict(cfg.task))
        build(cfg.arch, cfg.model, task.vocab_size, validate_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(experiment):
    # Cost-app experiments (cost sweeps, generation throughput) choose a bench preset.
    text = (ROOT / "conf" / "experiment" / f"{experiment}.yaml").read_text()
    app = "cost" if "override /bench" in text else "extrapolate"
    cfg = compose(app, f"experiment={experiment}", hydra_config=True)
    assert cfg.experiment == experiment
    sweep = cfg.hydra.sweeper.params or {}
    for option in str(sweep.get("arch", "")).split(","):
        if option:
            assert (ROOT / "conf" / "arch" / f"{option}.yaml").exists(), option


@pytest.mark.slow
def test_rows_carry_the_collected_columns(tmp_path):
    df = run_extrapolate(tmp_path, "arch=lstm")
    for col in REQUIRED:
        assert col in df.columns
    assert sorted(df["eval_seq_len"]) == [32, 64] and set(df["status"]) == {"ok"}
    assert (df["train_seq_len"] == 32).all() and (df["task"] == "induction_heads").all()
    assert df["accuracy"].between(0, 1).all() and (df["loss"] > 0).all()
    assert (df["train_steps"] == 4).all() and (df["mode"] == "eval").all()


@pytest.mark.slow
def test_learned_positions_past_the_table_are_skipped_rows(tmp_path):
    df = run_extrapolate(tmp_path, "arch=transformer_learned")
    status = df.set_index("eval_seq_len")["status"].to_dict()
    assert status == {32: "ok", 64: "skipped"}  # the table is as long as train.seq_len
    assert "max_seq_len" in df.set_index("eval_seq_len")["reason"][64]


@pytest.mark.slow
def test_checkpoint_is_reused_and_points_resume(tmp_path, monkeypatch):
    first = run_extrapolate(tmp_path, "arch=lstm")
    assert len(list((tmp_path / "ckpt").glob("*.pt"))) == 1
    # the training curve lies beside the weights: a loss at step 0 and at the last step
    (curve_file,) = (tmp_path / "ckpt").glob("*.history.csv")
    curve = pd.read_csv(curve_file).dropna(subset=["loss"])
    assert curve["step"].iloc[0] == 0 and curve["step"].iloc[-1] == first["train_steps"].iloc[0] - 1
    assert curve["loss"].iloc[-1] == pytest.approx(first["train_loss"].iloc[0])

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded the checkpoint")
    monkeypatch.setattr(extrapolate, "train", no_training)
    again = run_extrapolate(tmp_path, "arch=lstm")  # everything measured: nothing runs
    assert sorted(again["timestamp"]) == sorted(first["timestamp"])
    # new lengths evaluate the same weights without training again
    more = run_extrapolate(tmp_path, "arch=lstm", "eval.seq_lens=[32,64,96]")
    assert sorted(more["eval_seq_len"]) == [32, 64, 96]
    # re-evaluating from the checkpoint reproduces the metrics exactly
    forced = run_extrapolate(tmp_path, "arch=lstm", "force=false", f"results_dir={tmp_path / 'res2'}")
    a = first.set_index("eval_seq_len")[["accuracy", "loss"]]
    b = forced.set_index("eval_seq_len")[["accuracy", "loss"]]
    assert a.equals(b.loc[a.index])


def test_diverged_training_is_a_row_per_length(tmp_path, monkeypatch):
    monkeypatch.setattr(extrapolate, "train",
                        lambda *a, **k: TrainResult(status="diverged", reason="loss nan at step 3", steps_done=3))
    df = run_extrapolate(tmp_path, "arch=lstm")
    assert set(df["status"]) == {"diverged"} and len(df) == 2
    assert "loss nan at step 3" in df["reason"].iloc[0]


@pytest.mark.slow
def test_oom_at_a_length_then_longer_lengths_skipped(tmp_path, failing_arch):
    df = run_extrapolate(tmp_path, "eval.seq_lens=[32,64,128]", "model.d_model=4", "eval.chunk_len=null",
                         arch={"name": failing_arch, "fail_at": 64, "kind": "oom"})
    assert df.set_index("eval_seq_len")["status"].to_dict() == {32: "ok", 64: "oom", 128: "skipped"}


@pytest.mark.slow
def test_eval_oom_halves_the_model_batch_and_the_metrics_do_not_change(tmp_path, failing_arch):
    # eval=smoke: 4 sequences, batch_tokens=256 -> batch 4 at 64 tokens, 2 at 128.
    overrides = ["eval.seq_lens=[64,128]", "model.d_model=4", "eval.chunk_len=null"]
    roomy = run_extrapolate(tmp_path / "roomy", *overrides, arch={"name": failing_arch, "fail_at": 10**6})
    tight = run_extrapolate(tmp_path / "tight", *overrides,
                            arch={"name": failing_arch, "fail_at": 10**6, "max_eval_tokens": 128})
    roomy, tight = roomy.set_index("eval_seq_len"), tight.set_index("eval_seq_len")
    assert (tight["status"] == "ok").all()
    assert roomy["micro_batch"].to_dict() == {64: 4, 128: 2}
    assert tight["micro_batch"].to_dict() == {64: 2, 128: 1}
    assert tight["loss"].to_numpy() == pytest.approx(roomy["loss"].to_numpy(), rel=1e-5)


def test_eval_cpu_memory_limit_is_validated(tmp_path):
    with pytest.raises(Exception, match="eval.cpu_memory_limit_gb"):
        run_extrapolate(tmp_path, "eval.cpu_memory_limit_gb=0")


@pytest.mark.slow
@pytest.mark.parametrize("override,match", [
    ("task=mqar task.num_kv_pairs=64", "seq_len=32 is shorter than min_len"),
    ("task.vocab=1", "vocab must be >= 2"),
    ("+task.colour=red", r"no parameter\(s\) \['colour'\]"),
    ("eval.seq_lens=[]", "eval.seq_lens"),
    ("train.precision=fp8", "train.precision"),
])
def test_bad_task_and_run_settings_fail_before_compute(tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        run_extrapolate(tmp_path, *override.split())
    assert not (tmp_path / "res").exists() or not list((tmp_path / "res").glob("*.jsonl"))


@pytest.mark.slow
def test_multirun_over_seeds_then_plot(tmp_path):
    res = tmp_path / "res"
    args = ["-m", "arch=lstm", "train.seed=0,1", *EXTRAP_SMOKE, f"results_dir={res}",
            f"checkpoint_dir={tmp_path / 'ckpt'}", f"hydra.sweep.dir={tmp_path / 'mr'}"]
    out, _ = cli("extrapolate", args, tmp_path).communicate(timeout=300)
    df = load_rows(res)
    assert sorted(set(df["seed"])) == [0, 1] and len(df) == 4, out[-4000:]
    from harness.report.plot import plot_extrapolation
    files = plot_extrapolation(df, tmp_path / "plots")
    assert files and all(Path(f).stat().st_size > 1000 for f in files)


@pytest.mark.slow
def test_training_stopped_by_a_signal_resumes_from_its_snapshot(tmp_path, monkeypatch):
    """SIGTERM mid-training (a SLURM time limit): the re-run continues from the snapshot beside
    the checkpoint and ends with the weights of an uninterrupted run; the snapshot is gone."""
    from harness import training_run
    from harness.sweep import Terminated
    from tests.harness.test_resume import SignalAt

    overrides = ["train.steps=8", "train.eval_every=0", "arch=mamba", "eval.seq_lens=[32]"]
    run_extrapolate(tmp_path / "whole", *overrides)
    real_get_task = extrapolate.get_task

    def signalling_task(**kw):  # the same task object (its code is the checkpoint's identity)
        task = real_get_task(**kw)
        task.sample = SignalAt(copy.copy(task), 5).sample
        return task
    for module in (extrapolate, training_run):  # the app's checks and the run's own task
        monkeypatch.setattr(module, "get_task", signalling_task)
    with pytest.raises(Terminated):
        run_extrapolate(tmp_path / "cut", *overrides)
    assert list((tmp_path / "cut" / "ckpt").glob("*.resume.pt"))
    for module in (extrapolate, training_run):
        monkeypatch.setattr(module, "get_task", real_get_task)
    rows = run_extrapolate(tmp_path / "cut", *overrides)
    assert (rows.status == "ok").all() and (rows.train_steps == 8).all()
    assert not list((tmp_path / "cut" / "ckpt").glob("*.resume.pt"))
    (whole,), (cut,) = ((tmp_path / d / "ckpt").glob("*[0-9a-f].pt") for d in ("whole", "cut"))
    weights = [torch.load(path)["weights"] for path in (whole, cut)]
    for (name, a), b in zip(weights[0].items(), weights[1].values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_distance_at_shortest_evaluates_each_distance_at_its_first_length(tmp_path):
    """eval.distance_at=shortest: d = 2^k - 1 only at 2^k (the trigger at the start, as the
    paper's reproduction evaluates), not at every longer length."""
    rows = run_extrapolate(tmp_path, "arch=lstm", "eval.seq_lens=[16,32,64]",
                           "eval.trigger_distances=[15,31]", "eval.distance_at=shortest")
    by_distance = rows[rows.trigger_distance.notna()]
    assert sorted(zip(by_distance.trigger_distance, by_distance.eval_seq_len)) == [(15, 16), (31, 32)]
    with pytest.raises(ValueError, match="eval.distance_at"):
        run_extrapolate(tmp_path, "arch=lstm", "eval.distance_at=nearest")
