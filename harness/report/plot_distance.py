"""Accuracy against trigger distance: the figure beside accuracy against length
(``harness.report.plot`` draws it as ``accuracy_vs_distance`` wherever such rows exist).

"Accuracy at length L" with the trigger placed at random mixes every distance up to L;
rows evaluated with ``eval.trigger_distances`` fix the distance d between the trigger and
the query (see each task's ``distance_meaning``) and carry it in ``trigger_distance``.
This module draws those rows: accuracy against d (log2 axis), one panel per curve, one
colour per evaluation length, the mean over seeds in bold and each seed as a thin line
(a study has a handful of seeds: their spread is the finding), a dashed line at
the longest distance a training sequence can hold (train_seq_len - 1). Rows without a
distance (the length axis) make the length figures; ``harness.report.series.split_distance_rows``
is the split both use, so a length figure never averages over fixed-distance rows.
One figure per task and training length: ``accuracy_vs_distance[_<n>]``. A panel whose
curve includes a model that did not finish or converge training is titled †, its points
get hollow diamonds and the figure a footnote (harness.report.plot_marks).
"""
from __future__ import annotations

import math

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.report.plot_marks import UNFINISHED_MARKER, footnote_unfinished, mark_unfinished
from harness.report.series import (extrapolation_groups, format_length, series_names, split_distance_rows,
                                   training_notes)


def distance_figure(rows: pd.DataFrame, palette: dict, title: str = "") -> Figure:
    """Accuracy against trigger distance for rows of one task and training length.

    One panel per curve (small multiples: a study has many variants, and overlaid they
    hide each other), one colour per evaluation length within a panel (light = short,
    dark = long), so "does accuracy depend on the length at a fixed distance?" reads as
    "do a panel's lines coincide?"."""
    rows = rows.assign(series=series_names(rows),
                       trigger_distance=pd.to_numeric(rows["trigger_distance"]),
                       eval_seq_len=pd.to_numeric(rows["eval_seq_len"]))
    ok = rows[(rows["status"] == "ok") & rows["accuracy"].notna()]
    n_seeds = ok["seed"].nunique() if "seed" in ok.columns and not ok.empty else 1
    names = [n for n in palette if n in set(ok["series"])] + sorted(set(ok["series"]) - set(palette))
    n_cols = min(3, max(1, len(names)))
    n_rows = max(1, math.ceil(len(names) / n_cols))
    fig = Figure(figsize=(4.2 * n_cols, 3.0 * n_rows + 0.7))
    axes = fig.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False).ravel()
    train = sorted(pd.to_numeric(rows.get("train_seq_len", pd.Series(dtype=float)), errors="coerce").dropna().unique())
    if ok.empty:
        axes[0].text(0.5, 0.5, "no successful points", transform=axes[0].transAxes, ha="center")
    lengths = [format_length(float(n)) for n in sorted(ok["eval_seq_len"].unique())]
    length_colours = dict(zip(lengths, sns.color_palette("crest", len(lengths)))) if lengths else {}
    ok = ok.assign(length=ok["eval_seq_len"].map(lambda n: format_length(float(n))))
    for ax, name in zip(axes, names):
        mine = ok[ok["series"] == name]
        seeds = mine["seed"].nunique() if "seed" in mine.columns else 1
        order = [n for n in lengths if n in set(mine["length"])]
        if seeds > 1:  # each seed thin: with a handful of seeds, the spread is the finding
            sns.lineplot(data=mine, x="trigger_distance", y="accuracy", hue="length", hue_order=order,
                         palette=length_colours, units="seed", estimator=None, linewidth=0.8, alpha=0.35,
                         legend=False, ax=ax)
        sns.lineplot(data=mine, x="trigger_distance", y="accuracy", hue="length", hue_order=order,
                     palette=length_colours, estimator="mean", errorbar=None, marker="o", ms=4,
                     linewidth=1.8, legend=False, ax=ax)
        for length, rows in mine.groupby("length"):  # the mean line of each length, marked where unfinished
            mark_unfinished(ax, rows, "trigger_distance", "accuracy", {name: length_colours[length]})
        unfinished = " †" if training_notes(mine) else ""
        ax.set_title(f"{name} ({seeds} seed{'s' if seeds > 1 else ''}){unfinished}", fontsize="medium")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax in axes[:max(1, len(names))]:
        for t in train:
            ax.axvline(t - 1, color="0.35", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(lambda x, _pos: format_length(x))
        ax.set_ylim(-0.02, 1.02)
        ax.set(xlabel="trigger distance d", ylabel="accuracy")
    handles = [Line2D([], [], color=c, marker="o", ms=4, label=n) for n, c in length_colours.items()]
    if train:
        handles.append(Line2D([], [], color="0.35", linestyle="--", label="longest training distance"))
    if training_notes(ok):
        handles.append(Line2D([], [], color="0.35", marker=UNFINISHED_MARKER, markerfacecolor="none", linestyle="",
                              label="training unfinished / not converged"))
    if handles:
        fig.legend(handles=handles, title="evaluation length", loc="lower center", fontsize="small",
                   title_fontsize="small", ncols=len(handles), frameon=False)
    band = "mean over seeds (bold) and each seed (thin)" if n_seeds > 1 else "one seed"
    fig.suptitle(f"{title}: accuracy by trigger distance ({band})" if title else band, x=0.01, ha="left",
                 fontsize="medium")
    legend_h = 0.45 / fig.get_figheight()  # inches kept for the legend row under the panels
    fig.tight_layout(rect=(0, legend_h, 1, 1 - 0.25 / fig.get_figheight()))
    footnote_unfinished(fig, ok)
    return fig


def distance_figures(df: pd.DataFrame, palette: dict) -> dict[str, Figure]:
    """One accuracy-vs-distance figure per task and training length, by file stem."""
    _, fixed = split_distance_rows(df)
    if fixed.empty:
        return {}
    groups = extrapolation_groups(fixed)
    return {"accuracy_vs_distance" + (f"_{i}" if len(groups) > 1 else ""): distance_figure(rows, palette, title)
            for i, (title, rows) in enumerate(groups)}
