"""Accuracy against trigger distance: the figure beside accuracy against length
(``harness.plot`` draws it as ``accuracy_vs_distance`` wherever such rows exist).

"Accuracy at length L" with the trigger placed at random mixes every distance up to L;
rows evaluated with ``eval.trigger_distances`` fix the distance d between the trigger and
the query (see each task's ``distance_meaning``) and carry it in ``trigger_distance``.
This module draws those rows: accuracy against d (log2 axis), one colour per curve, one
line style per evaluation length, the mean and a 95% band over seeds, a dashed line at
the longest distance a training sequence can hold (train_seq_len - 1). Rows without a
distance (the length axis) make the length figures; ``harness.series.split_distance_rows``
is the split both use, so a length figure never averages over fixed-distance rows.
One figure per task and training length: ``accuracy_vs_distance[_<n>]``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from harness.series import extrapolation_groups, format_length, series_names, split_distance_rows
from harness.results import load_rows


def distance_figure(rows: pd.DataFrame, palette: dict, title: str = "") -> Figure:
    """Accuracy against trigger distance for rows of one task and training length."""
    rows = rows.assign(series=series_names(rows),
                       trigger_distance=pd.to_numeric(rows["trigger_distance"]),
                       eval_seq_len=pd.to_numeric(rows["eval_seq_len"]))
    ok = rows[(rows["status"] == "ok") & rows["accuracy"].notna()]
    n_seeds = ok["seed"].nunique() if "seed" in ok.columns and not ok.empty else 1
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    if ok.empty:
        ax.text(0.5, 0.5, "no successful points", transform=ax.transAxes, ha="center")
    else:
        lengths = sorted(ok["eval_seq_len"].unique())
        sns.lineplot(data=ok.assign(length=ok["eval_seq_len"].map(lambda n: format_length(float(n)))),
                     x="trigger_distance", y="accuracy", hue="series", style="length",
                     style_order=[format_length(float(n)) for n in lengths],
                     hue_order=[n for n in palette if n in set(ok["series"])], palette=palette,
                     estimator="mean", errorbar=("ci", 95) if n_seeds > 1 else None, n_boot=1000,
                     seed=0, marker="o", ax=ax)
    train = sorted(pd.to_numeric(rows.get("train_seq_len", pd.Series(dtype=float)), errors="coerce").dropna().unique())
    for i, t in enumerate(train):
        ax.axvline(t - 1, color="0.35", linestyle="--", linewidth=1,
                   label="longest training distance" if i == 0 else None)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(lambda x, _pos: format_length(x))
    ax.set_ylim(-0.02, 1.02)
    band = f"mean and 95% CI over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    ax.set(xlabel="trigger distance d (tokens from trigger to query)", ylabel="accuracy",
           title=f"{title} ({band})" if title else band)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def distance_figures(df: pd.DataFrame, palette: dict) -> dict[str, Figure]:
    """One accuracy-vs-distance figure per task and training length, by file stem."""
    _, fixed = split_distance_rows(df)
    if fixed.empty:
        return {}
    groups = extrapolation_groups(fixed)
    return {"accuracy_vs_distance" + (f"_{i}" if len(groups) > 1 else ""): distance_figure(rows, palette, title)
            for i, (title, rows) in enumerate(groups)}
