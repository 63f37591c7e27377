"""The result row store: schema, atomic per-point files, resume, loading.

Schema
------
One row per measurement (tidy). Core columns, in this order, always present after
``load_rows`` (other tools read them by these exact names):

=============== ==============================================================
arch            registry name of the architecture
backend         code path actually used: ``archs.backends`` words ("ref", "chunked", "fused",
                "fused:<kernels>", "flash_attn"), "+"-joined for a hybrid ("chunked+fused")
params          number of parameters
seq_len         sequence length of the measured call (context length for decode)
batch           batch size
dtype           "float32", "bfloat16", ...
mode            what was measured ("forward", "train", "decode", "eval", ...)
status          one of STATUSES: ok, oom, error, timeout, skipped, diverged
reason          why a point is not ok (empty when ok)
time_ms         median time per call, milliseconds
time_ms_p10     10th percentile, milliseconds
time_ms_p90     90th percentile, milliseconds
tokens_per_s    batch * tokens processed per call / time
peak_mem_bytes  extra bytes allocated at the call's peak (harness.counters.peak_memory)
flops           FLOPs of one call as counted by harness.counters.count_flops
state_bytes     decode state size (KV cache / recurrent state), bytes
device          device name (GPU model or CPU model)
=============== ==============================================================

Meta columns (filled by ``make_row``): ``experiment``, ``point_key``, ``config_hash``,
``timestamp`` (UTC ISO 8601), ``arch_kwargs`` (sorted JSON) and each kwarg as
``arch.<key>``, and the environment fingerprint as ``env.<key>`` (harness.env:
``env.torch``, ``env.git_commit``, ``env.git_dirty``, ``env.hostname`` ...).
Any other column is free: ``flops_analytic``, ``achieved_flops_per_s``, ``frac_peak``,
``task``, ``train_seq_len``, ``eval_seq_len``, ``accuracy``, ``loss``, ``bpb``, ``seed``
... Values must be JSON scalars; non-finite floats are stored as null. Columns other
tools give a meaning to:

* ``eval_seq_len`` marks a row as an extrapolation result (plot/report split on it);
  ``train_seq_len``, ``task``, ``seed`` and the metrics ``accuracy`` / ``loss`` /
  ``bpb`` / ``perplexity`` go with it. Such rows use ``mode="eval"``.
* ``label`` (optional) names the curve instead of ``arch`` in figures and tables, for
  variants of one architecture (e.g. ``attention+alibi``).
* ``Timing.as_row()``, ``MemoryPeak.as_row()`` and ``FlopCount.as_row()``
  (harness.timing, harness.counters) fill ``time_ms``/``time_ms_p10``/``time_ms_p90`` plus
  ``time_iqr_ms``, ``n_repeats``, ``timing_method``; ``peak_mem_bytes`` plus
  ``mem_baseline_bytes``, ``mem_method``; ``flops`` plus ``flops_complete``,
  ``flops_uncounted``.

Files
-----
``ResultStore(dir).write(rows, key)`` writes ``<dir>/<key>.jsonl`` atomically: a
temporary ``.<key>.jsonl.<host>.<pid>.tmp`` in the same directory, fsync, then
``os.replace``. Parallel jobs (Hydra multirun, submitit, Ray) each write their own
files and never append to a shared one; a writer killed mid-write leaves only a
dot-prefixed temp file, which readers ignore and ``clean_temp`` removes
(``harness/atomic.py``: the writer, the group writer, disk-full messages).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import sys
import logging
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

# The one atomic writer lives in harness/atomic.py; it is imported from here as it always was.
from harness.atomic import (DiskFullError, _host, atomic_write, atomic_write_group,  # noqa: F401
                            clean_stale_temps, finish_group, group_lock, reporting_disk_full)

log = logging.getLogger(__name__)

CORE_COLUMNS: tuple[str, ...] = (
    "arch", "backend", "params", "seq_len", "batch", "dtype", "mode", "status", "reason",
    "time_ms", "time_ms_p10", "time_ms_p90", "tokens_per_s", "peak_mem_bytes", "flops",
    "state_bytes", "device",
)
META_COLUMNS: tuple[str, ...] = ("experiment", "point_key", "config_hash", "timestamp", "arch_kwargs")
STATUSES: tuple[str, ...] = ("ok", "oom", "error", "timeout", "skipped", "diverged")
# The type and range of every column other tools compute with, checked on every row written
# and read (validate_row): a "64k" seq_len or a "fast" time_ms is refused, never turned into
# NaN inside an ok row. (kind, lowest, highest); null (not measured) is always allowed.
_TEXT, _INT, _NUMBER, _FLAG = "text", "integer", "number", "true/false"
COLUMN_TYPES: dict[str, tuple[str, float | None, float | None]] = {
    **{c: (_TEXT, None, None) for c in ("arch", "backend", "dtype", "mode", "reason", "device", "label",
                                        "task", "experiment", "point_key", "config_hash", "timestamp",
                                        "train_status")},
    **{c: (_INT, 0, None) for c in ("params", "seq_len", "peak_mem_bytes", "flops", "state_bytes",
                                    "active_params", "flops_analytic", "n_scored", "n_sequences",
                                    "train_steps", "train_tokens")},
    **{c: (_INT, 1, None) for c in ("batch", "eval_seq_len", "train_seq_len", "trigger_distance",
                                    "micro_batch", "d_model", "n_layers")},
    "seed": (_INT, None, None),
    **{c: (_NUMBER, 0, None) for c in ("time_ms", "time_ms_p10", "time_ms_p90", "tokens_per_s", "wall_s", "first_call_ms",
                                       "train_wall_s", "loss", "train_loss", "bpb")},
    "perplexity": (_NUMBER, 1, None),
    **{c: (_NUMBER, 0, 1) for c in ("accuracy", "seq_acc")},
    "early_stopped": (_FLAG, None, None),
}
# Integer-valued core columns: loaded as nullable Int64 so a missing value stays missing.
INT_COLUMNS: tuple[str, ...] = tuple(c for c in CORE_COLUMNS if COLUMN_TYPES.get(c, ("",))[0] == _INT)
FLOAT_COLUMNS: tuple[str, ...] = tuple(c for c in CORE_COLUMNS if COLUMN_TYPES.get(c, ("",))[0] == _NUMBER)

SUFFIX = ".jsonl"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+,-]{0,199}$")


# ---------------------------------------------------------------- hashing and keys


def _jsonable(value: Any) -> Any:
    """Plain JSON value for numpy scalars, torch dtypes/devices, paths, tuples, NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())  # numpy / torch scalars
    return str(value)  # torch.dtype, torch.device, Path, enums ...


