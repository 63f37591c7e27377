"""The linear probe (harness.probe): ridge recovers a planted signal, the features are the
model's, head accuracy is the evaluation's, and the CLI turns a checkpoint into rows."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from archs import create_arch
from harness import probe
from harness.evaluate import evaluate
from harness.tasks import get_task

from tests.apps import EXTRAP_SMOKE, run_extrapolate


def _planted(n, dim=32, classes=8, strength=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    directions = torch.randn(classes, dim, generator=g)
    x = torch.randn(n, dim, generator=g) + strength * directions[y]
    return x, y


def test_ridge_recovers_a_planted_linear_signal():
    x, y = _planted(2000, strength=3.0)
    w, b = probe.fit_ridge(x[:1500], y[:1500], 8)
    acc = (probe.predict_ridge(w, b, x[1500:]) == y[1500:]).float().mean()
    assert acc > 0.95
    # Labels unrelated to the features: held-out accuracy near chance (1/8).
    _, unrelated = _planted(2000, seed=1)
    w, b = probe.fit_ridge(x[:1500], unrelated[:1500], 8)
    assert (probe.predict_ridge(w, b, x[1500:]) == unrelated[1500:]).float().mean() < 0.25


def test_ridge_is_scale_invariant_and_centred():
    x, y = _planted(600, strength=3.0)
    w1, b1 = probe.fit_ridge(x, y, 8)
    w2, b2 = probe.fit_ridge(1000 * x + 5, y, 8)
    assert torch.equal(probe.predict_ridge(w1, b1, x), probe.predict_ridge(w2, b2, 1000 * x + 5))


def _model():
    torch.manual_seed(0)
    return create_arch("lstm", vocab_size=9, d_model=16, n_layers=2).eval()


def test_features_are_the_hidden_state_the_head_reads():
    model, task = _model(), get_task("induction_heads", vocab=8)
    batch = task.sample(4, 40, torch.Generator().manual_seed(0))
    hidden, pred, answer = probe.query_features(model, batch)
    logits = model(batch.inputs)[:, -1]
    torch.testing.assert_close(model.head(hidden), logits)
    assert torch.equal(pred, logits.argmax(-1))
    assert torch.equal(answer, batch.targets[:, -1])
    # In state-carrying chunks: the same features.
    chunked, _, _ = probe.query_features(model, batch, chunk_len=16)
    torch.testing.assert_close(chunked, hidden, atol=1e-5, rtol=1e-5)


def test_probe_rows_per_distance_and_head_accuracy_is_the_evaluations():
    model, task = _model(), get_task("induction_heads", vocab=8)
    rows = probe.probe_distances(model, task, 48, [4, 40], n_train=64, n_test=24, batch_size=8, seed=7)
    assert list(rows["trigger_distance"]) == [4, 40]
    assert rows["probe_acc"].between(0, 1).all() and rows["probe_train_acc"].between(0, 1).all()
    for d, head in zip(rows["trigger_distance"], rows["head_acc"]):
        ev = evaluate(model, task.at_distance(int(d)), 48, n_sequences=24, batch_size=8,
                      generator=torch.Generator().manual_seed(7))
        assert head == pytest.approx(ev["accuracy"])


@pytest.mark.slow
def test_cli_loads_the_runs_checkpoint(tmp_path, capsys):
    overrides = [*EXTRAP_SMOKE, "arch=lstm", f"results_dir={tmp_path / 'res'}",
                 f"checkpoint_dir={tmp_path / 'ckpt'}"]
    run_extrapolate(tmp_path, "arch=lstm")
    out = tmp_path / "rows.csv"
    assert probe.main(["--seq-len", "40", "--distances", "3,30", "--n-train", "32", "--n-test", "16",
                       "--out", str(out), *overrides]) == 0
    rows = pd.read_csv(out)
    assert list(rows["trigger_distance"]) == [3, 30] and (rows["seed"] == 0).all()
    with pytest.raises(FileNotFoundError, match="train the run first"):
        probe.main(["--seq-len", "40", "--distances", "3", *overrides[:-1], f"checkpoint_dir={tmp_path / 'none'}"])
