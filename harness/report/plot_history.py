"""Training curves: the loss against the step, from the ``<checkpoint>.history.csv`` file
the extrapolation app writes beside every trained model (also when training diverged).

    python -m harness.report.plot_history RESULTS_DIR --checkpoints CKPT_DIR [--by train_warmup_steps] [--out OUT]

The result rows say which run each file belongs to (its ``label`` and ``train_key`` name
the file) and what was varied (any row column, e.g. ``train_warmup_steps``); one panel per
value of the ``--by`` columns, one colour per curve (the plots' palette), each seed a thin
line and their mean in bold. A run that diverged keeps its curve up to the step it
stopped, and its label says so. Writes ``OUT/figures/training_loss.{png,svg}``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from harness.results import load_rows
from harness.report.series import series_names

FIGURE = "training_loss"


def load_histories(rows: pd.DataFrame, checkpoint_dir: str | Path, by: Sequence[str] = ()) -> pd.DataFrame:
    """The training curve of every run in ``rows``: (step, loss) with the run's series,
    seed, training status and ``by`` columns. Runs without a history file are left out."""
    rows = rows.assign(series=series_names(rows))
    runs = rows.drop_duplicates(["series", "train_key"])
    curves = []
    for _, run in runs.iterrows():
        path = Path(checkpoint_dir) / f"{run['series']}-{run['train_key']}.history.csv"
        if not path.exists():
            continue
        curve = pd.read_csv(path)
        if "loss" not in curve.columns:
            continue
        curve = curve.dropna(subset=["loss"])[["step", "loss"]]
        fields = {"series": run["series"], "seed": run.get("seed"), "train_status": run.get("train_status", "ok")}
        fields.update({c: run.get(c) for c in by})
        curves.append(curve.assign(**fields))
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()


def _panel_title(key, by: Sequence[str]) -> str:
    values = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{c.removeprefix('train_')}={v:g}" if isinstance(v, float) else f"{c.removeprefix('train_')}={v}"
                     for c, v in zip(by, values)) or "training loss"


def history_figure(curves: pd.DataFrame, palette: dict, by: Sequence[str] = (), title: str = "") -> Figure:
    """One panel per ``by`` value; thin = one seed, bold = the mean over seeds."""
    groups = list(curves.groupby(list(by), sort=True)) if by else [((), curves)]
    fig = Figure(figsize=(5.2 * len(groups), 4.0), layout="constrained")
    axes = fig.subplots(1, len(groups), sharey=True, squeeze=False)[0]
    for ax, (key, data) in zip(axes, groups):
        order = [n for n in palette if n in set(data["series"])]
        failed = data[data["train_status"] != "ok"].groupby("series")["seed"].nunique()
        data = data.assign(series=data["series"].map(
            lambda s: f"{s} ({failed[s]} diverged)" if s in failed.index else s))
        colours = {name: palette[name.split(" (")[0]] for name in data["series"].unique()}
        hue_order = [n for o in order for n in sorted(colours) if n.split(" (")[0] == o]
        if data["seed"].nunique() > 1:
            sns.lineplot(data=data, x="step", y="loss", hue="series", hue_order=hue_order, palette=colours,
                         units="seed", estimator=None, linewidth=0.7, alpha=0.35, legend=False, ax=ax)
        sns.lineplot(data=data, x="step", y="loss", hue="series", hue_order=hue_order, palette=colours,
                     estimator="mean", errorbar=None, linewidth=1.8, ax=ax)
        ax.set(title=_panel_title(key, by), xlabel="training step", ylabel="training loss (nats/token)")
        ax.legend(fontsize="small")
    n_seeds = curves["seed"].nunique()
    band = f"each of {n_seeds} seeds thin, mean bold" if n_seeds > 1 else "one seed"
    fig.suptitle(f"{title + ': ' if title else ''}training loss ({band})")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.report.plot_history",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", help="directory of the runs' result files")
    parser.add_argument("--checkpoints", required=True, help="the runs' checkpoint_dir (holds *.history.csv)")
    parser.add_argument("--by", action="append", default=[], help="a row column: one panel per value (repeatable)")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", default=None, help="output directory (default: results_dir)")
    args = parser.parse_args(argv)
    from harness.report.plot import _save, series_palette

    rows = load_rows(args.results_dir)
    missing = [c for c in args.by if c not in rows.columns]
    if rows.empty or missing:
        print(f"no rows under {args.results_dir}" if rows.empty else f"--by: no column {missing} in the rows",
              file=sys.stderr)
        return 1
    curves = load_histories(rows, args.checkpoints, args.by)
    if curves.empty:
        print(f"no *.history.csv of these runs under {args.checkpoints}", file=sys.stderr)
        return 1
    fig = history_figure(curves, series_palette(series_names(rows)), args.by, args.title)
    paths = _save(fig, Path(args.out or args.results_dir) / "figures", FIGURE)
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