def config_hash(settings: Mapping[str, Any], length: int = 12) -> str:
    """Stable short hash of the settings that affect a measurement (sorted-key JSON, sha256).

    Key order, tuples vs lists and numpy vs Python scalars do not change it."""
    text = json.dumps(_jsonable(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def point_key(settings: Mapping[str, Any], prefix: str = "") -> str:
    """A filename-safe key for one point: ``<prefix>-<config_hash>`` (prefix sanitised),
    e.g. ``point_key(cfg, "mamba-L4096-train")`` -> ``mamba-L4096-train-3f2a9c0d1e4b``."""
    clean = _sanitise(prefix)
    # Two prefixes that sanitise alike (mämba, mömba) must not share keys: then the raw one is
    # hashed too. A prefix that needed no change keeps its hash (existing keys stay valid).
    h = config_hash(settings if clean == prefix else {"settings": settings, "prefix": prefix})
    return f"{clean}-{h}" if clean else h


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+,-]+", "_", text).strip("._-")


def safe_label(text: str) -> str:
    """``text`` as a file-name part that stays inside its folder: every run of characters
    outside ``A-Za-z0-9._=+,-`` becomes ``_``, leading/trailing ``._-`` go, and when that
    changed anything a short hash of ``text`` is appended - so two labels that sanitise alike
    (``mämba``, ``mömba``; ``../x``, ``x``) never share a key or a checkpoint. A clean text is
    kept as it is (existing keys stay valid)."""
    clean = _sanitise(text)
    if clean == text:
        return clean
    return f"{clean or 'x'}_{hashlib.sha256(text.encode()).hexdigest()[:8]}" if text else ""


def check_key(key: str) -> str:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(
            f"result key {key!r} is not a safe file name: use letters, digits and ._=+,- "
            "(at most 200 characters, not starting with '.'); point_key() builds one"
        )
    return key


# ---------------------------------------------------------------- rows


def env_columns(env: Mapping[str, Any]) -> dict[str, Any]:
    """The environment fingerprint as ``env.<key>`` columns."""
    return {f"env.{k}": _jsonable(v) for k, v in env.items()}


def make_row(
    *,
    status: str = "ok",
    reason: str = "",
    arch_kwargs: Mapping[str, Any] | None = None,
    env: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One validated result row: core columns first (missing ones None), then meta,
    then ``fields`` beyond the core. ``settings`` (what affects the measurement) gives
    ``config_hash``; ``env`` (default ``harness.env.environment()``) the ``env.*`` columns."""
    if env is None:
        from harness.env import environment

        env = environment()
    row: dict[str, Any] = {c: None for c in CORE_COLUMNS}
    row.update(status=status, reason=reason or "")
    row.update(fields)
    if settings is not None:
        row.setdefault("config_hash", config_hash(settings))
    if arch_kwargs is not None:
        row["arch_kwargs"] = json.dumps(_jsonable(arch_kwargs), sort_keys=True)
        for k, v in arch_kwargs.items():
            v = _jsonable(v)
            row[f"arch.{k}"] = json.dumps(v) if isinstance(v, (list, dict)) else v
    row.setdefault("timestamp", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    row.update(env_columns(env))
    validate_row(row)
    return {k: _jsonable(v) for k, v in row.items()}


def store_case_row(store: "ResultStore", case: Mapping[str, Any], *, identity: Iterable[str],
                   name: Iterable[str], experiment: str, **columns: Any) -> dict[str, Any]:
    """One measured benchmark case as a validated row in ``store`` (one file per point, the
    store's atomic writer), so collect/plot/report read it like any sweep's rows.

    ``case`` is flat: ``status``, optional ``reason``, and everything measured or recorded.
    The ``identity`` keys of ``case`` identify it: their values are the row's ``settings``
    (``config_hash``) and the point key, prefixed by the ``name`` keys' values joined by
    ``-``. ``columns`` are core columns the case names otherwise (``arch=case["impl"]``...).
    Returns the row written."""
    fields = dict(case)
    status, reason = fields.pop("status"), fields.pop("reason", "")
    ident = {k: fields.get(k) for k in identity}
    key = point_key(ident, "-".join(str(fields[k]) for k in name))
    row = make_row(status=status, reason=reason, **columns, experiment=experiment, point_key=key,
                   settings=ident, **fields)
    store.write(row, key)
    return row


def validate_row(row: Mapping[str, Any], stored: bool = False) -> None:
    """Raise ValueError naming the problem if a row breaks the schema. ``stored``: the row
    was read from a file, so it must also carry every core column (``make_row`` writes them
    all, None where not measured) and its ``point_key``."""
    if stored:
        missing = [c for c in CORE_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"row lacks core column(s) {missing}; rows are written by harness.results.make_row")
    status = row.get("status")
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    if status != "ok" and not row.get("reason"):
        raise ValueError(f"a row with status={status!r} needs a reason (e.g. the exception message)")
    for col in ("arch", "mode"):
        if not row.get(col):
            raise ValueError(f"row is missing {col!r}; every row names the architecture and what was measured")
    for col, (kind, low, high) in COLUMN_TYPES.items():
        if row.get(col) is not None:
            _check_value(col, _jsonable(row[col]), kind, low, high)


def _check_value(col: str, value: Any, kind: str, low: float | None, high: float | None) -> None:
    if value is None:
        return  # a non-finite float, stored as null
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    fits = {_TEXT: isinstance(value, str), _FLAG: isinstance(value, bool),
            _NUMBER: number, _INT: number and float(value).is_integer()}[kind]
    if not fits:
        raise ValueError(f"column {col!r} must be {'an' if kind == _INT else 'a'} {kind} (or null), "
                         f"got {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ValueError(f"column {col!r} must be {bounds}, got {value!r}")


# ---------------------------------------------------------------- the store


class ResultStore:
    """Per-point result files under one directory (see the module doc).

    ``has(key)`` / ``completed_keys()`` look recursively, so points written by earlier
    runs into subfolders (Hydra multirun ``0/``, ``1/`` ...) also count for resume.
    """

    def __init__(self, results_dir: str | os.PathLike, *, clean: bool = True) -> None:
        if isinstance(results_dir, str) and not results_dir.strip():
            raise ValueError("results_dir is empty; give the folder for the point files (results_dir=...)")
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._deeper: dict[str, list[Path]] | None = None  # point files in subfolders, by name
        if clean:
            self.clean_temp()

    def path_for(self, key: str) -> Path:
        return self.dir / f"{check_key(key)}{SUFFIX}"

    def write(self, rows: Mapping[str, Any] | Iterable[Mapping[str, Any]], key: str) -> Path:
        """Atomically (re)write the file for ``key`` with ``rows`` (one dict or several)."""
        rows = [rows] if isinstance(rows, Mapping) else list(rows)
        if not rows:
            raise ValueError(f"no rows to write for key {key!r}; write a status=skipped row instead")
        text = "".join(json.dumps(_jsonable({**r, "point_key": r.get("point_key") or key}),
                                  allow_nan=False) + "\n" for r in rows)
        path = atomic_write(self.path_for(key), text)
        self._supersede_copies(path)
        return path

    def _supersede_copies(self, path: Path) -> None:
        """Move older files of the same point in subfolders (an earlier run's Hydra job
        folder; the one cut short by a signal) aside as ``<name>.replaced``: one file per
        point, so a re-measured or ``force``-d point is never in the table twice."""
        if self._deeper is None:
            self._deeper = {}
            for p in point_files(self.dir):
                if p.parent != self.dir:
                    self._deeper.setdefault(p.name, []).append(p)
        for old in self._deeper.pop(path.name, []):
            moved = quarantine(old, ".replaced")
            log.info("%s replaces %s (moved to %s)", path, old, moved.name)

    def has_valid(self, key: str) -> bool:
        """True if ``key`` is done: a file for it exists below the directory and every
        row in it is valid and final. A file that does not parse to valid rows is moved
        aside as ``<name>.corrupt`` (named in the log) and the point counts as not done;
        a file whose rows were ``interrupted`` by a stop signal is not final either."""
        direct = self.path_for(key)
        paths = [direct] if direct.exists() else [p for p in self.dir.rglob(direct.name)
                                                  if not p.name.startswith(".")]
        done = False
        for path in paths:
            rows, problems = read_point_file(path)
            if problems:
                moved = quarantine(path)
                log.warning("corrupt result file %s (%s); moved to %s, the point will be measured again",
                            path, problems[0], moved.name)
                warnings.warn(f"corrupt result file {path} ({problems[0]}); moved to {moved.name}",
                              RuntimeWarning, stacklevel=2)
            elif rows and not any(r.get("interrupted") for r in rows):
                done = True
        return done

    def has(self, key: str, statuses: Iterable[str] | None = None) -> bool:
        """True if a file for ``key`` exists (anywhere below the directory) and, when
        ``statuses`` is given, its rows all have one of them (e.g. retry errors only)."""
        direct = self.path_for(key)
        paths = [direct] if direct.exists() else list(self.dir.rglob(direct.name))
        paths = [p for p in paths if not p.name.startswith(".")]
        if statuses is None or not paths:
            return bool(paths)
        wanted = set(statuses)
        return any(all(r.get("status") in wanted for r in _read_file(p)) for p in paths)

    def completed_keys(self, statuses: Iterable[str] | None = None) -> set[str]:
        """Keys with a result file; with ``statuses``, only those whose rows all have one."""
        wanted = None if statuses is None else set(statuses)
        keys = set()
        for path in point_files(self.dir):
            if wanted is None or all(r.get("status") in wanted for r in _read_file(path)):
                keys.add(path.name[: -len(SUFFIX)])
        return keys

    def clean_temp(self, max_age_s: float = 3600.0) -> int:
        """Remove temp files left by killed writers; return how many.

        A temp file is removed if its writer ran on this host and is no longer alive,
        or if it is older than ``max_age_s`` (a write takes milliseconds; this covers
        writers on other hosts of a shared filesystem, whose pids we cannot check)."""
        return clean_stale_temps(self.dir, max_age_s)


# ---------------------------------------------------------------- loading


def point_files(results_dir: str | os.PathLike) -> list[Path]:
    """All finished point files below ``results_dir`` (temp and hidden files skipped), sorted."""
    root = Path(results_dir)
    return sorted(
        p for p in root.rglob(f"*{SUFFIX}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def quarantine(path: Path, suffix: str = ".corrupt") -> Path:
    """Move a point file aside as ``<name>.corrupt`` (``.corrupt.1`` ... if taken), or with
    another ``suffix``; readers of point files no longer see it."""
    target = path.with_name(path.name + suffix)
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{suffix}.{n}")
    try:
        os.replace(path, target)
    except FileNotFoundError:
        pass  # another process moved it first
    return target


def read_point_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(valid rows, problems) of one point file; each problem names ``path:line`` and
    what is wrong. An empty file, bytes that are not UTF-8 text, a line that is not a
    JSON object, or a row that breaks the schema (``validate_row``) is a problem."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    except FileNotFoundError:
        return [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{lineno}: not JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{lineno}: a {type(row).__name__}, not a JSON object (one row per line)")
            continue
        try:
            validate_row(row, stored=True)
        except ValueError as exc:
            problems.append(f"{path}:{lineno}: {exc}")
            continue
        rows.append(row)
    if not rows and not problems:
        problems.append(f"{path}: empty (a writer was cut off?)")
    if not text.endswith("\n") and text.strip() and not problems:
        problems.append(f"{path}: last line not terminated (truncated)")
    return rows, problems


def _read_file(path: Path) -> list[dict[str, Any]]:
    rows, problems = read_point_file(path)
    for problem in problems:
        warnings.warn(f"rejected {problem}", RuntimeWarning, stacklevel=3)
    return rows


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Core columns first (added empty if missing), then meta, then the rest sorted
    with ``arch.*`` and ``env.*`` last."""
    df = df.copy()
    for col in CORE_COLUMNS:
        if col not in df.columns:
            df[col] = None
    head = list(CORE_COLUMNS) + [c for c in META_COLUMNS if c in df.columns]
    rest = [c for c in df.columns if c not in head]
    group = lambda c: (2 if c.startswith("env.") else 1 if c.startswith("arch.") else 0, c)  # noqa: E731
    return df[head + sorted(rest, key=group)]


def _coerce_types(df: pd.DataFrame) -> pd.DataFrame:
    for col in INT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64")
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df["reason"] = df["reason"].fillna("")
    return df


def load_rows(results_dir: str | os.PathLike, rejected: list[str] | None = None) -> pd.DataFrame:
    """Every row of every point file below ``results_dir``, as one tidy DataFrame.

    Reads recursively (Hydra multirun subfolders and submitit jobs sharing one
    results dir all merge), ignores temp files; every row is validated against the
    schema, and a rejected line or file is named (``path:line: why``) in a warning and
    appended to ``rejected`` when given - never merged. Columns are ordered with ``order_columns``; integer core columns are
    nullable Int64. An empty or missing directory gives an empty frame with the
    core columns."""
    root = Path(results_dir)
    if not root.exists():
        raise FileNotFoundError(f"results directory {root} does not exist")
    rows = []
    files = point_files(root)
    _warn_duplicates(files)
    for path in files:
        good, problems = read_point_file(path)
        rows.extend(good)
        for problem in problems:
            warnings.warn(f"rejected {problem}", RuntimeWarning, stacklevel=2)
        if rejected is not None:
            rejected.extend(problems)
    return _coerce_types(order_columns(pd.DataFrame.from_records(rows)))


def _warn_duplicates(files: list[Path]) -> None:
    """Warn about one point's file in several folders (written before ``ResultStore.write``
    moved older copies aside): its rows would be in the table more than once."""
    by_name: dict[str, list[Path]] = {}
    for path in files:
        by_name.setdefault(path.name, []).append(path)
    for name, paths in by_name.items():
        if len(paths) > 1:
            warnings.warn(f"point {name[:-len(SUFFIX)]} has {len(paths)} files ({', '.join(map(str, paths))}): "
                          f"its rows appear {len(paths)} times; keep one (the newest is the last measured)",
                          RuntimeWarning, stacklevel=3)


def load_rows_where(results_dir: str | os.PathLike, **equal: Any) -> pd.DataFrame:
    """``load_rows``, only the rows whose columns hold the values given (``label=...``),
    re-indexed from 0; an empty frame when there are no rows at all."""
    rows = load_rows(results_dir)
    if rows.empty:
        return rows
    mine = pd.Series(True, index=rows.index)
    for column, value in equal.items():
        mine &= rows[column] == value
    return rows[mine].reset_index(drop=True)


def load_rows_reporting(results_dir: str | os.PathLike, stream: Any = None) -> tuple[pd.DataFrame, list[str]]:
    """``load_rows`` for a command line: every rejected file or line is printed once to
    ``stream`` (default: stderr) as ``rejected PATH:LINE: why`` instead of as a warning.
    Returns the rows and the problems (empty when every row was good)."""
    rejected: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # named below, once each
        df = load_rows(results_dir, rejected)
    for problem in rejected:
        print(f"rejected {problem}", file=stream if stream is not None else sys.stderr)
    return df, rejected


def results_dir_cli(prog: str, description: str, out_help: str, argv: Any = None,
                    results_help: str = "directory of per-point result files (searched recursively)",
                    load: bool = True) -> tuple[argparse.Namespace, pd.DataFrame | None, list[str]]:
    """The start of every command that reads a results folder (collect, plot): parse
    ``RESULTS_DIR [--out OUT]`` (an argparse error if RESULTS_DIR is not a folder or OUT
    cannot be one), then, if ``load``, ``load_rows_reporting``. Returns the arguments, the
    rows and the rejected problems (None and [] without ``load``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("results_dir", help=results_help)
    parser.add_argument("--out", default=None, help=out_help)
    args = parser.parse_args(argv)
    if not Path(args.results_dir).is_dir():
        parser.error(f"{args.results_dir} is not a directory")
    if args.out is not None:
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            parser.error(f"--out {args.out}: a file is in the way; --out takes a folder (created if missing)")
        except OSError as exc:
            parser.error(f"--out {args.out} cannot be created ({exc.strerror}); choose a writable folder")
    if not load:
        return args, None, []
    rows, rejected = load_rows_reporting(args.results_dir)  # each rejected file:line on stderr
    return args, rows, rejected
