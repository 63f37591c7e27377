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
import zlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

from torch import nn

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "archbench.archs"
# The keywords every architecture accepts, so one call shape builds any of them.
COMMON_KWARGS = ("vocab_size", "d_model", "n_layers")
# matplotlib's "tab20" palette (pairs: dark, light), for the built-ins' default colours
# (a family shares a hue: dark = the main variant, light = its sibling).
TAB20 = ("#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728",
         "#ff9896", "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2",
         "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5")
# matplotlib's "tab20b": where an architecture registered without a colour gets one from
# (after the TAB20 slots nobody took), so a new family needs no colour bookkeeping.
TAB20B = ("#393b79", "#5254a3", "#6b6ecf", "#9c9ede", "#637939", "#8ca252", "#b5cf6b", "#cedb9c",
          "#8c6d31", "#bd9e39", "#e7ba52", "#e7cb94", "#843c39", "#ad494a", "#d6616b", "#e7969c",
          "#7b4173", "#a55194", "#ce6dbd", "#de9ed6")


@dataclass(frozen=True)
class ArchInfo:
    name: str
    family: str
    description: str
    builder: Callable[..., nn.Module] = field(repr=False)
    # Keyword defaults layered under the caller's (a named variant of a builder).
    defaults: dict[str, Any] = field(default_factory=dict)
    # The backend words it accepts (archs.backends), read from its mixer class when given.
    backends: tuple[str, ...] = ("ref",)
    # Longest sequence the architecture can process; None = unbounded.
    max_seq_len: int | None = None
    # Small keyword overrides that make a seconds-on-CPU model (tests, conformance, demo).
    tiny: dict[str, Any] = field(default_factory=dict)
    # The mixer class every block uses (None for hybrids, which mix several).
    mixer: type | None = field(default=None, repr=False)
    # Its letter in hybrid layer patterns ("A", "M", ...), if it has one.
    letter: str | None = None
    # Default plot colour of its curves (any matplotlib colour), and of the labelled
    # variants the shipped configs give it (``label:`` in conf/arch/*.yaml).
    color: str | None = None
    label_colors: dict[str, str] = field(default_factory=dict)
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

    def builder_defaults(self) -> dict[str, Any]:
        """What each keyword is when not given: the builder's signature under ``defaults``."""
        params = inspect.signature(self.builder).parameters.values()
        own = {p.name: p.default for p in params if p.default is not p.empty}
        return {**own, **self.defaults}


@dataclass(frozen=True)
class MixerLetter:
    """A letter of the hybrid layer-pattern language: one mixer class."""
    letter: str
    description: str
    mixer: type = field(repr=False)

    def build(self, d_model: int, kwargs: dict[str, Any]) -> nn.Module:
        return self.mixer.build(d_model, **kwargs)


_REGISTRY: dict[str, ArchInfo] = {}
_LETTERS: dict[str, MixerLetter] = {}
_LOADED = False
_LOADING = threading.RLock()
_PLUGIN_ERRORS: dict[str, str] = {}


def _source_of(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def register_mixer_letter(letter: str, description: str, mixer: type) -> None:
    """Give ``mixer`` (a Mixer subclass) a letter in hybrid layer patterns.

    ``register_arch(..., mixer=..., letter=...)`` calls this; call it directly only for a
    mixer that has no architecture of its own. Re-registering the same class is a no-op.
    """
    if len(letter) != 1 or not letter.isalpha() or not letter.isupper():
        raise ValueError(f"a mixer letter is one upper-case letter, got {letter!r}")
    if not hasattr(mixer, "build"):
        raise TypeError(f"mixer letter {letter!r}: {mixer!r} is not a Mixer subclass "
                        f"(it needs Mixer.build(d_model, **kwargs))")
    old = _LETTERS.get(letter)
    if old is not None and old.mixer is not mixer:
        raise ValueError(f"mixer letter {letter!r} already means {old.description} "
                         f"({_source_of(old.mixer)}); choose another letter")
    _LETTERS[letter] = MixerLetter(letter, description, mixer)


def mixer_letters() -> dict[str, MixerLetter]:
    """Every hybrid-pattern letter: {letter: MixerLetter}, built-ins and plugins."""
    ensure_loaded()
    return dict(sorted(_LETTERS.items()))


def register_arch(name: str, *, family: str, description: str = "",
                  defaults: dict[str, Any] | None = None, mixer: type | None = None,
                  letter: str | None = None, color: str | None = None,
                  label_colors: dict[str, str] | None = None,
                  backends: tuple[str, ...] | None = None, max_seq_len: int | None = None,
                  tiny: dict[str, Any] | None = None) -> Callable:
    """Decorator: register ``builder(vocab_size, d_model, n_layers, **own) -> LanguageModel``.

    The one registration point: ``mixer`` (the Mixer subclass its blocks use) gives the
    backends (``mixer.backends``); ``letter`` makes that mixer usable in hybrid patterns;
    ``color`` is its default plot colour (None: a free one, see ``arch_colors``).
    Re-registering the same builder under the same name is a no-op (plugins' register() may
    run twice); a different builder under a taken name is an error naming both.
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"architecture name {name!r} must be non-empty letters, digits, '_' or '-'")
    if letter is not None and mixer is None:
        raise ValueError(f"architecture {name!r}: letter={letter!r} needs mixer= (the class the "
                         f"letter builds)")
    if backends is None:
        backends = tuple(getattr(mixer, "backends", ("ref",)))

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        info = ArchInfo(name=name, family=family, description=description or (builder.__doc__ or "").strip(),
                        builder=builder, defaults=dict(defaults or {}), backends=tuple(backends),
                        max_seq_len=max_seq_len, tiny=dict(tiny or {}), mixer=mixer, letter=letter,
                        color=color, label_colors=dict(label_colors or {}),
                        source=_source_of(builder))
        old = _REGISTRY.get(name)
        if old is not None:
            if old.source == info.source and old.defaults == info.defaults:
                return builder
            raise ValueError(f"architecture {name!r} is already registered by {old.source}; "
                             f"{info.source} tried to register it again. Rename one of them.")
        if letter is not None:
            register_mixer_letter(letter, f"{name} ({mixer.__name__})", mixer)
        _REGISTRY[name] = info
        return builder

    return decorator


def arch_colors() -> dict[str, str]:
    """Default plot colours: {architecture name or configured label: colour}.

    An architecture registered with ``color=None`` gets a TAB20 / TAB20B colour no other
    architecture or label holds: the slot its name hashes to (crc32, stable across runs),
    or the next free one, names taken in sorted order. So the same set of architectures
    always maps the same way, and adding one rarely moves another's colour."""
    ensure_loaded()
    colors: dict[str, str] = {}
    for info in _REGISTRY.values():
        if info.color is not None:
            colors[info.name] = info.color
        colors.update(info.label_colors)
    palette = TAB20 + TAB20B
    for name in sorted(n for n, info in _REGISTRY.items() if info.color is None and n not in colors):
        start = zlib.crc32(name.encode())
        taken = set(colors.values())
        slots = [palette[(start + i) % len(palette)] for i in range(len(palette))]
        colors[name] = next((c for c in slots if c not in taken), slots[0])
    return colors


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
