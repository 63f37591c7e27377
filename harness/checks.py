"""Checks that run before any compute: unknown config keys, writable folders, code identity.

* ``reject_unknown_keys`` - keys in a composed config that its schema does not have
  (Hydra lets ``+bench.seq_lenz=[999]`` through; this does not), with a suggestion.
* ``check_writable_dir`` - a results/checkpoint folder that is a file or cannot be
  written is named before training or the first measurement, not after.
* ``code_fingerprint`` - a hash of the source files that define a model (its classes'
  modules, and the project modules those import from) and a task generator, so a
  checkpoint trained by other code is never reused silently.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import os
import sys
import sysconfig
import tempfile
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------- folders


def check_writable_dir(path: str | os.PathLike, key: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there; raise ValueError
    naming ``key`` (e.g. ``results_dir``) and the fix otherwise."""
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


# ---------------------------------------------------------------- code fingerprint


def _project_file(obj: Any) -> Path | None:
    try:
        src = inspect.getsourcefile(obj)
    except TypeError:
        return None
    if src is None:
        return None
    path = Path(src).resolve()
    # The project and plugins count; the standard library and torch do not.
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    if stdlib in path.parents and "site-packages" not in path.parts:
        return None
    if any(part in ("torch", "numpy") for part in path.parts):
        return None
    return path


def _module_files(objs: Iterable[Any]) -> set[Path]:
    """Source files of the modules defining ``objs`` (classes, instances, modules) and of
    the project modules those import names from (one level: ``ref.py`` beside ``layer.py``)."""
    mods: set[types.ModuleType] = set()
    for obj in objs:
        classes = type(obj).__mro__ if not isinstance(obj, (type, types.ModuleType)) else \
            (obj.__mro__ if isinstance(obj, type) else ())
        if isinstance(obj, types.ModuleType):
            mods.add(obj)
        for cls in classes:
            mod = sys.modules.get(cls.__module__)
            if mod is not None and not cls.__module__.startswith(("torch", "builtins", "typing")):
                mods.add(mod)
    files = set()
    for mod in mods:
        own = _project_file(mod)
        if own is None:
            continue
        files.add(own)
        for value in vars(mod).values():
            dep = value if isinstance(value, types.ModuleType) else sys.modules.get(getattr(value, "__module__", "") or "")
            if dep is not None and (dep.__name__.split(".")[0] == mod.__name__.split(".")[0]):
                f = _project_file(dep)
                if f is not None:
                    files.add(f)
    return files


def code_fingerprint(*objs: Any, length: int = 12) -> str:
    """Hash of the source files defining ``objs`` (e.g. a model and a task): a torch
    module contributes the classes of all its submodules."""
    expanded: list[Any] = []
    for obj in objs:
        expanded.append(obj)
        if hasattr(obj, "modules") and callable(obj.modules):
            expanded += list(obj.modules())
    h = hashlib.sha256()
    for path in sorted(_module_files(expanded)):
        rel = path.relative_to(REPO_ROOT) if REPO_ROOT in path.parents else Path(path.name)
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:length]
