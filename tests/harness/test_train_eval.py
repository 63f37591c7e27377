"""Training loop and evaluation: learning a trivial task, chunked == one-pass evaluation,
checkpoints, divergence, schedules, bad settings."""
import math

import pytest
import torch

from archs import SequenceTooLongError, create_arch
from harness.evaluate import evaluate, logits_for
from harness.tasks import get_task
from harness.config import TrainConfig
from harness.train import load_checkpoint, lr_at, save_checkpoint, train


def _eval(model, task, seq_len, chunk_len=None, n=16):
    return evaluate(model, task, seq_len, n_sequences=n, batch_size=8,
                    generator=torch.Generator().manual_seed(123), chunk_len=chunk_len)


@pytest.mark.slow
def test_tiny_run_learns_a_trivial_task_in_seconds():
    # copying a short string is trivial for attention: high accuracy within ~150 steps
    task = get_task("copy", alphabet=4)
    torch.manual_seed(0)
    model = create_arch("transformer", vocab_size=task.vocab_size, d_model=32, n_layers=2, n_heads=4)
    cfg = TrainConfig(steps=150, batch_size=16, seq_len=18, lr=3e-3, warmup_steps=10, log_every=50)
    result = train(model, task, cfg, progress=False)
    assert result.status == "ok" and result.steps_done == 150
    assert result.tokens_seen == 150 * 16 * 18
    assert _eval(model, task, 18)["accuracy"] > 0.9


@pytest.mark.slow
def test_early_stop_at_target_accuracy():
    task = get_task("copy", alphabet=4)
    model = create_arch("transformer", vocab_size=task.vocab_size, d_model=32, n_layers=2, n_heads=4)
    cfg = TrainConfig(steps=400, batch_size=16, seq_len=18, lr=3e-3, warmup_steps=10,
                      eval_every=25, target_acc=0.9)
    result = train(model, task, cfg, eval_fn=lambda: _eval(model, task, 18)["accuracy"], progress=False)
    assert result.early_stopped and result.steps_done < 400


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_chunked_evaluation_equals_one_pass(arch):
    task = get_task("induction_heads")
    model = create_arch(arch, vocab_size=task.vocab_size, d_model=16, n_layers=2)
    x = task.sample(2, 100, torch.Generator().manual_seed(0)).inputs
    assert torch.allclose(logits_for(model, x, None), logits_for(model, x, 32), atol=1e-4)
    one, chunked = _eval(model, task, 100), _eval(model, task, 100, chunk_len=32)
    assert one["loss"] == pytest.approx(chunked["loss"], rel=1e-4)
    assert one["accuracy"] == chunked["accuracy"] and one["n_sequences"] == 16


def test_checkpoint_roundtrip_gives_same_metrics(tmp_path):
    task = get_task("induction_heads")
    model = create_arch("lstm", vocab_size=task.vocab_size, d_model=16, n_layers=1)
    train(model, task, TrainConfig(steps=3, batch_size=4, seq_len=32, warmup_steps=1), progress=False)
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(model, path)
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    fresh = load_checkpoint(create_arch("lstm", vocab_size=task.vocab_size, d_model=16, n_layers=1), path)
    assert _eval(fresh, task, 64) == _eval(model, task, 64)


def test_divergence_is_a_status_not_a_crash():
    task = get_task("induction_heads")
    model = create_arch("lstm", vocab_size=task.vocab_size, d_model=16, n_layers=1)
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    result = train(model, task, TrainConfig(steps=5, batch_size=2, seq_len=32, warmup_steps=1), progress=False)
    assert result.status == "diverged" and "step 0" in result.reason


def test_learned_positions_beyond_table_raise_before_compute():
    task = get_task("induction_heads")
    model = create_arch("transformer_learned", vocab_size=task.vocab_size, d_model=16, n_heads=2, max_seq_len=64)
    with pytest.raises(SequenceTooLongError, match="max_seq_len 64"):
        _eval(model, task, 128)


def test_mixed_length_training_samples_shorter_batches():
    task = get_task("induction_heads")
    seen = {}
    for mixed in (False, True):
        model = create_arch("lstm", vocab_size=task.vocab_size, d_model=16, n_layers=1)
        result = train(model, task, TrainConfig(steps=4, batch_size=2, seq_len=40, warmup_steps=1,
                                                mixed_length=mixed), progress=False)
        assert result.status == "ok" and result.steps_done == 4
        seen[mixed] = result.tokens_seen
    assert seen[False] == 4 * 2 * 40  # every batch at the full length
    # lengths drawn from [task.min_len(), 40]: fewer tokens, at least the shortest draws
    assert 4 * 2 * task.min_len() <= seen[True] < seen[False]


def test_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    mid = lr_at(55, cfg)
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@pytest.mark.parametrize("kw,match", [
    ({"steps": 0}, "train.steps must be positive"),
    ({"precision": "fp8"}, "train.precision must be one of"),
    ({"schedule": "step"}, "train.schedule must be one of"),
    ({"warmup_steps": 2000}, "warmup_steps must be in"),
])
def test_bad_train_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_time_budget_stops_training_with_a_reason():
    task = get_task("induction_heads")
    model = create_arch("lstm", vocab_size=task.vocab_size, d_model=16, n_layers=1)
    result = train(model, task, TrainConfig(steps=10_000, batch_size=2, seq_len=32, warmup_steps=1,
                                            time_budget_s=0.3), progress=False)
    assert result.status == "ok" and result.early_stopped and result.stop_reason == "time budget"
    assert result.steps_done < 10_000


def test_chunked_scores_equal_one_pass_scores_per_sequence():
    """Scoring chunk by chunk (constant memory at 2^20 tokens) counts each sequence once:
    sequence accuracy needs every scored position of the sequence, across chunks."""
    from harness.evaluate import scores_for
    from harness.tasks import score_logits

    task = get_task("copy", alphabet=6)
    model = create_arch("lstm", vocab_size=task.vocab_size, d_model=16, n_layers=1)
    batch = task.sample(5, 40, torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = score_logits(model(batch.inputs), batch.targets)
    for chunk in (7, 16, 40):
        got = scores_for(model, batch.inputs, batch.targets, chunk)
        assert (got.n_scored, got.n_correct, got.n_seq, got.n_seq_correct) == \
            (whole.n_scored, whole.n_correct, whole.n_seq, whole.n_seq_correct)
        assert abs(got.loss_sum - whole.loss_sum) < 1e-3
