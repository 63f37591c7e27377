"""What a curve is, and how it is named: shared by fit, plot and report (which import
this module and never each other in a circle).

* ``SERIES_KEYS`` - the columns that identify one curve; ``by_series`` / ``curve_labels`` /
  ``series_names`` - the curve each row belongs to;
* ``split_kinds`` - cost rows vs extrapolation rows; ``extrapolation_groups``;
* ``training_budget`` / ``several_budgets`` / ``largest_budget`` - runs of one curve trained
  on different token budgets (a sweep over ``train.steps``) are never averaged as seeds;
* ``Y_LABELS`` / ``X_LABEL`` / ``EXTRAPOLATION_METRICS`` and the axis formatters;
* ``training_flags`` / ``training_notes`` - which rows come from a model whose training
  did not finish or did not converge, and why (marked in every table, figure and summary).
"""
from __future__ import annotations

import math

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


def registry_names(df: pd.DataFrame) -> pd.Series:
    """Each row's registry architecture: ``registry_arch`` once a curve name replaced
    ``arch`` (``by_series``), else ``arch`` itself."""
    return (df["registry_arch"] if "registry_arch" in df.columns else df["arch"]).astype(str)


def by_series(df: pd.DataFrame) -> pd.DataFrame:
    """Rows keyed by the curve they belong to: ``arch`` becomes the ``label`` where set
    (an arch config such as ``transformer_math``), and within a labelled curve the
    backends it used are joined ("blocked+sdpa" when an ``auto`` backend switched path
    with length) so one configuration stays one curve, honestly labelled."""
    if "label" not in df.columns:
        return df
    labelled = df["label"].notna()
    # the registry's name stays beside the curve's (what conformance checked is per arch)
    out = df.assign(registry_arch=registry_names(df), arch=df["label"].where(labelled, df["arch"]).astype(str))
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


# ---------------------------------------------------------------- unfinished training

# How tables and the terminal summary mark a curve with such rows (figures use a marker).
UNFINISHED = "†"


def _int(v: object) -> int | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) or pd.isna(v) else int(v)


def _training_flag(row: pd.Series) -> str:
    """'' for a model trained to the end or to its target; else why not, with the steps
    done of those planned and the final training loss."""
    status, stop = row.get("train_status"), row.get("train_stop_reason")
    steps, budget = _int(row.get("train_steps")), _int(row.get("train_steps_budget"))
    target, loss = row.get("train_target_acc"), row.get("train_loss")
    done = f"{steps:,} of {budget:,} steps" if steps is not None and budget is not None else \
        f"{steps:,} steps" if steps is not None else "an unknown number of steps"
    if isinstance(status, str) and status not in ("", "ok"):
        why = f"training {status} after {done}"
    elif stop == "time budget":
        why = f"stopped by its time budget after {done}"
    elif stop == "target accuracy":
        return ""
    elif steps is not None and budget is not None and steps < budget:
        why = f"stopped after {done}" + (f" ({stop})" if isinstance(stop, str) and stop else "")
    elif target is not None and not pd.isna(target) and steps is not None:
        why = f"did not reach its target accuracy {float(target):g} in {done}"
    else:
        return ""
    return why + (f" (final loss {float(loss):.3g})" if loss is not None and not pd.isna(loss) else "")


def training_flags(ext: pd.DataFrame) -> pd.Series:
    """Per row: "" when its model's training finished (all planned steps, or stopped at its
    target accuracy) and, if a target was set, reached it; else why not, e.g. "stopped by
    its time budget after 31 of 1,500 steps (final loss 2.77)". Rows without training
    columns (cost rows, older results) are never flagged."""
    if ext.empty or not {"train_steps", "train_stop_reason"} & set(ext.columns):
        return pd.Series("", index=ext.index, dtype=object)
    return ext.apply(_training_flag, axis=1).astype(object)


def training_notes(ext: pd.DataFrame) -> dict[str, str]:
    """{curve name: "seed 0: stopped by its time budget after ...; seed 2: ..."} for the
    curves with flagged rows (one note per training run, not per evaluation length)."""
    flags = training_flags(ext)
    flagged = ext[flags != ""].assign(_flag=flags[flags != ""], _series=series_names(ext[flags != ""]))
    notes = {}
    for name, rows in flagged.groupby("_series", sort=True):
        seeds = rows.drop_duplicates([c for c in ("seed", "_flag") if c in rows.columns])
        notes[str(name)] = "; ".join(
            (f"seed {_int(r['seed'])}: " if "seed" in r and _int(r["seed"]) is not None else "") + r["_flag"]
            for _, r in seeds.iterrows())
    return notes
