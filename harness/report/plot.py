"""Figures and a markdown report from result files (and nothing else).

    python -m harness.report.plot RESULTS_DIR [--out OUT_DIR]

Reads the point files with ``harness.results.load_rows`` and writes PNG + SVG figures
to ``OUT_DIR/figures`` and ``OUT_DIR/report.md`` (OUT_DIR defaults to RESULTS_DIR).

Cost rows (no ``eval_seq_len``): time, peak memory and tokens/s against length, one
panel per mode, log-log, fitted exponent in the legend; decode latency and state size
against context. Extrapolation rows (with ``eval_seq_len``): each metric against the
evaluation length (log2 axis), a dashed line at the training length, the mean and a
95% band over seeds. Points that failed (oom, timeout, error, skipped, diverged) are
drawn as × at the bottom edge of their panel, and listed in the report; points from a
model whose training did not finish or did not converge get a hollow diamond and the
figure a footnote naming the runs and why (harness.report.plot_marks).

Which figures: each experiment declares them (``figures: [...]`` in its config, from
``harness.config.FIGURES``; every row records it) and exactly those are drawn; rows
that declare none (written before declarations) get every figure their columns allow.

Each curve keeps one colour in every figure: ``series_palette`` gives the built-in
architectures canonical colours (the same in every experiment) and the other curves
free colours by sorted name (computed once per data set, passed to every figure).
Figures are drawn on ``matplotlib.figure.Figure`` objects, so no pyplot state or GUI
backend is involved (safe on headless machines and inside notebooks).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter

from harness.report.fit import PowerFit, fit_power_law
from harness.report.plot_budget import budget_figures
from harness.report.plot_distance import distance_figures
from harness.report.plot_marks import UNFINISHED_LEGEND, footnote_unfinished, mark_failures, mark_unfinished
from harness.report.markdown import write_report
from harness.results import results_dir_cli
from harness.report.series import (  # noqa: F401 - re-used names of the figures' API
    EXTRAPOLATION_METRICS, UNFINISHED, X_LABEL, Y_LABELS, by_series, extrapolation_groups, format_bytes,
    format_length, largest_budget, series_names, several_budgets, split_distance_rows, split_kinds,
    training_notes,
)

Color = tuple[float, float, float]
# Columns that, when they vary, split cost figures into separate files.
FIGURE_CONTEXT: tuple[str, ...] = ("device", "dtype", "batch")
_LINESTYLES = ("-", "--", ":", "-.")


# ---------------------------------------------------------------- names, colours, axes



def canonical_colours() -> dict[str, Color]:
    """The registered architectures' default colours (``register_arch(color=...)``), which
    they keep across every experiment's figures; other labels take the unused ones."""
    from archs import arch_colors

    return {name: tuple(mcolors.to_rgb(c)) for name, c in arch_colors().items()}


def series_palette(names: Iterable[str]) -> dict[str, Color]:
    """A fixed colour per name: the registered architectures' default colours, the others
    (and a second name on an already-taken colour) from the free ones in sorted order, so
    the same set of names always maps the same way."""
    names = sorted(set(map(str, names)))
    canonical = canonical_colours()
    tab20 = [tuple(c) for c in sns.color_palette("tab20", 20)]
    chosen: dict[str, Color] = {}
    for name in names:
        if name in canonical and canonical[name] not in chosen.values():
            chosen[name] = canonical[name]
    others = [n for n in names if n not in chosen]
    taken, reserved = set(chosen.values()), set(canonical.values())
    # never-canonical colours first, then canonical ones no curve here uses
    free = [c for c in tab20 if c not in reserved] + [c for c in tab20 if c in reserved and c not in taken]
    if len(others) > len(free):  # more curves than tab20 has colours: distinctness first
        colours = sns.color_palette("husl", len(names))
        return {name: tuple(colours[i]) for i, name in enumerate(names)}
    chosen.update(zip(others, free))
    return chosen


def _log_x(ax, xs: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(format_length))
    lo, hi = min(xs), max(xs)
    ax.set_xlim(lo / 1.4, hi * 1.4)


