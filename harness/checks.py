"""Checks that run before any compute: unknown config keys, values, folders, memory caps.

* ``reject_unknown_keys`` - keys in a composed config that its schema does not have
  (Hydra lets ``+bench.seq_lenz=[999]`` through; this does not), with a suggestion;
  ``as_schema`` - that check, then the config as its schema's dataclass (each app's entry);
  ``merge_over`` - overrides merged over a dataclass instance, checked the same way.
* ``check_writable_dir`` / ``absolute_dir`` - a results/checkpoint folder that is a file or
  cannot be written is named before training or the first measurement, not after.
* ``validate_model`` / ``validate_bench`` / ``validate_eval`` / ``validate_figures`` - values
  of the schemas in ``harness.config`` (a negative length, an unknown dtype name its key).
* ``check_memory_cap`` / ``building_under_cap`` - a CPU memory cap below what the process
  already holds, or too small to build the model, is the cap's error, not a result.

(Device names are resolved in ``harness.devices.resolve_device``; the code identity of a
model is ``harness.fingerprint.code_fingerprint``.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import tempfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from archs.blocks import NORM_POSITIONS
from harness.config import DTYPES, FIGURES, MATCH, MODES, BenchConfig, EvalConfig, ModelConfig


# ---------------------------------------------------------------- unknown keys


def _is_free_dict(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, typing.Dict) or tp in (dict, typing.Dict, Any)


def unknown_keys(node: Any, schema: type, prefix: str = "") -> list[str]:
    """Dotted keys of ``node`` (a DictConfig or dict) that ``schema`` (a dataclass) lacks.
    Fields typed ``Dict[...]`` are free-form (an arch's own kwargs) and not descended into."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, dict):
        return []
    hints = typing.get_type_hints(schema)
    names = {f.name for f in dataclasses.fields(schema)}
    bad = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), sorted(names), n=1)
            bad.append(dotted + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
            continue
        tp = hints[key]
        if typing.get_origin(tp) is typing.Union:  # Optional[Sub]
            tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if dataclasses.is_dataclass(tp) and not _is_free_dict(tp):
            bad += unknown_keys(value, tp, f"{dotted}.")
    return bad


def reject_unknown_keys(cfg: Any, schema: type) -> None:
    """Raise ValueError naming every key of ``cfg`` its schema does not know."""
    bad = unknown_keys(cfg, schema)
    if bad:
        raise ValueError(f"unknown config key(s): {', '.join(bad)}. They would be ignored; "
                         f"fix the spelling (the schema is harness/config.py: {schema.__name__}).")


def as_schema(cfg: Any, schema: type) -> Any:
    """A composed config as an instance of its ``schema`` dataclass (``harness.config``):
    unknown keys are refused first (``reject_unknown_keys``: Hydra lets ``+bench.seq_lenz=...``
    through), then it is merged over the schema's defaults, which checks the types. An
    instance of ``schema`` is returned as it is."""
    if isinstance(cfg, schema):
        return cfg
    reject_unknown_keys(cfg, schema)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))


def merge_over(obj: Any, overrides: Any, where: str) -> Any:
    """The dataclass instance ``obj`` with ``overrides`` (a mapping of its fields) merged over
    it, checked as a config is: an unknown key or a wrong type raises ValueError naming
    ``where.<key>``, and the result is built anew, so the dataclass's own checks run."""
    if isinstance(overrides, DictConfig):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    if not isinstance(overrides, dict):
        raise ValueError(f"{where} must be a mapping of {type(obj).__name__} keys, got {overrides!r}")
    bad = unknown_keys(overrides, type(obj), f"{where}.")
    if bad:
        raise ValueError(f"unknown key(s) {', '.join(bad)}; {where} takes the keys of "
                         f"{type(obj).__name__} (harness/config.py, harness/train.py)")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(obj), overrides))
    except OmegaConfBaseException as exc:  # a wrong type: name the key
        key = getattr(exc, "full_key", None)
        raise ValueError(f"{where}.{key}: {exc.msg}" if key else f"{where}: {exc.msg}") from exc
    except ValueError as exc:  # the dataclass's own checks (they name the field)
        raise ValueError(f"{where}: {exc}") from exc


