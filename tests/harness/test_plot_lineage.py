"""Figures of the lineage and post-norm studies: a metric against the training budget (runs
at different budgets never averaged as seeds) and training curves from history files."""
from __future__ import annotations

import pandas as pd
import pytest

from harness.report.plot import extrapolation_figures, series_palette
from harness.report.plot_history import history_figure, load_histories, main
from harness.report.markdown import write_report
from harness.results import ResultStore, make_row
from harness.report.series import largest_budget, several_budgets, training_budget


def _lineage_rows(budgets=(10, 100)):
    """bpb falls with the budget and rises past the training length (64)."""
    return pd.DataFrame([make_row(arch=a, mode="eval", task="lm", train_seq_len=64, eval_seq_len=n, seq_len=n,
                                  bpb=base / steps ** 0.1 * (n / 64) ** grow, loss=1.0, seed=0,
                                  train_steps_budget=steps, train_batch_size=8, train_tokens=steps * 8 * 64, env={},
                                  point_key=f"{a}-{steps}-{n}")
                         for a, base, grow in (("ngram", 3.0, 0.0), ("transformer", 2.5, 0.5))
                         for steps in budgets for n in (64, 128, 256)])


def test_budgets_are_told_apart():
    df = _lineage_rows()
    assert several_budgets(df) and not several_budgets(_lineage_rows(budgets=(10,)))
    assert sorted(training_budget(df).unique()) == [10 * 8 * 64, 100 * 8 * 64]
    top = largest_budget(df)
    assert set(top["train_steps_budget"]) == {100} and len(top) == len(df) // 2
    # a run cut short keeps its planned budget; rows from before the column have none
    one = _lineage_rows(budgets=(100,))
    assert not several_budgets(one.assign(train_tokens=range(len(one))))
    assert not several_budgets(df.drop(columns=["train_steps_budget"]))


@pytest.mark.slow
def test_budget_figure_and_length_figures_at_the_largest_budget():
    df = _lineage_rows()
    figures = extrapolation_figures(df)
    assert {"extrapolation_vs_train_tokens", "extrapolation_bpb"} <= set(figures)
    left, right = figures["extrapolation_vs_train_tokens"].axes[:2]
    assert left.get_xscale() == "log" and right.get_xscale() == "log"
    # left: one point per budget at the training length; transformer's bpb falls with budget
    line = next(l for l in left.get_lines() if l.get_label() == "transformer" or len(l.get_xdata()) == 2)
    assert len(line.get_xdata()) == 2 and line.get_ydata()[1] < line.get_ydata()[0]
    # the length figure draws only the largest budget: at 64 tokens transformer = 2.5 / 100^0.1
    bpb_ax = figures["extrapolation_bpb"].axes[0]
    ys = [y for l in bpb_ax.get_lines() for x, y in zip(l.get_xdata(), l.get_ydata()) if x == 64]
    assert any(abs(y - 2.5 / 100 ** 0.1) < 1e-9 for y in ys)
    assert not any(abs(y - 2.5 / 10 ** 0.1) < 1e-9 for y in ys)  # the small budget is not mixed in
    assert "extrapolation_vs_train_tokens" not in extrapolation_figures(_lineage_rows(budgets=(10,)))


def test_report_gives_each_budget_its_own_row(tmp_path):
    report = write_report(_lineage_rows(), tmp_path).read_text()
    assert "| transformer @ 0.005M tokens |" in report and "| transformer @ 0.051M tokens |" in report
    assert "(n=2)" not in report  # the two budgets were not taken for two seeds


def _study(tmp_path):
    """Two curves x two warm-ups x two seeds; one post-norm run diverged."""
    rows, ckpt = [], tmp_path / "ckpt"
    ckpt.mkdir()
    for label in ("transformer", "transformer+postnorm"):
        for warmup in (0, 50):
            for seed in (0, 1):
                key = f"k{label[-4:]}{warmup}{seed}"
                status = "diverged" if (label.endswith("postnorm") and warmup == 0 and seed == 1) else "ok"
                rows.append(make_row(arch="transformer", label=label, mode="eval", task="lm", seq_len=64,
                                     train_seq_len=64, eval_seq_len=64, seed=seed, train_key=key,
                                     train_warmup_steps=warmup, train_status=status, env={},
                                     point_key=f"{key}-64", status=status,
                                     reason="" if status == "ok" else "training diverged: loss nan at step 30"))
                final = 3.3 if (label.endswith("postnorm") and warmup == 0) else 2.0
                steps = range(0, 60 if status == "ok" else 30, 10)
                pd.DataFrame({"step": list(steps), "loss": [5.5 - (5.5 - final) * s / 50 for s in steps],
                              "lr": 1e-3}).to_csv(ckpt / f"{label}-{key}.history.csv", index=False)
    store = ResultStore(tmp_path / "res")
    for row in rows:
        store.write([row], row["point_key"])
    return tmp_path / "res", ckpt


@pytest.mark.slow
def test_training_curves_join_rows_to_their_history_files(tmp_path):
    res, ckpt = _study(tmp_path)
    from harness.results import load_rows
    curves = load_histories(load_rows(res), ckpt, ["train_warmup_steps"])
    assert len(curves.groupby(["series", "seed", "train_warmup_steps"])) == 8
    diverged = curves[curves["train_status"] == "diverged"]
    assert set(diverged["series"]) == {"transformer+postnorm"} and diverged["step"].max() == 20
    fig = history_figure(curves, series_palette(curves["series"]), ["train_warmup_steps"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["warmup_steps=0", "warmup_steps=50"]
    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert labels == {"transformer", "transformer+postnorm (1 diverged)"}


@pytest.mark.slow
def test_history_cli_writes_the_figure_and_names_bad_input(tmp_path, capsys):
    res, ckpt = _study(tmp_path)
    assert main([str(res), "--checkpoints", str(ckpt), "--by", "train_warmup_steps", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "figures" / "training_loss.png").stat().st_size > 5_000
    assert main([str(res), "--checkpoints", str(ckpt), "--by", "nope"]) == 1
    assert "no column ['nope']" in capsys.readouterr().err
    assert main([str(res), "--checkpoints", str(tmp_path)]) == 1