def _y_scale(ax, ys: Sequence[float], column: str) -> None:
    ys = [y for y in ys if y > 0 and math.isfinite(y)]
    if ys and max(ys) / min(ys) > 10:  # log only when the data spans a decade or more
        ax.set_yscale("log", base=2 if column.endswith("bytes") else 10)
        ax.yaxis.set_minor_formatter(NullFormatter())  # a decade spans >= 2 labelled major ticks
    if column.endswith("bytes"):
        ax.yaxis.set_major_formatter(FuncFormatter(format_bytes))
    elif column == "tokens_per_s":
        ax.yaxis.set_major_formatter(EngFormatter(sep=""))


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=130 if p.suffix == ".png" else None, bbox_inches="tight")
    return paths


# ---------------------------------------------------------------- cost figures


def _curve_label(name: str, backend: str, n_backends: int, fit: PowerFit | None) -> str:
    """'mamba (∝ L^1.04±0.09)', or '(∝ L^0.31, not resolved)' (harness.report.fit's rules)."""
    label = f"{name} [{backend}]" if n_backends > 1 else name
    if fit is None or not math.isfinite(fit.slope):
        return label
    slope = f"{fit.slope + 0.0:.2f}".replace("-0.00", "0.00")
    if fit.unresolved:
        return f"{label} (∝ L^{slope}, not resolved)"
    return f"{label} (∝ L^{slope}±{(fit.ci_high - fit.ci_low) / 2:.2f})"


def _draw_curves(ax, ok: pd.DataFrame, y: str, palette: dict[str, Color], fit: bool) -> None:
    ok = by_series(ok)
    ok = ok.assign(_series=series_names(ok), _backend=ok["backend"].fillna("").astype(str))
    for name, curve_rows in ok.groupby("_series", sort=True):
        backends = sorted(curve_rows["_backend"].unique())
        for i, backend in enumerate(backends):
            rows = curve_rows[curve_rows["_backend"] == backend]
            med = rows.groupby("seq_len")[y].median().sort_index()
            power = fit_power_law(med.index, med.to_numpy()) if fit else None
            ax.plot(med.index, med.to_numpy(), marker="o", ms=4, color=palette[name],
                    linestyle=_LINESTYLES[i % len(_LINESTYLES)],
                    label=_curve_label(name, backend, len(backends), power))
            if y == "time_ms" and rows[["time_ms_p10", "time_ms_p90"]].notna().all(axis=None):
                band = rows.groupby("seq_len")[["time_ms_p10", "time_ms_p90"]].median().sort_index()
                ax.fill_between(band.index, band["time_ms_p10"], band["time_ms_p90"],
                                color=palette[name], alpha=0.2, linewidth=0)


def _cost_panel(ax, rows: pd.DataFrame, y: str, palette: dict[str, Color], fit: bool, title: str) -> None:
    ok = rows[(rows["status"] == "ok") & pd.to_numeric(rows[y], errors="coerce").notna()]
    failed = rows[rows["status"] != "ok"]
    _draw_curves(ax, ok, y, palette, fit)
    xs = pd.to_numeric(rows["seq_len"], errors="coerce").dropna().tolist()
    if xs:
        _log_x(ax, xs)
    _y_scale(ax, ok[y].astype(float).tolist(), y)
    mark_failures(ax, failed, "seq_len", palette, sorted(palette))
    xlabel = X_LABEL.replace("sequence", "context") if "decode" in title else X_LABEL
    ax.set(xlabel=xlabel, ylabel=Y_LABELS.get(y, y), title=title)
    if ok.empty:
        ax.text(0.5, 0.5, "no successful points", transform=ax.transAxes, ha="center")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", title="× = failed point" if len(failed) else None, title_fontsize="small")


def _figure(panels: list[tuple[str, pd.DataFrame, str, bool]], palette: dict[str, Color], title: str) -> Figure:
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5.4 * len(panels), 4.4), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (panel_title, rows, y, fit) in zip(axes, panels):
            _cost_panel(ax, rows, y, palette, fit, panel_title)
    fig.suptitle(title)
    return fig


def _has_values(rows: pd.DataFrame, y: str) -> bool:
    return y in rows.columns and pd.to_numeric(rows[y], errors="coerce").notna().any()


