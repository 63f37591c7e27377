"""The trigger-distance knob of the tasks and the evaluation axis over distances (issue 11)."""
from __future__ import annotations

import pytest
import torch

from harness import extrapolate
from harness.tasks import IGNORE_INDEX, get_task, list_tasks

from tests.apps import EXTRAP_SMOKE, compose, run_extrapolate
from tests.tiny import gen


@pytest.mark.parametrize("seq_len,d", [(3, 2), (32, 2), (32, 17), (32, 31), (300, 250)])
def test_induction_distance_places_the_trigger_exactly(seq_len, d):
    task = get_task("induction_heads", vocab=8, trigger_distance=d)
    b = task.sample(16, seq_len, gen())
    s = task.special_token
    first = (b.inputs == s).int().argmax(dim=1)  # the first S of every row
    assert (first == seq_len - 1 - d).all()
    assert ((b.inputs == s).sum(dim=1) == 2).all()  # exactly the trigger and the query
    assert (b.inputs[:, -1] == s).all()
    # The answer is the token after the trigger, scored at the query only.
    assert torch.equal(b.targets[:, -1], b.inputs[:, seq_len - d])
    assert (b.targets[:, :-1] == IGNORE_INDEX).all()


def test_induction_distance_limits_and_exclusions():
    task = get_task("induction_heads", trigger_distance=100)
    assert task.min_len() == 101
    task.sample(2, 101, gen())
    with pytest.raises(ValueError, match="seq_len=100 is shorter than min_len=101"):
        task.sample(2, 100, gen())
    with pytest.raises(ValueError, match="trigger_distance must be an int >= 2"):
        get_task("induction_heads", trigger_distance=1)
    with pytest.raises(ValueError, match="set only one"):
        get_task("induction_heads", trigger_distance=10, trigger_frac=0.5)


def test_unset_distance_keeps_params_and_samples():
    # Hashes of earlier runs include task.params(): the unset knob must not appear there.
    assert "trigger_distance" not in get_task("induction_heads").params()
    assert get_task("induction_heads", trigger_distance=5).params()["trigger_distance"] == 5
    a = get_task("induction_heads").sample(4, 64, gen(3))
    b = get_task("induction_heads").at_distance(None).sample(4, 64, gen(3))
    assert torch.equal(a.inputs, b.inputs)


@pytest.mark.parametrize("d", [4, 10, 29])
def test_passkey_distance_is_key_to_query(d):
    task = get_task("passkey", n_digits=3, filler="random", trigger_distance=d)
    b = task.sample(8, 32, gen())
    query = 32 - 3
    assert (b.inputs[:, query] == task.QUERY).all()
    key = (b.inputs == task.KEY).int().argmax(dim=1)
    assert (key == query - d).all()
    # The digits after K are the scored answers.
    assert torch.equal(b.inputs[:, query - d + 1: query - d + 4], b.targets[:, query:])
    assert task.min_len() == max(7, d + 3)
    with pytest.raises(ValueError, match="n_digits \\+ 1 = 4"):
        get_task("passkey", n_digits=3, trigger_distance=3)
    with pytest.raises(ValueError, match="set only one"):
        get_task("passkey", trigger_distance=10, depth=0.5)


@pytest.mark.parametrize("n_data,d", [(4, 4), (4, 20), (1, 7)])
def test_selective_copy_distance_is_first_datum_to_first_marker(n_data, d):
    task = get_task("selective_copy", n_data=n_data, trigger_distance=d)
    L = 40
    b = task.sample(8, L, gen())
    body = L - n_data
    data_pos = (b.inputs[:, :body] != task.NOISE).int()
    first = data_pos.argmax(dim=1)
    assert (first == body - d).all()
    assert (data_pos.sum(dim=1) == n_data).all()  # every datum inside the distance
    assert (b.inputs[:, body:] == task.marker_token).all()
    with pytest.raises(ValueError, match="trigger_distance must be an int >= n_data"):
        get_task("selective_copy", n_data=4, trigger_distance=3)


def test_tasks_without_the_knob_refuse_it_by_name():
    assert {t for t in list_tasks() if get_task(t).has_distance()} == {"induction_heads", "masked_recall",
                                                                      "passkey", "selective_copy"}
    with pytest.raises(ValueError, match="mqar has no trigger_distance knob; tasks with one: "
                                         "induction_heads, masked_recall, passkey, selective_copy"):
        get_task("mqar").at_distance(10)


@pytest.mark.slow
def test_eval_axis_writes_one_row_per_length_and_distance(tmp_path):
    plain = run_extrapolate(tmp_path, "arch=lstm")
    keys_before = set(plain["point_key"])
    # eval=smoke evaluates at 32 and 64; distance 40 fits only in 64.
    rows = run_extrapolate(tmp_path, "arch=lstm", "eval.trigger_distances=[2,20,40]")
    distance = rows["trigger_distance"].fillna(-1).astype(int)  # -1: the task's own placement
    got = sorted(zip(rows["eval_seq_len"].astype(int), distance))
    assert got == sorted([(32, -1), (64, -1), (32, 2), (64, 2), (32, 20), (64, 20), (64, 40)])
    assert (rows["status"] == "ok").all()
    # The plain points kept their keys (no re-evaluation, no duplicate) and training was reused.
    assert keys_before <= set(rows["point_key"])
    assert rows["train_key"].nunique() == 1
    assert rows["point_key"].is_unique
    assert rows["accuracy"].between(0, 1).all()


@pytest.mark.slow
def test_eval_axis_evaluates_the_task_at_each_distance(tmp_path, monkeypatch):
    seen = []
    real = extrapolate.evaluate

    def recording(model, task, seq_len, **kw):
        seen.append((seq_len, task.trigger_distance))
        return real(model, task, seq_len, **kw)

    monkeypatch.setattr(extrapolate, "evaluate", recording)
    run_extrapolate(tmp_path, "arch=lstm", "checkpoint_dir=null", "eval.trigger_distances=[3,50]")
    # The length axis (the task as configured), then each distance where it fits.
    assert seen == [(32, None), (64, None), (32, 3), (64, 3), (64, 50)]


def test_eval_axis_refuses_a_task_without_the_knob(tmp_path):
    cfg = compose("extrapolate", *EXTRAP_SMOKE, "arch=lstm", "task=mqar", "eval.trigger_distances=[8]",
                  f"results_dir={tmp_path}")
    with pytest.raises(ValueError, match="mqar has no trigger_distance knob"):
        extrapolate.run(cfg)
    cfg = compose("extrapolate", *EXTRAP_SMOKE, "arch=lstm", "eval.trigger_distances=[1]",
                  f"results_dir={tmp_path}")
    with pytest.raises(ValueError, match="trigger_distance must be an int >= 2"):
        extrapolate.run(cfg)


def test_eval_config_rejects_empty_or_non_positive_distances():
    from harness.checks import validate_eval
    from harness.config import EvalConfig
    validate_eval(EvalConfig(trigger_distances=[2, 100]))
    for bad in ([], [0], [5, -1]):
        with pytest.raises(ValueError, match="eval.trigger_distances"):
            validate_eval(EvalConfig(trigger_distances=bad))
