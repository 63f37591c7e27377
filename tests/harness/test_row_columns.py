"""The columns every app's rows share are written by one function, ``BuiltModel.row``: a cost
row and an extrapolation row of the same model agree on them, and both pass through it."""
from __future__ import annotations

import json

import pytest
import torch

from harness import cost, extrapolate
from harness.build import BuiltModel
from harness.train import TrainResult
from tests.apps import COST_SMOKE, EXTRAP_SMOKE, compose

# One model for both apps: a fixed width, layers and vocabulary (not sized by a target).
SAME_MODEL = ["arch=lstm", "model.match=width", "model.d_model=16", "model.n_layers=1", "model.vocab_size=32",
              "figures=[time_vs_length,extrapolation_accuracy]"]
SHARED = ("arch", "label", "arch_kwargs", "params", "d_model", "n_layers", "sizing", "device", "experiment",
          "figures", "backend", "seq_len", "status", "reason")


@pytest.fixture
def rows_through_the_shared_function(monkeypatch):
    made: list[dict] = []
    real = BuiltModel.row

    def spy(self, *args, **kwargs):
        made.append(real(self, *args, **kwargs))
        return made[-1]

    monkeypatch.setattr(BuiltModel, "row", spy)
    return made


def test_cost_and_extrapolation_rows_share_their_common_columns(tmp_path, rows_through_the_shared_function):
    sweep = cost.Sweep(cost._as_schema(compose("cost", *COST_SMOKE, *SAME_MODEL, f"results_dir={tmp_path / 'c'}")))
    experiment = extrapolate.Experiment(extrapolate._as_schema(compose(
        "extrapolate", *EXTRAP_SMOKE, *SAME_MODEL, f"results_dir={tmp_path / 'e'}",
        "checkpoint_dir=null")))
    cost_row = sweep.row("forward", 64, "skipped", "why")
    eval_row = experiment.row(64, 8, TrainResult(), "skipped", "why")

    assert rows_through_the_shared_function == [cost_row, eval_row]
    for column in SHARED:
        assert cost_row[column] == eval_row[column], column
    arch_columns = {c for c in cost_row if c.startswith("arch.")}
    assert arch_columns and arch_columns == {c for c in eval_row if c.startswith("arch.")}
    assert all(cost_row[c] == eval_row[c] for c in arch_columns)
    assert json.loads(cost_row["arch_kwargs"])["d_model"] == 16 and cost_row["figures"] == \
        "time_vs_length,extrapolation_accuracy"
    # each app's own columns stay its own; the distance is the one passed, not held state
    assert cost_row["active_params"] == cost_row["params"] and "active_params" not in eval_row
    assert (cost_row["mode"], eval_row["mode"]) == ("forward", "eval")
    assert eval_row["trigger_distance"] == 8 and experiment.row(64, None, TrainResult())["trigger_distance"] is None
    assert eval_row["dtype"] == str(torch.float32).removeprefix("torch.")
