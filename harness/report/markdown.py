"""``report.md``: the tables behind the figures (written by ``harness.report.plot``).

Sections: provenance (experiments, devices, commits), what the conformance suite checked
for each architecture, figures, status counts, scaling exponents with 95% CIs and the
fitted range, crossover lengths with their intervals ("not resolved" where the data
cannot place them: harness.report.fit), failed points with their reasons, and the extrapolation
tables (architecture x evaluation length, and x trigger distance): the mean over seeds
with its 95% confidence interval (Student's t over seeds) and the number of seeds when
there are several. A curve with rows from a model whose training did not finish or did
not converge is marked † and footnoted (harness.report.series.training_notes).
"""
from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.conformance import conformance_note
from harness.conformance.plan import coverage, coverage_brief
from harness.report.fit import MAX_CI_HALF_WIDTH, MIN_R2, crossover_table, fit_exponent, t_quantile_975
from harness.results import atomic_write
from harness.report.series import (
    EXTRAPOLATION_METRICS, SERIES_KEYS, UNFINISHED, Y_LABELS, by_series, extrapolation_groups, format_length,
    registry_names, series_names, several_budgets, split_distance_rows, split_kinds, training_budget,
    training_notes,
)

MAX_FAILED_ROWS = 100  # beyond this the report says how many more there are


