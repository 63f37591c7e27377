"""What code made a model: ``code_fingerprint``, a hash of the source files that define it.

The files are those of a model's classes and builder (and a task generator's) and of every
project module they import, transitively, lazy imports inside functions included; so a
checkpoint trained by other code is never reused silently (its identity, with the settings,
is the checkpoint's key: ``harness.extrapolate``).
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import sys
import sysconfig
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def _defining_modules(obj: Any) -> list[types.ModuleType]:
    """The modules that define ``obj``: a module itself, a class's (and its bases'), a
    function's, an instance's class's."""
    if isinstance(obj, types.ModuleType):
        return [obj]
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        names = [obj.__module__]
    else:
        names = [cls.__module__ for cls in (obj.__mro__ if isinstance(obj, type) else type(obj).__mro__)]
    return [sys.modules[n] for n in names
            if n in sys.modules and not n.startswith(("torch", "builtins", "typing"))]


def _imported_modules(mod: types.ModuleType, source: str) -> set[str]:
    """Names of the modules that ``mod``'s source imports anywhere (module level and inside
    functions: lazy imports count), resolved the way Python would: ``from pkg import name``
    counts ``pkg``, ``pkg.name`` if that is a module, else the module defining ``name``."""
    names: set[str] = set()
    package = mod.__package__ or mod.__name__.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            for alias in node.names:
                names.add(f"{base}.{alias.name}")  # kept only if it is a module (see below)
                owner = getattr(sys.modules.get(base), alias.name, None)
                if getattr(owner, "__module__", None):
                    names.add(owner.__module__)
    return names


def _module_files(objs: Iterable[Any]) -> set[Path]:
    """Source files of the modules defining ``objs`` (classes, instances, functions, modules)
    and of every module they import, transitively, within the same top-level packages (the
    project's ``archs``/``harness``, a plugin's package): ``ref.py`` imported by
    ``chunked.py`` imported by ``layer.py`` counts, as does a lazy import inside a function."""
    queue = [m for obj in objs for m in _defining_modules(obj)]
    roots = {m.__name__.split(".")[0] for m in queue if _project_file(m) is not None}
    files: dict[str, Path] = {}
    while queue:
        mod = queue.pop()
        if mod.__name__ in files:
            continue
        path = _project_file(mod)
        if path is None or not path.suffix == ".py":
            continue
        files[mod.__name__] = path
        for name in _imported_modules(mod, path.read_text()):
            if name.split(".")[0] not in roots or name in files:
                continue
            dep = sys.modules.get(name)
            if dep is None:
                try:
                    dep = importlib.import_module(name)
                except ImportError:  # `from pkg import function`: pkg.function is not a module
                    continue
            queue.append(dep)
    return set(files.values())


def code_fingerprint(*objs: Any, length: int = 12) -> str:
    """Hash of the source files defining ``objs`` (e.g. a model and a task): a torch
    module contributes the classes of all its submodules."""
    expanded: list[Any] = []
    for obj in objs:
        expanded.append(obj)
        if hasattr(obj, "modules") and callable(obj.modules):
            expanded += list(obj.modules())
        if isinstance(getattr(obj, "arch_name", None), str):  # the registered builder built it
            from archs import arch_info

            try:
                expanded.append(arch_info(obj.arch_name).builder)
            except (KeyError, ValueError):
                pass
    h = hashlib.sha256()
    for path in sorted(_module_files(expanded)):
        rel = path.relative_to(REPO_ROOT) if REPO_ROOT in path.parents else Path(path.name)
        h.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:length]
