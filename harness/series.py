"""What a curve is, and how it is named: shared by fit, plot and report (which import
this module and never each other in a circle).

* ``SERIES_KEYS`` - the columns that identify one curve; ``by_series`` / ``curve_labels`` /
  ``series_names`` - the curve each row belongs to;
* ``split_kinds`` - cost rows vs extrapolation rows; ``extrapolation_groups``;
* ``training_budget`` / ``several_budgets`` / ``largest_budget`` - runs of one curve trained
  on different token budgets (a sweep over ``train.steps``) are never averaged as seeds;
* ``Y_LABELS`` / ``X_LABEL`` / ``EXTRAPOLATION_METRICS`` and the axis formatters.
"""
from __future__ import annotations

import pandas as pd

EXTRAPOLATION_METRICS: tuple[str, ...] = ("accuracy", "loss", "bpb", "perplexity")
# The columns that identify one curve: rows differing in any of them are never mixed
# into one fit (a ref and a fast backend of the same arch are two curves).
SERIES_KEYS: tuple[str, ...] = ("arch", "backend", "mode", "dtype", "batch", "device")

Y_LABELS = {
    "time_ms": "time per call (ms)",
    "peak_mem_bytes": "peak memory allocated",
    "tokens_per_s": "throughput (tokens/s)",
    "state_bytes": "decode state size",
    "accuracy": "accuracy",
    "loss": "loss (nats/token)",
    "bpb": "bits per byte",
    "perplexity": "perplexity",
}
X_LABEL = "sequence length (tokens; K = 1024)"


def series_names(df: pd.DataFrame) -> pd.Series:
    """The curve each row belongs to: the ``label`` column where set, else the arch."""
    names = df["arch"].astype(str)
    if "label" in df.columns:
        names = df["label"].where(df["label"].notna(), names).astype(str)
    return names


def by_series(df: pd.DataFrame) -> pd.DataFrame:
    """Rows keyed by the curve they belong to: ``arch`` becomes the ``label`` where set
    (an arch config such as ``transformer_math``), and within a labelled curve the
    backends it used are joined ("blocked+sdpa" when an ``auto`` backend switched path
    with length) so one configuration stays one curve, honestly labelled."""
    if "label" not in df.columns:
        return df
    labelled = df["label"].notna()
    out = df.assign(arch=df["label"].where(labelled, df["arch"]).astype(str))
    if "backend" in out.columns:
        joined = out.groupby("arch")["backend"].transform(
            lambda s: "+".join(sorted(set(s.dropna().astype(str)))))
        out["backend"] = joined.where(labelled, out["backend"])
    return out


def curve_labels(df: pd.DataFrame) -> pd.Series:
    """A label per row naming its curve: the arch, or ``arch[backend]`` when that arch
    appears with more than one backend."""
    if "backend" not in df.columns:
        return df["arch"].astype(str)
    n_backends = df.groupby("arch")["backend"].transform(lambda s: s.nunique(dropna=False))
    with_backend = df["arch"].astype(str) + "[" + df["backend"].astype(str) + "]"
    return with_backend.where(n_backends > 1, df["arch"].astype(str))


def split_kinds(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cost rows, extrapolation rows): extrapolation rows carry ``eval_seq_len``."""
    if "eval_seq_len" in df.columns:
        is_extrap = pd.to_numeric(df["eval_seq_len"], errors="coerce").notna()
    else:
        is_extrap = pd.Series(False, index=df.index)
    return df[~is_extrap & df["seq_len"].notna()], df[is_extrap]


def split_distance_rows(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of the length axis, rows at a fixed trigger distance): an evaluation with
    ``eval.trigger_distances`` writes both, and averaging them into one curve would mix
    "accuracy at length L" (trigger anywhere) with "accuracy at distance d"."""
    if "trigger_distance" not in df.columns:
        return df, df.iloc[0:0]
    fixed = pd.to_numeric(df["trigger_distance"], errors="coerce").notna()
    return df[~fixed], df[fixed]


def format_length(x: float, _pos: object = None) -> str:
    if x >= 2**20 and x % 2**20 == 0:
        return f"{int(x) // 2**20}M"
    if x >= 1024 and x % 1024 == 0:
        return f"{int(x) // 1024}K"
    return f"{x:g}"


def format_bytes(b: float, _pos: object = None) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= size:
            return f"{b / size:g} {unit}"
    return f"{b:g} B"


def extrapolation_groups(ext: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(title, rows) per task and training length: runs trained at different lengths
    are never averaged into one curve."""
    keys = [c for c in ("task", "train_seq_len") if c in ext.columns]
    if not keys:
        return [("", ext)]
    out = []
    for key, rows in ext.groupby(keys, dropna=False, sort=True):
        named = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        parts = [str(named["task"])] if pd.notna(named.get("task")) else []
        if pd.notna(named.get("train_seq_len")):
            parts.append(f"trained at {format_length(float(named['train_seq_len']))}")
        out.append((", ".join(parts), rows))
    return out


def training_budget(ext: pd.DataFrame) -> pd.Series:
    """The tokens each row's model was set to train on (steps x batch x length), so a run
    stopped early (time budget, target accuracy) keeps its budget; NaN for rows written
    before ``train_steps_budget`` was a column (their budget is unknown, not different)."""
    if "train_steps_budget" not in ext.columns or "train_batch_size" not in ext.columns:
        return pd.Series(float("nan"), index=ext.index)
    return pd.to_numeric(ext["train_steps_budget"], errors="coerce") \
        * pd.to_numeric(ext["train_batch_size"], errors="coerce") * pd.to_numeric(ext["train_seq_len"])


def several_budgets(ext: pd.DataFrame) -> bool:
    """Whether some curve was trained at more than one budget."""
    if ext.empty or "train_seq_len" not in ext.columns:
        return False
    budgets = training_budget(ext).groupby(series_names(ext).to_numpy()).nunique()
    return bool(budgets.max() > 1)


def largest_budget(ext: pd.DataFrame) -> pd.DataFrame:
    """Each curve's rows at its largest budget (all rows when no curve has several)."""
    if not several_budgets(ext):
        return ext
    budget = training_budget(ext)
    return ext[budget == budget.groupby(series_names(ext).to_numpy()).transform("max")]
