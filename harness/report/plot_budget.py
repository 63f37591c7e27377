"""A metric against the training budget, beside the metric against evaluation length
(``harness.report.plot`` draws it as ``extrapolation_vs_train_tokens`` wherever a curve was
trained at several budgets, e.g. a multirun over ``train.steps``).

Left: the metric at the training length against the tokens each run trained on (log
axis), one line per curve: what more data buys each model. Right: the metric against the
evaluation length at each curve's largest budget: how far past its training length the
best-trained model of each kind holds. Bits per byte where the task reports it, else the
loss. The mean over seeds, each run's point as a dot when there are several.
"""
from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from harness.report.series import (Y_LABELS, extrapolation_groups, format_length, largest_budget, series_names,
                                   several_budgets, training_budget)

def _metric(ext: pd.DataFrame) -> str:
    return "bpb" if "bpb" in ext.columns and ext["bpb"].notna().any() else "loss"


def budget_figure(rows: pd.DataFrame, palette: dict, title: str) -> Figure:
    metric = _metric(rows)
    ok = rows[rows["status"] == "ok"].assign(series=series_names(rows[rows["status"] == "ok"]),
                                             budget=training_budget(rows[rows["status"] == "ok"]),
                                             eval_seq_len=lambda d: pd.to_numeric(d["eval_seq_len"]))
    order = [n for n in palette if n in set(ok["series"])]
    n_seeds = ok["seed"].nunique() if "seed" in ok.columns and not ok.empty else 1
    fig = Figure(figsize=(11.5, 4.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    at_train = ok[ok["eval_seq_len"] == pd.to_numeric(ok["train_seq_len"])]
    for ax, data, x in ((left, at_train, "budget"), (right, largest_budget(ok), "eval_seq_len")):
        if data.empty:
            ax.text(0.5, 0.5, "no successful points", transform=ax.transAxes, ha="center")
            continue
        sns.lineplot(data=data, x=x, y=metric, hue="series", hue_order=order, palette=palette,
                     estimator="mean", errorbar=None, marker="o", ax=ax, legend=ax is left)
        if n_seeds > 1:
            sns.scatterplot(data=data, x=x, y=metric, hue="series", hue_order=order, palette=palette,
                            s=12, alpha=0.5, legend=False, ax=ax)
        ax.set_xscale("log", base=2 if x == "eval_seq_len" else 10)
        ax.xaxis.set_major_formatter(FuncFormatter(format_length) if x == "eval_seq_len"
                                     else FuncFormatter(lambda v, _p: f"{v / 1e6:g}M" if v >= 1e6 else f"{v / 1e3:g}K"))
        ax.set_ylabel(Y_LABELS.get(metric, metric))
    for t in sorted(pd.to_numeric(ok["train_seq_len"]).unique()):
        right.axvline(t, color="0.35", linestyle="--", linewidth=1, label="train length")
    left.set(xlabel="training tokens (steps x batch x length)", title="at the training length")
    right.set(xlabel="evaluation length (tokens; K = 1024)", title="at each model's largest budget")
    if left.get_legend() is not None:
        left.legend(fontsize="small")
    band = f"mean over {n_seeds} seeds (dots: each run)" if n_seeds > 1 else "one seed"
    fig.suptitle(f"{title}: {Y_LABELS.get(metric, metric)} against training tokens and evaluation length ({band})")
    return fig


def budget_figures(ext: pd.DataFrame, palette: dict) -> dict[str, Figure]:
    """One figure per task and training length whose curves were trained at several budgets."""
    groups = [(title, rows) for title, rows in extrapolation_groups(ext) if several_budgets(rows)]
    return {"extrapolation_vs_train_tokens" + (f"_{i}" if len(groups) > 1 else ""): budget_figure(rows, palette, title)
            for i, (title, rows) in enumerate(groups)}
