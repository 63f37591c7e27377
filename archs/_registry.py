"""The architecture registry (timm-style): register_arch / create_arch / list_archs / arch_info.

Built-in families register themselves when their package under ``archs/`` is imported;
external packages add architectures through the entry-point group ``archbench.archs``
(each entry point names a ``register()`` callable, safe to call twice). Both are loaded
once, lazily, on the first registry query, so ``import archs`` stays cheap and listing
never imports an optional GPU package.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import inspect
import logging
import pkgutil
import threading
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from torch import nn

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "archbench.archs"
# The keywords every architecture accepts, so one call shape builds any of them.
COMMON_KWARGS = ("vocab_size", "d_model", "n_layers")


@dataclass(frozen=True)
class ArchInfo:
    name: str
    family: str
    description: str
    builder: Callable[..., nn.Module] = field(repr=False)
    # Keyword defaults layered under the caller's (a named variant of a builder).
    defaults: dict[str, Any] = field(default_factory=dict)
    # Optional packages the fused backends need (never needed to list or run on CPU).
    requires: tuple[str, ...] = ()
    backends: tuple[str, ...] = ("ref",)
    # Longest sequence the architecture can process; None = unbounded.
    max_seq_len: int | None = None
    # Small keyword overrides that make a seconds-on-CPU model (tests, conformance, demo).
    tiny: dict[str, Any] = field(default_factory=dict)
    # Where it was registered: "module:function" (for duplicate-name errors).
    source: str = ""

    def accepted_kwargs(self) -> list[str]:
        """The keywords the builder takes; a builder's ``**shell`` goes to ``LMConfig``."""
        from archs.model import LMConfig

        params = inspect.signature(self.builder).parameters.values()
        names = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if any(p.kind is p.VAR_KEYWORD for p in params):
            names += [f.name for f in dataclasses.fields(LMConfig)]
        return sorted(set(names))


_REGISTRY: dict[str, ArchInfo] = {}
_LOADED = False
_LOADING = threading.RLock()
_PLUGIN_ERRORS: dict[str, str] = {}


def _source_of(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def register_arch(name: str, *, family: str, description: str = "",
                  defaults: dict[str, Any] | None = None, requires: tuple[str, ...] = (),
                  backends: tuple[str, ...] = ("ref",), max_seq_len: int | None = None,
                  tiny: dict[str, Any] | None = None) -> Callable:
    """Decorator: register ``builder(vocab_size, d_model, n_layers, **own) -> LanguageModel``.

    Re-registering the same builder under the same name is a no-op (plugins' register()
    may run twice); a different builder under a taken name is an error naming both.
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"architecture name {name!r} must be non-empty letters, digits, '_' or '-'")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        info = ArchInfo(name=name, family=family, description=description or (builder.__doc__ or "").strip(),
                        builder=builder, defaults=dict(defaults or {}), requires=tuple(requires),
                        backends=tuple(backends), max_seq_len=max_seq_len, tiny=dict(tiny or {}),
                        source=_source_of(builder))
        old = _REGISTRY.get(name)
        if old is not None:
            if old.source == info.source and old.defaults == info.defaults:
                return builder
            raise ValueError(f"architecture {name!r} is already registered by {old.source}; "
                             f"{info.source} tried to register it again. Rename one of them.")
        _REGISTRY[name] = info
        return builder

    return decorator


def _import_builtin_families() -> None:
    """Import every package under archs/ so its register_arch decorators run."""
    import archs

    for mod in pkgutil.iter_modules(archs.__path__):
        if mod.ispkg:
            importlib.import_module(f"archs.{mod.name}")


def _load_plugins() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register = ep.load()
            register()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - one broken plugin must not break the rest
            # SystemExit too: a plugin calling sys.exit() must not silently end every app.
            reason = f"{type(exc).__name__}: {exc}"
            _PLUGIN_ERRORS[ep.name] = reason
            warnings.warn(f"archbench plugin {ep.name!r} ({ep.value}) failed to load: {reason}",
                          RuntimeWarning, stacklevel=3)


def ensure_loaded() -> None:
    """Load built-in families and entry-point plugins, once."""
    global _LOADED
    with _LOADING:
        if _LOADED:
            return
        _LOADED = True
        _import_builtin_families()
        _load_plugins()


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to load: {entry-point name: reason}."""
    ensure_loaded()
    return dict(_PLUGIN_ERRORS)


def list_archs(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; ``pattern`` is a shell glob such as ``"transformer*"``."""
    ensure_loaded()
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatchcase(n, pattern)]


def arch_info(name: str) -> ArchInfo:
    ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown architecture {name!r}.{hint} Known architectures: {', '.join(known)}. "
                       f"External ones come from installed plugins (entry-point group "
                       f"{ENTRY_POINT_GROUP!r}).") from None


def check_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Fail before any compute if a keyword is not one the architecture accepts."""
    accepted = arch_info(name).accepted_kwargs()
    unknown = sorted(set(kwargs) - set(accepted) - {"target_params"})
    if unknown:
        raise TypeError(f"architecture {name!r} got unknown keyword(s) {unknown}; "
                        f"it accepts: {', '.join(sorted(accepted))} (and target_params)")


def create_arch(name: str, *, target_params: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered architecture as an LM.

    ``target_params``: choose ``d_model`` so the parameter count lands as close as the
    architecture's width granularity allows (see ``archs.sizing``); the model's
    ``num_params()`` reports the real count.
    """
    info = arch_info(name)
    check_kwargs(name, kwargs)
    merged = {**info.defaults, **kwargs}
    if target_params is not None:
        from archs.sizing import width_for_params

        if "d_model" in kwargs:
            raise ValueError("pass either d_model or target_params, not both "
                             "(target_params chooses d_model)")
        merged["d_model"] = width_for_params(lambda **kw: info.builder(**kw), merged, target_params)
    model = info.builder(**merged)
    model.arch_name = name
    model.arch_kwargs = dict(merged)
    return model