# ---------------------------------------------------------------- folders


def check_writable_dir(path: str | os.PathLike, key: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there; raise ValueError
    naming ``key`` (e.g. ``results_dir``) and the fix otherwise."""
    if not str(path).strip():
        raise ValueError(f"{key} is empty: point files would land in the current folder; give a folder "
                         f"with {key}=...")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{key}={str(p)!r} is a file, not a folder; point {key} at a folder "
                         f"(it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-check.", delete=True):
            pass
    except OSError as exc:
        raise ValueError(f"{key}={str(p)!r} cannot be written ({exc.strerror or exc}); "
                         f"choose a writable folder with {key}=...") from None
    return p


def absolute_dir(path: str | None, key: str) -> str | None:
    """``path`` made absolute against where the command was launched (Hydra may run a job
    elsewhere); an empty one is refused, naming ``key``, before it could mean "here"."""
    import hydra

    if path is None:
        return None
    if not str(path).strip():
        check_writable_dir(path, key)  # raises: the message says what to do
    return hydra.utils.to_absolute_path(path)


def data_memory_bytes() -> int | None:
    """What this process's data segment holds now (VmData: what RLIMIT_DATA limits), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Room the process needs above what it holds when the cap starts, before any model: a thread
# stack (the claim heartbeat), the allocator's next arena. (The model's own need is caught
# when it is built: ``building_under_cap``.)
MEMORY_CAP_HEADROOM = 32 * 2**20


def check_memory_cap(gb: float | None, key: str) -> None:
    """Refuse a CPU memory cap (RLIMIT_DATA, the whole process's) that is already below what
    this process uses: it would fail building the model with a raw allocator error."""
    used = data_memory_bytes()
    if gb is None or used is None or gb * 2**30 >= used + MEMORY_CAP_HEADROOM:
        return
    need = (used + MEMORY_CAP_HEADROOM) / 2**30
    _fail(key, f"{gb:g} GiB is below what this process already uses before any model is built "
          f"({used / 2**30:.2f} GiB of data memory: Python, torch and its libraries; the cap "
          f"covers the whole process). Set it to at least {need:.1f} GiB plus what the model and "
          f"its activations need, or null for no cap")


@contextlib.contextmanager
def building_under_cap(gb: float | None, key: str) -> Iterator[None]:
    """Around building the model under a CPU memory cap: running out of memory there is the
    cap's fault, not a result - a ValueError naming ``key`` instead of a raw allocator error."""
    from harness.timing import is_oom

    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if gb is None or not is_oom(exc):
            raise
        raise ValueError(f"{key}={gb:g} GiB: building the model ran out of memory under this cap "
                         f"({type(exc).__name__}: {str(exc).strip()[:120]}); raise it or set it to null") from None


# ---------------------------------------------------------------- values


def _fail(key: str, problem: str) -> None:
    raise ValueError(f"{key}: {problem}")


def validate_model(m: ModelConfig | DictConfig, prefix: str = "model") -> None:
    if m.match not in MATCH:
        _fail(f"{prefix}.match", f"must be one of {list(MATCH)}, got {m.match!r}")
    if m.n_layers is not None and m.n_layers <= 0:
        _fail(f"{prefix}.n_layers", f"must be positive, got {m.n_layers}")
    needed = {"params": "target_params", "active_params": "target_params", "flops": "target_flops_per_token",
              "state": "target_state_bytes", "width": "d_model"}[m.match]
    value = getattr(m, needed)
    if value is None or value <= 0:
        _fail(f"{prefix}.{needed}", f"match={m.match!r} needs a positive {needed}, got {value}")
    for arch, width in dict(m.d_model_by_arch).items():
        if width <= 0:
            _fail(f"{prefix}.d_model_by_arch.{arch}", f"must be positive, got {width}")
    if m.norm_position not in NORM_POSITIONS:
        _fail(f"{prefix}.norm_position", f"must be one of {list(NORM_POSITIONS)}, got {m.norm_position!r}")


def validate_figures(figures: list[str]) -> None:
    bad = [f for f in figures if f not in FIGURES]
    if bad:
        _fail("figures", f"unknown figure(s) {bad}; choose from {list(FIGURES)}")


def validate_bench(b: BenchConfig | DictConfig) -> None:
    if not b.seq_lens or any(n <= 0 for n in b.seq_lens):
        _fail("bench.seq_lens", f"must be a non-empty list of positive lengths, got {list(b.seq_lens)}")
    if b.batch <= 0:
        _fail("bench.batch", f"must be positive, got {b.batch}")
    if b.dtype not in DTYPES:
        _fail("bench.dtype", f"must be one of {list(DTYPES)}, got {b.dtype!r}")
    bad = [m for m in b.modes if m not in MODES]
    if bad or not b.modes:
        _fail("bench.modes", f"must be a non-empty subset of {list(MODES)}, got {list(b.modes)}")
    if b.search not in ("grid", "max_len"):
        _fail("bench.search", f"must be 'grid' or 'max_len', got {b.search!r}")
    if b.max_len.mode not in MODES:
        _fail("bench.max_len.mode", f"must be one of {list(MODES)}, got {b.max_len.mode!r}")
    for key in ("warmup", "decode_steps"):
        if getattr(b, key) < 0:
            _fail(f"bench.{key}", f"must be >= 0, got {getattr(b, key)}")
    if b.min_repeats < 1 or b.min_run_time <= 0 or b.time_budget_s <= 0:
        _fail("bench.min_repeats/min_run_time/time_budget_s", "must be positive")
    if b.compile_allowance_s < 0:
        _fail("bench.compile_allowance_s", f"must be >= 0 (0: the first call counts in full), got {b.compile_allowance_s}")
    if b.cpu_memory_limit_gb is not None and b.cpu_memory_limit_gb <= 0:
        _fail("bench.cpu_memory_limit_gb", f"must be positive or null, got {b.cpu_memory_limit_gb}")
    check_memory_cap(b.cpu_memory_limit_gb, "bench.cpu_memory_limit_gb")


DISTANCE_AT = ("every_length", "shortest")


def validate_eval(e: EvalConfig | DictConfig) -> None:
    if not e.seq_lens or any(n <= 0 for n in e.seq_lens):
        _fail("eval.seq_lens", f"must be a non-empty list of positive lengths, got {list(e.seq_lens)}")
    if e.n_sequences <= 0 or e.batch_tokens <= 0:
        _fail("eval.n_sequences/batch_tokens", "must be positive")
    if e.time_budget_s <= 0:
        _fail("eval.time_budget_s", f"must be positive, got {e.time_budget_s}")
    if e.chunk_len is not None and e.chunk_len <= 0:
        _fail("eval.chunk_len", f"must be positive or null, got {e.chunk_len}")
    if e.trigger_distances is not None and (not e.trigger_distances or any(d <= 0 for d in e.trigger_distances)):
        _fail("eval.trigger_distances", f"must be null or a non-empty list of positive distances, "
              f"got {list(e.trigger_distances)}")
    if e.cpu_memory_limit_gb is not None and e.cpu_memory_limit_gb <= 0:
        _fail("eval.cpu_memory_limit_gb", f"must be positive or null, got {e.cpu_memory_limit_gb}")
    if e.distance_at not in DISTANCE_AT:
        _fail("eval.distance_at", f"must be one of {list(DISTANCE_AT)}, got {e.distance_at!r}")
    check_memory_cap(e.cpu_memory_limit_gb, "eval.cpu_memory_limit_gb")
