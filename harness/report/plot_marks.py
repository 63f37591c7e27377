"""Marks that keep a figure from hiding how its points were obtained (used by harness.report.plot
and harness.report.plot_distance):

* a failed point (oom, timeout, error, skipped, diverged) is an × at the bottom edge;
* a point from a model whose training did not finish or did not converge (stopped by its
  time budget, short of its target accuracy: ``harness.report.series.training_flags``) gets a
  hollow diamond around it, and the figure a footnote saying which runs and why - so a
  model stopped after 31 of 1,500 steps does not read as "this architecture cannot".
"""
from __future__ import annotations

import textwrap

import pandas as pd
from matplotlib.figure import Figure

from harness.report.series import series_names, training_flags, training_notes

FAILED_MARKER = "x"
UNFINISHED_MARKER = "D"
UNFINISHED_LEGEND = "◇ = training unfinished / not converged"


def mark_failures(ax, failed: pd.DataFrame, x: str, palette: dict, order: list[str]) -> None:
    """An × per failed point at the bottom edge, stacked a little by curve so several
    failures at one length stay visible."""
    names = series_names(failed)
    transform = ax.get_xaxis_transform()  # x in data units, y in axes fraction
    for name, rows in failed.groupby(names):
        level = 0.03 + 0.035 * (order.index(name) if name in order else 0)
        ax.scatter(rows[x], [level] * len(rows), marker=FAILED_MARKER, s=40, linewidths=1.5,
                   color=palette.get(name, "black"), transform=transform, clip_on=False, zorder=5)


def mark_unfinished(ax, ok: pd.DataFrame, x: str, y: str, palette: dict) -> bool:
    """A hollow diamond on each plotted point (the mean over seeds at each x) whose rows
    include a model that did not finish or converge; True if any was drawn."""
    flagged = training_flags(ok) != ""
    if not flagged.any():
        return False
    names = series_names(ok)
    for name in sorted(set(names[flagged])):
        rows = ok[names == name]
        points = rows[flagged[names == name]].groupby(x)[y].size().index  # the x with an unfinished run
        means = rows.groupby(x)[y].mean().loc[points]
        ax.scatter(means.index, means.to_numpy(), marker=UNFINISHED_MARKER, s=90, facecolors="none",
                   edgecolors=palette.get(name, "black"), linewidths=1.6, zorder=6, gid="unfinished")
    return True


def footnote_unfinished(fig: Figure, rows: pd.DataFrame, width: int = 120) -> str:
    """Write under ``fig`` which runs did not finish or converge, and why; returns the text."""
    notes = training_notes(rows)
    if not notes:
        return ""
    text = "◇ training did not finish or did not converge (these points do not show what the architecture " \
           "can do): " + "; ".join(f"{name}: {why}" for name, why in sorted(notes.items()))
    fig.text(0.01, 0.0, "\n".join(textwrap.wrap(text, width)), ha="left", va="top", fontsize="small",
             gid="unfinished_note")
    return text
