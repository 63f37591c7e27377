"""The Mamba paper's Table 2 beside ours: report.md and a figure from the committed rows.

    python scripts/table2_report.py [results/cpu/extrapolation/table2]

Reads result files only (never runs a model): the paper's numbers (paper_table11.csv), our
rows (paper_protocol/, harness_protocol/: any run of experiment table2_paper,
table2_harness or table2_others) and the plateau-escape runs (escape/). Writes, into the
folder, ``report.md`` - the tables with every cell's source, the escape steps with the fit
that predicts d = 249 - and ``figures/table2.png``.

A cell is the mean accuracy (%) over seeds with the seed count; a length no seed could run
shows the rows' status (oom / timeout / skipped); a cell where some seeds failed says so.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from harness.report.fit import t_quantile_975  # noqa: E402
from harness.report.markdown import markdown_table  # noqa: E402
from harness.results import load_rows  # noqa: E402

LENGTHS = [2 ** k for k in range(6, 21)]
# (folder, row filter, label): ours, in the order the table prints them
AXES = {"start": "trigger at the start (d = L - 1, the paper's reproduction's evaluation)",
        "length": "the training task's placement at every length"}


def col(n: int) -> str:
    return f"2^{int(math.log2(n))}"


def paper_rows(folder: Path) -> pd.DataFrame:
    t = pd.read_csv(folder / "paper_table11.csv", comment="#", dtype=str)
    t = t.set_index("model").drop(columns="params")
    t.columns = [col(int(c)) for c in t.columns]
    return t.map(lambda v: "100.0" if v == "ok" else v).rename(index=lambda m: f"paper: {m}")


def our_rows(folder: Path) -> pd.DataFrame:
    """Every evaluation row of the Table 2 runs, with the axis it belongs to."""
    frames = []
    for sub in ("paper_protocol", "harness_protocol"):
        if (folder / sub).exists():
            rows = load_rows(folder / sub)
            rows = rows[rows["experiment"].astype(str).str.startswith("table2")]
            frames.append(rows.assign(protocol=sub.replace("_", " ")))
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True)
    start = rows["trigger_distance"].notna() & (rows["trigger_distance"] == rows["eval_seq_len"] - 1)
    rows["axis"] = np.where(start, "start", np.where(rows["trigger_distance"].isna(), "length", "other"))
    return rows[rows["axis"] != "other"]


def cell(group: pd.DataFrame) -> str:
    ok = group[group["status"] == "ok"]
    if ok.empty:
        return "/".join(sorted(set(group["status"])))
    text = f"{100 * ok['accuracy'].mean():.1f}"
    if len(ok) > 1:
        text += f" ({len(ok)})"
    if len(ok) < len(group):
        text += f" [{len(group) - len(ok)} {'/'.join(sorted(set(group.loc[group.status != 'ok', 'status'])))}]"
    return text


def table(rows: pd.DataFrame, axis: str) -> pd.DataFrame:
    part = rows[rows["axis"] == axis]
    if part.empty:
        return pd.DataFrame()
    part = part.assign(row=part["label"] + ", " + part["protocol"])
    out = part.groupby(["row", "eval_seq_len"]).apply(cell, include_groups=False).unstack()
    out.columns = [col(int(c)) for c in out.columns]
    return out.reindex(columns=[col(n) for n in LENGTHS]).fillna("")


def sources(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.assign(row=rows["label"] + ", " + rows["protocol"])
    return rows.groupby("row").agg(
        experiment=("experiment", lambda s: ", ".join(sorted(set(map(str, s))))),
        seeds=("seed", lambda s: ", ".join(map(str, sorted(set(s))))),
        train_steps=("train_steps", lambda s: ", ".join(map(str, sorted(set(s))))),
        sequences_per_point=("n_sequences", lambda s: ", ".join(map(str, sorted(set(s))))),
        commit=("env.git_commit", lambda s: ", ".join(sorted({str(c)[:7] for c in s}))),
        cpu=("env.cpu", lambda s: ", ".join(sorted(set(map(str, s))))))


def escape(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Escape step per (shell, d, seed) and a fit log(step) = a + b log(d) per shell, with the
    prediction at d = 249 and its 95% interval (t over the fit's residuals)."""
    if not (folder / "escape").exists():
        return pd.DataFrame(), pd.DataFrame()
    rows = load_rows(folder / "escape")
    runs = rows.drop_duplicates(["label", "train_trigger_distance", "seed"])
    runs = runs.assign(shell=np.where(runs["label"].str.contains("paper_shell"), "paper shell", "ours"),
                       escaped=runs["train_stop_reason"] == "target loss")
    steps = runs.pivot_table(index=["shell", "train_trigger_distance"], columns="seed",
                             values="train_steps", aggfunc="first")
    fits = []
    for shell, part in runs[runs["escaped"]].groupby("shell"):
        x, y = np.log(part["train_trigger_distance"].astype(float)), np.log(part["train_steps"].astype(float))
        if len(part) < 3 or x.nunique() < 2:
            continue
        b, a = np.polyfit(x, y, 1)
        resid = y - (a + b * x)
        dof = len(part) - 2
        s = math.sqrt((resid ** 2).sum() / dof) if dof else float("nan")
        x0 = math.log(249)
        se = s * math.sqrt(1 / len(part) + (x0 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
        t = t_quantile_975(dof)
        fits.append({"shell": shell, "exponent b (steps ~ d^b)": b, "runs": len(part),
                     "predicted steps at d=249": math.exp(a + b * x0),
                     "95% interval": f"{math.exp(a + b * x0 - t * se):.0f} .. {math.exp(a + b * x0 + t * se):.0f}",
                     "censored runs (no escape by the cap)": int((~runs[runs.shell == shell]["escaped"]).sum())})
    return steps, pd.DataFrame(fits)


def figure(rows: pd.DataFrame, paper: pd.DataFrame, out: Path) -> Path:
    """Accuracy by test length: ours (trigger at the start, mean over seeds) beside the paper."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for name, values in paper.iterrows():
        ys = [100.0 if v == "100.0" else pd.to_numeric(v, errors="coerce") for v in values]
        ax.plot(LENGTHS, ys, ls="--", lw=1, alpha=0.6, label=name)
    start = rows[(rows["axis"] == "start") & (rows["status"] == "ok")]
    for name, part in start.assign(row=start["label"] + ", " + start["protocol"]).groupby("row"):
        mean = part.groupby("eval_seq_len")["accuracy"].mean() * 100
        ax.plot(mean.index, mean.values, marker="o", lw=2, label=f"ours: {name}")
    ax.axvline(256, color="grey", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="test length (trigger at the start)", ylabel="accuracy (%)", ylim=(-2, 102),
           title="Induction heads, trained at 256: the Mamba paper's Table 2 beside ours (CPU)")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    folder = Path((argv if argv is not None else sys.argv[1:] or ["results/cpu/extrapolation/table2"])[0])
    paper, rows = paper_rows(folder), our_rows(folder)
    parts = ["# Table 2: induction heads, trained at 256, tested at 2^6 .. 2^20",
             "Generated by `python scripts/table2_report.py` from the result files beside it; "
             "README.md says what the runs are and what they show.",
             "## The paper (Gu & Dao 2023, Table 11)", markdown_table(paper.reset_index())]
    for axis, meaning in AXES.items():
        t = table(rows, axis) if not rows.empty else pd.DataFrame()
        if not t.empty:
            parts += [f"## Ours: {meaning}",
                      "Mean accuracy (%) over seeds (seed count in brackets when > 1); a status "
                      "where no seed could run the length.", markdown_table(t.reset_index())]
    if not rows.empty:
        parts += ["## Sources", markdown_table(sources(rows).reset_index())]
        figure(rows, paper, folder / "figures" / "table2.png")
        parts += ["![Table 2](figures/table2.png)"]
    steps, fits = escape(folder)
    if not steps.empty:
        parts += ["## Escape from the plateau (paper protocol, loss < 1.0 over 100 steps)",
                  "Steps to escape per model shell, trigger distance d (L = d + 7) and seed; "
                  "a run still on the plateau at the cap shows the cap.",
                  markdown_table(steps.reset_index())]
        if not fits.empty:
            parts += ["Fit log(steps) = a + b log(d) per shell, predicting d = 249:",
                      markdown_table(fits)]
    (folder / "report.md").write_text("\n\n".join(parts) + "\n")
    print(f"wrote {folder / 'report.md'}")


if __name__ == "__main__":
    main()