def _cell(v: object) -> str:
    # Integer-valued floats (lengths, seeds in columns that also hold NaN) print as ints.
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of ``df`` as displayed (values str()-ed)."""
    if df.empty:
        return "_(none)_\n"
    cells = df.astype(object).where(df.notna(), "").map(_cell)
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False, name=None)]
    return "\n".join([header, rule, *body]) + "\n"


def _varying(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    """The columns of ``cols`` worth showing: 'arch' always, others only if they vary."""
    return [c for c in cols if c in df.columns and (c == "arch" or df[c].nunique(dropna=False) > 1)]


def _num(v: float, fmt: str = ".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    text = format(v, fmt)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.00"


def _provenance(df: pd.DataFrame) -> str:
    def values(col: str) -> str:
        return ", ".join(sorted(map(str, df[col].dropna().unique()))) if col in df.columns else "n/a"

    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return (f"Generated {now} from {len(df)} result rows.\n\n"
            f"- experiments: {values('experiment')}\n- devices: {values('device')}\n"
            f"- torch: {values('env.torch')}\n- git commits: {values('env.git_commit')}\n"
            f"- {conformance_note()}\n")


def _conformance_section(df: pd.DataFrame) -> str:
    """Per architecture in the rows: where archbench's suite checks causality and step /
    prefill == forward at every position (harness.conformance.plan)."""
    archs = sorted(map(str, df["arch"].dropna().unique()))
    return markdown_table(pd.DataFrame({"arch": archs, "checked at (tokens, dtype)": [coverage(a) for a in archs]}))


def _arch_of(df: pd.DataFrame) -> dict[str, str]:
    """{curve name (label or arch, as the table shows it): registry arch}, to look up what
    conformance checked (``by_series`` keeps the registry's name in ``registry_arch``)."""
    registry = registry_names(df)
    return {**dict(zip(series_names(df), registry)), **dict(zip(df["arch"].astype(str), registry))}


def _marked(names: pd.Series | pd.Index, notes: dict[str, str]) -> list[str]:
    return [f"{n} {UNFINISHED}" if n in notes else str(n) for n in names]


def _footnote(notes: dict[str, str]) -> str:
    if not notes:
        return ""
    lines = [f"- {UNFINISHED} {name}: {why}" for name, why in sorted(notes.items())]
    return ("\n" + f"{UNFINISHED} training did not finish or did not converge; these results do not show what "
            "the architecture can do:\n\n" + "\n".join(lines) + "\n")


def _status_section(df: pd.DataFrame) -> str:
    df = by_series(df)
    keys = _varying(df, ("arch", "backend", "mode"))
    # rows per (curve, status): a count of rows, not of a column (the status table of rows
    # without a point_key would otherwise count "arch" while grouping by it)
    counts = df.groupby(keys + ["status"]).size().unstack("status", fill_value=0)
    counts.columns.name = None
    return markdown_table(counts.reset_index())


def _exponent_section(cost: pd.DataFrame) -> str:
    parts = []
    for y in ("time_ms", "peak_mem_bytes"):
        if y not in cost.columns or cost[y].notna().sum() == 0:
            continue
        fits = fit_exponent(by_series(cost), y=y)
        keys = _varying(fits, SERIES_KEYS)
        table = fits[keys].copy()
        table["exponent"] = [f"{_num(v)}{' (not resolved)' if why else ''}" if math.isfinite(v) else ""
                             for v, why in zip(fits["slope"], fits["unresolved"])]
        table["95% CI"] = [f"[{_num(lo)}, {_num(hi)}]" if math.isfinite(lo) else ""
                           for lo, hi in zip(fits["ci_low"], fits["ci_high"])]
        table["r²"] = fits["r2"].map(lambda v: _num(v, ".3f"))
        table["fitted range"] = [f"{format_length(a)}–{format_length(b)}" if math.isfinite(a) else ""
                                 for a, b in zip(fits["x_min"], fits["x_max"])]
        table["points"] = fits["n_points"]
        table["note"] = ["; ".join(t for t in (why and f"not resolved: {why}", reason) if t)
                         for why, reason in zip(fits["unresolved"], fits["reason"])]
        arch_of = _arch_of(cost)
        table["conformance"] = [coverage_brief(arch_of.get(a, a)) for a in fits["arch"]]
        parts.append(f"### {Y_LABELS.get(y, y)} ∝ L^exponent\n\n{markdown_table(table)}")
    if parts:
        parts.append(f"An exponent is *not resolved* when its 95% CI is wider than ±{MAX_CI_HALF_WIDTH:g} (it cannot "
                     f"tell L^1 from L^2), when fewer than 3 lengths give no CI, or when a clearly sloped curve "
                     f"fits a power law with r² < {MIN_R2:g}. *conformance*: the lengths at which archbench's "
                     f"suite checks the architecture (details under Conformance).\n")
    return "\n".join(parts) or "_(no cost rows)_\n"


def _crossover_section(cost: pd.DataFrame) -> str:
    if "time_ms" not in cost.columns or cost["time_ms"].notna().sum() == 0:
        return "_(no timing rows)_\n"
    table = crossover_table(by_series(cost))
    if table.empty:
        return "_(fewer than two architectures per mode)_\n"
    keys = _varying(table, ("mode", "dtype", "batch", "device")) or ["mode"]
    # Pairs whose curves never meet near the measured lengths are counted, not listed.
    found = table["x"].notna()
    n_none = int((~found).sum())
    table = table[found]
    if table.empty:
        return f"_(no two curves cross within the measured lengths: {n_none} pairs)_\n"
    out = table[[k for k in keys if k in table.columns] + ["a", "b"]].copy()
    out["crossover length"] = [f"not resolved (≈ {x:,.0f})" if why else f"{x:,.0f}"
                               for x, why in zip(table["x"], table["unresolved"])]
    out["interval"] = ["" if why else f"[{lo:,.0f}, {hi:,.0f}]"
                       for lo, hi, why in zip(table["x_low"], table["x_high"], table["unresolved"])]
    out["how"] = table["method"].map({"interpolated": "measured (interpolated)",
                                      "fit": "extrapolated from fits", "none": ""})
    out["faster at shorter lengths"] = [("" if why or low is None or pd.isna(low) else a if low else b)
                                        for a, b, low, why in zip(table["a"], table["b"], table["a_lower_below"],
                                                                  table["unresolved"])]
    out["note"] = ["; ".join(t for t in (why and f"not resolved: {why}", reason) if t)
                   for why, reason in zip(table["unresolved"], table["reason"])]
    tail = f"\n{n_none} other pairs do not cross within the measured lengths (or 4x beyond).\n" if n_none else ""
    return markdown_table(out) + tail + (
        "\nThe interval runs from where one curve stops being clearly faster (its p90 below the other's "
        "p10) to where the other clearly is; for a crossing of fits, from the slopes' 95% CIs. *Not resolved*: "
        "the bands overlap at every measured length on one side, the curves cross more than once, or the "
        "fits are not resolved or their slopes' CIs overlap.\n")


def _failed_section(df: pd.DataFrame) -> str:
    failed = df[df["status"] != "ok"]
    cols = [c for c in ("arch", "backend", "mode", "task", "seq_len", "eval_seq_len", "seed", "status", "reason")
            if c in failed.columns and (c in ("arch", "status", "reason") or failed[c].notna().any())]
    table = markdown_table(failed[cols].head(MAX_FAILED_ROWS))
    more = len(failed) - MAX_FAILED_ROWS
    return table + (f"\n… and {more} more.\n" if more > 0 else "")


def seed_cells(values: pd.Series, by: Sequence[str]) -> pd.Series:
    """One cell per group of ``by``: "mean ± h (n=k)" over seeds, h the half-width of the
    95% Student-t interval (std / sqrt(k) x t(0.975, k-1)); a single seed prints its value.

    With three seeds t = 4.30, so the interval is wide whenever the seeds disagree: that
    is the honest reading of a 3-seed study, not a formatting choice."""
    stats = values.groupby(level=list(by)).agg(["mean", "std", "count"])

    def cell(m: float, s: float, n: int) -> str:
        if n < 2:
            return f"{m:.3f}"
        half = t_quantile_975(n - 1) * s / math.sqrt(n)
        return f"{m:.3f} ± {half:.3f} (n={n})"

    return pd.Series([cell(*row) for row in stats.itertuples(index=False, name=None)], index=stats.index)


def _distance_section(fixed: pd.DataFrame) -> str:
    """Accuracy by trigger distance (columns), one row per curve and evaluation length."""
    ok = fixed[fixed["status"] == "ok"]
    if ok.empty or "accuracy" not in ok.columns:
        return "_(no successful fixed-distance rows)_\n"
    ok = ok.assign(arch=series_names(ok), eval_seq_len=pd.to_numeric(ok["eval_seq_len"]),
                   trigger_distance=pd.to_numeric(ok["trigger_distance"]))
    keys = ["arch", "eval_seq_len", "trigger_distance"]
    table = seed_cells(ok.set_index(keys)["accuracy"], keys).unstack("trigger_distance")
    table.columns = [f"d={format_length(c)}" for c in table.columns]
    notes = training_notes(ok)
    table = table.reset_index().assign(eval_seq_len=lambda t: t["eval_seq_len"].map(format_length),
                                       arch=lambda t: _marked(t["arch"], notes))
    return f"### accuracy by trigger distance (mean ± 95% CI over seeds)\n\n{markdown_table(table)}{_footnote(notes)}"


def _extrapolation_section(ext: pd.DataFrame) -> str:
    ext = ext.assign(registry_arch=registry_names(ext), arch=series_names(ext),
                     eval_seq_len=pd.to_numeric(ext["eval_seq_len"]))
    if several_budgets(ext):  # runs at different budgets are rows of their own, never "seeds"
        ext = ext.assign(arch=ext["arch"] + " @ " + training_budget(ext).map(lambda b: f"{b / 1e6:.3f}M tokens"))
    parts = []
    for title, rows in extrapolation_groups(ext[ext["status"] == "ok"]):
        train = set(pd.to_numeric(rows.get("train_seq_len", pd.Series(dtype=float)), errors="coerce").dropna())
        for metric in EXTRAPOLATION_METRICS:
            if metric not in rows.columns or rows[metric].notna().sum() == 0:
                continue
            keys = ["arch", "eval_seq_len"]
            table = seed_cells(rows.set_index(keys)[metric].dropna(), keys).unstack("eval_seq_len")
            table.columns = [f"{format_length(c)} (train)" if c in train else format_length(c)
                             for c in table.columns]
            notes, arch_of = training_notes(rows), _arch_of(rows)
            table["conformance"] = [coverage_brief(arch_of.get(a, a)) for a in table.index]
            table.index = pd.Index(_marked(table.index, notes), name="arch")
            heading = f"{title}: {metric}" if title else metric
            parts.append(f"### {heading} (mean ± 95% CI over seeds)\n\n{markdown_table(table.reset_index())}"
                         f"{_footnote(notes)}")
    return "\n".join(parts) or "_(no successful extrapolation rows)_\n"


def write_report(df: pd.DataFrame, out_dir: str | Path, figures: Sequence[Path] = ()) -> Path:
    """Write ``out_dir/report.md`` for the rows in ``df``; link the PNGs among ``figures``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = df.reset_index(drop=True)
    cost, ext = split_kinds(df)
    links = [f"![{p.stem}]({Path(os.path.relpath(p, out)).as_posix()})" for p in figures if p.suffix == ".png"]
    sections = ["# archbench report\n", _provenance(df), "## Conformance\n", _conformance_section(df), "## Figures\n", "\n\n".join(links) + "\n" if links else
                "_(none)_\n", "## Status counts\n", _status_section(df)]
    if not cost.empty:
        sections += ["## Scaling exponents (log-log fit over the longest lengths)\n", _exponent_section(cost),
                     "## Crossover lengths (time per call)\n", _crossover_section(cost)]
    sections += ["## Failed points\n", _failed_section(df)]
    by_length, fixed_distance = split_distance_rows(ext)
    if not by_length.empty:
        sections += ["## Extrapolation (train short, test long)\n", _extrapolation_section(by_length)]
    if not fixed_distance.empty:
        sections += ["## Accuracy by trigger distance (eval.trigger_distances)\n", _distance_section(fixed_distance)]
    return atomic_write(out / "report.md", "\n".join(sections))