def _contexts(df: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(file suffix, title, rows) per combination of the FIGURE_CONTEXT columns that vary."""
    keys = [c for c in FIGURE_CONTEXT if c in df.columns and df[c].nunique(dropna=False) > 1]
    if not keys:
        title = ", ".join(f"{c}={df[c].dropna().iloc[0]}" for c in FIGURE_CONTEXT
                          if c in df.columns and df[c].notna().any())
        return [("", title, df)]
    out = []
    for key, rows in df.groupby(keys, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        text = "-".join(f"{k}={v}" for k, v in zip(keys, key))
        out.append(("__" + "".join(ch if ch.isalnum() or ch in "=-_." else "_" for ch in text), text, rows))
    return out


def generation_figure(gen: pd.DataFrame, palette: dict[str, Color]) -> Figure:
    """Generation throughput (generated tokens/s) against batch size, one curve per series:
    the Mamba paper's inference-throughput plot."""
    ok = by_series(gen[gen["status"] == "ok"])
    ok = ok.assign(_series=series_names(ok))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(6.4, 4.6), layout="constrained")
        ax = fig.subplots()
        for name, rows in ok.groupby("_series", sort=True):
            med = rows.groupby("batch")["tokens_per_s"].median().sort_index()
            ax.plot(med.index, med.to_numpy(), marker="o", ms=4, color=palette[name], label=name)
        batches = pd.to_numeric(gen["batch"], errors="coerce").dropna().tolist()
        if batches:
            ax.set_xscale("log", base=2)
            ax.set_xlim(min(batches) / 1.4, max(batches) * 1.4)
        _y_scale(ax, ok["tokens_per_s"].astype(float).tolist(), "tokens_per_s")
        mark_failures(ax, gen[gen["status"] != "ok"], "batch", palette, sorted(palette))
        prompt = ", ".join(sorted({format_length(v) for v in gen["seq_len"].dropna()}))
        new = ", ".join(sorted({f"{int(v)}" for v in gen.get("gen_tokens", pd.Series(dtype=float)).dropna()}))
        ax.set(xlabel="batch size", ylabel="generated tokens/s",
               title=f"Generation throughput (prompt {prompt}, {new} new tokens)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    return fig


def declared_figures(df: pd.DataFrame) -> set[str] | None:
    """The figures the rows' experiments declared (config ``figures:``, stored in each
    row); None when no row declares any (rows written before the declaration existed)."""
    if "figures" not in df.columns:
        return None
    names = {f for v in df["figures"].dropna().astype(str) for f in v.split(",") if f}
    return names or None


def _want(wanted: set[str] | None, stem: str) -> bool:
    return wanted is None or stem in wanted


def cost_figures(df: pd.DataFrame, palette: dict[str, Color] | None = None,
                 wanted: set[str] | None = None) -> dict[str, Figure]:
    """The cost figures, by file stem (see the module doc); ``wanted``: only these
    (default: ``declared_figures(df)``, else every one the rows allow)."""
    wanted = declared_figures(df) if wanted is None else wanted
    cost, _ = split_kinds(df.reset_index(drop=True))
    palette = palette or series_palette(series_names(df))
    figures: dict[str, Figure] = {}
    generate = cost["mode"].astype(str) == "generate"
    if generate.any() and _want(wanted, "generation_throughput"):
        figures["generation_throughput"] = generation_figure(cost[generate], palette)
        cost = cost[~generate]
    for suffix, context, rows in _contexts(cost):
        modes = sorted(rows["mode"].dropna().astype(str).unique())
        by_mode = lambda y, fit: [(m, rows[rows["mode"] == m], y, fit) for m in modes]  # noqa: E731
        for stem, y, fit, what in (("time_vs_length", "time_ms", True, "Time per call"),
                                   ("memory_vs_length", "peak_mem_bytes", True, "Peak memory"),
                                   ("throughput_vs_length", "tokens_per_s", False, "Throughput")):
            if _has_values(rows, y) and _want(wanted, stem):
                figures[stem + suffix] = _figure(by_mode(y, fit), palette, f"{what} vs length ({context})")
        decode = rows[rows["mode"].astype(str).str.contains("decode")]
        panels = []
        if _has_values(decode, "time_ms"):
            panels.append(("decode latency per token", decode, "time_ms", True))
        state = decode if _has_values(decode, "state_bytes") else rows
        if _has_values(state, "state_bytes"):
            panels.append(("decode state size", state, "state_bytes", True))
        if panels and _want(wanted, "decode_vs_context"):
            figures["decode_vs_context" + suffix] = _figure(panels, palette, f"Decoding vs context ({context})")
    return figures


# ---------------------------------------------------------------- extrapolation figures


def _extrapolation_panel(ax, rows: pd.DataFrame, metric: str, palette: dict[str, Color], title: str) -> None:
    rows = rows.assign(series=series_names(rows), eval_seq_len=pd.to_numeric(rows["eval_seq_len"]))
    ok = rows[(rows["status"] == "ok") & rows[metric].notna()]
    n_seeds = ok["seed"].nunique() if "seed" in ok.columns else 1
    if not ok.empty:
        sns.lineplot(data=ok, x="eval_seq_len", y=metric, hue="series", palette=palette,
                     hue_order=[n for n in palette if n in set(ok["series"])], estimator="mean",
                     errorbar=("ci", 95) if n_seeds > 1 else None, n_boot=1000, seed=0,
                     marker="o", ax=ax)
    else:
        ax.text(0.5, 0.5, "no successful points", transform=ax.transAxes, ha="center")
    train = sorted(pd.to_numeric(rows.get("train_seq_len", pd.Series(dtype=float)), errors="coerce").dropna().unique())
    for i, t in enumerate(train):
        ax.axvline(t, color="0.35", linestyle="--", linewidth=1, label="train length" if i == 0 else None)
    _log_x(ax, rows["eval_seq_len"].dropna().tolist() + list(train))
    if metric == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    else:
        _y_scale(ax, ok[metric].astype(float).tolist(), metric)
    failed = rows[rows["status"] != "ok"]
    mark_failures(ax, failed, "eval_seq_len", palette, sorted(palette))
    unfinished = mark_unfinished(ax, ok, "eval_seq_len", metric, palette)
    band = f"mean and 95% CI over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    ax.set(xlabel="evaluation length (tokens; K = 1024)", ylabel=Y_LABELS.get(metric, metric),
           title=f"{title} ({band})")
    keys = ["× = failed point"] * (len(failed) > 0) + [UNFINISHED_LEGEND] * unfinished
    if ax.get_legend_handles_labels()[0]:
        legend = ax.legend(fontsize="small", title="\n".join(keys) or None, title_fontsize="small")
        notes = training_notes(ok) if unfinished else {}
        for text in legend.get_texts():  # the same † as in the tables
            text.set_text(f"{text.get_text()} {UNFINISHED}" if text.get_text() in notes else text.get_text())


def _several_widths(ext: pd.DataFrame) -> bool:
    return "d_model" in ext.columns and ext.assign(s=series_names(ext)).groupby("s")["d_model"].nunique().max() > 1


def recall_state_figure(ext: pd.DataFrame, palette: dict[str, Color]) -> Figure:
    """Accuracy against decode-state bytes, one curve per architecture across its widths
    (Zoology's recall-memory trade-off), one panel per (task, evaluation length)."""
    ext = ext.assign(series=series_names(ext), eval_seq_len=pd.to_numeric(ext["eval_seq_len"]))
    keys = [c for c in ("task", "eval_seq_len") if c in ext.columns]
    groups = list(ext.groupby(keys, sort=True))
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(5.8 * len(groups), 4.6), layout="constrained")
        axes = fig.subplots(1, len(groups), squeeze=False)[0]
        for ax, (key, rows) in zip(axes, groups):
            ok = rows[(rows["status"] == "ok") & rows["accuracy"].notna() & rows["state_bytes"].notna()]
            for name, curve in ok.groupby("series", sort=True):
                mean = curve.groupby(["state_bytes", "d_model"])["accuracy"].mean().reset_index()
                mean = mean.sort_values("state_bytes")
                ax.plot(mean["state_bytes"], mean["accuracy"], marker="o", color=palette[name], label=name)
                for _, p in mean.iterrows():
                    ax.annotate(f"d={int(p['d_model'])}", (p["state_bytes"], p["accuracy"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points", color=palette[name])
            unfinished = mark_unfinished(ax, ok, "state_bytes", "accuracy", palette)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(format_bytes))
            ax.set_ylim(-0.02, 1.02)
            task, length = key if isinstance(key, tuple) else (key, None)
            ax.set(xlabel="decode state at the evaluation length (batch 1)", ylabel="accuracy",
                   title=f"{task} at {format_length(float(length))} tokens" if length else str(task))
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small", title=UNFINISHED_LEGEND if unfinished else None, title_fontsize="small")
    footnote_unfinished(fig, ext[ext["status"] == "ok"])
    fig.suptitle("Recall vs memory: accuracy against decode-state size")
    return fig


def extrapolation_figures(df: pd.DataFrame, palette: dict[str, Color] | None = None,
                          wanted: set[str] | None = None) -> dict[str, Figure]:
    """One figure per metric present (accuracy, loss, bpb, perplexity), one panel per
    (task, training length); with several widths per architecture, the recall-vs-state
    figure, and length curves only where several lengths were evaluated. ``wanted``: only
    these (default: ``declared_figures(df)``)."""
    wanted = declared_figures(df) if wanted is None else wanted
    _, ext = split_kinds(df.reset_index(drop=True))
    palette = palette or series_palette(series_names(df))
    figures: dict[str, Figure] = {}
    ext, fixed_distance = split_distance_rows(ext)
    if not fixed_distance.empty and _want(wanted, "accuracy_vs_distance"):
        figures.update(distance_figures(fixed_distance, palette))
    if ext.empty:
        return figures
    if several_budgets(ext):  # trained at several budgets: against the budget, and by length at the largest
        if _want(wanted, "extrapolation_vs_train_tokens"):
            figures.update(budget_figures(ext, palette))
        ext = largest_budget(ext)
    if _several_widths(ext):
        if _has_values(ext, "accuracy") and _has_values(ext, "state_bytes") and _want(wanted, "accuracy_vs_state"):
            figures["accuracy_vs_state"] = recall_state_figure(ext, palette)
        if pd.to_numeric(ext["eval_seq_len"]).nunique() < 2:
            return figures
        width = ext["d_model"].astype("Int64").astype(str)
        ext = ext.assign(label=series_names(ext) + " (d=" + width + ")")
        palette = series_palette(series_names(ext))
    groups = extrapolation_groups(ext)
    for metric in EXTRAPOLATION_METRICS:
        if not _has_values(ext, metric) or not _want(wanted, f"extrapolation_{metric}"):
            continue
        with sns.axes_style("whitegrid"):
            fig = Figure(figsize=(5.6 * len(groups), 4.4), layout="constrained")
            axes = fig.subplots(1, len(groups), squeeze=False)[0]
            for ax, (task, rows) in zip(axes, groups):
                _extrapolation_panel(ax, rows, metric, palette, task or metric)
        footnote_unfinished(fig, ext[ext["status"] == "ok"])
        fig.suptitle(f"Train short, test long: {Y_LABELS.get(metric, metric)} vs evaluation length")
        figures[f"extrapolation_{metric}"] = fig
    return figures


# ---------------------------------------------------------------- entry points


def plot_cost(df: pd.DataFrame, out_dir: str | Path, palette: dict[str, Color] | None = None) -> list[Path]:
    """Write the cost figures (PNG and SVG) to ``out_dir``; return the files written."""
    return [p for name, fig in cost_figures(df, palette).items() for p in _save(fig, Path(out_dir), name)]


def plot_extrapolation(df: pd.DataFrame, out_dir: str | Path, palette: dict[str, Color] | None = None) -> list[Path]:
    """Write the extrapolation figures (PNG and SVG) to ``out_dir``; return the files written."""
    return [p for name, fig in extrapolation_figures(df, palette).items() for p in _save(fig, Path(out_dir), name)]


def main(argv: Sequence[str] | None = None) -> int:
    args, df, _ = results_dir_cli("archbench-plot", __doc__.splitlines()[0], argv=argv,
                                  out_help="output directory (default: results_dir)")
    if df.empty:
        print(f"no result rows under {args.results_dir}; nothing to plot", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else Path(args.results_dir)
    palette = series_palette(series_names(df))  # one palette for every figure
    cost, ext = split_kinds(df)
    figures = []
    if not cost.empty:
        figures += plot_cost(cost, out / "figures", palette)
    if not ext.empty:
        figures += plot_extrapolation(ext, out / "figures", palette)
    report = write_report(df, out, figures)
    print(f"{len(figures)} figure files in {out / 'figures'}; report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
