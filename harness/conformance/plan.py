"""What archbench's own test suite checks for each built-in architecture, and at which
lengths and dtypes: the one source for the tests (tests/harness/test_conformance.py
parametrises from ``short_cases`` / ``long_cases``) and for the reports (``coverage``),
which state per architecture what was checked - a plugin shown beside the built-ins too.

The plan (a token-by-token pass costs ~1-3 ms a token on a CPU, and the reference
backends are quadratic or Python loops, so not every case runs to the longest length on a
2-core CI machine; the lengths below are what a report quotes):

* every built-in, every backend that runs here: the short checks (21-64 tokens), the
  causality and form-agreement ones (DTYPE_CHECKS) in float32, bfloat16 and float64;
* the default backend of each distinct mixer (the first built-in using it, a
  "representative"): the long checks at REPRESENTATIVE in float32 and at OTHER_DTYPE in
  bfloat16 and float64;
* each other backend of a representative, and each other variant of a mixer (positional
  encodings, RetNet's decay): the long checks at OTHER in float32.

Plugins are not run here (an installed plugin cannot fail this project's tests); their
authors run ``python -m harness.conformance NAME`` (CHECKED_LENGTHS, every dtype).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from archs import arch_info, list_archs

from harness.conformance._common import CHECKED_LENGTHS, DTYPES, build_tiny, dtype_name

# {long check: lengths}. Step == forward at every position is the costly one (a Python
# loop over tokens), so it stops at 1K where prefill and causality go on to 4K.
REPRESENTATIVE: dict[str, tuple[int, ...]] = {"long_causality": CHECKED_LENGTHS, "long_prefill": CHECKED_LENGTHS,
                                              "long_decode": CHECKED_LENGTHS[:1]}
OTHER: dict[str, tuple[int, ...]] = {"long_causality": CHECKED_LENGTHS[:1], "long_prefill": CHECKED_LENGTHS[:1],
                                     "long_decode": (256,)}
OTHER_DTYPE: dict[str, tuple[int, ...]] = {"long_causality": (256,), "long_prefill": (256,), "long_decode": (256,)}
OTHER_DTYPES: tuple[str, ...] = tuple(dtype_name(d) for d in DTYPES if d != torch.float32)
WHAT = {"long_causality": "causality", "long_prefill": "prefill == forward", "long_decode": "step == forward"}


@dataclass(frozen=True)
class LongCase:
    """One long check of one built-in, backend (None: its default) and dtype, at ``lengths``."""

    arch: str
    backend: str | None
    dtype: str
    check: str
    lengths: tuple[int, ...]

    @property
    def id(self) -> str:
        return (f"{self.arch}-{self.backend or 'default'}-{self.dtype}-{self.check}-"
                f"{'_'.join(map(str, self.lengths))}")


def builtins() -> list[str]:
    return [n for n in list_archs() if arch_info(n).source.startswith("archs.")]


def mixer_kinds(name: str) -> tuple[str, ...]:
    return tuple(sorted({type(m).__name__ for m in build_tiny(name).mixers}))


@functools.cache
def representatives() -> tuple[str, ...]:
    """The first built-in (by name) for each (mixer classes, family): one per distinct mixer."""
    seen: dict[tuple, str] = {}
    for name in builtins():
        seen.setdefault((mixer_kinds(name), arch_info(name).family), name)
    return tuple(sorted(seen.values()))


def other_backends(name: str) -> list[str]:
    """The backends of ``name`` that run here, other than what its default resolves to."""
    from harness.conformance import backends_here

    default = build_tiny(name).backends("cpu", CHECKED_LENGTHS[-1])
    return [b for b in backends_here(name) if b is not None and b != default]


def short_cases() -> list[tuple[str, str | None]]:
    """(built-in, backend) pairs for the short checks: each default, then every other
    backend that runs here."""
    return [(n, b) for n in builtins() for b in (None, *other_backends(n))]


def long_cases() -> list[LongCase]:
    """Every long-check case of the project's suite (runs a forward per backend to see
    which backends run here)."""
    reps = representatives()
    plan = [(n, None, "float32", REPRESENTATIVE) for n in reps]
    plan += [(n, None, d, OTHER_DTYPE) for n in reps for d in OTHER_DTYPES]
    plan += [(n, b, "float32", OTHER) for n in reps for b in other_backends(n)]
    plan += [(n, None, "float32", OTHER) for n in builtins() if n not in reps]
    return [LongCase(n, b, d, check, lengths) for n, b, d, profile in plan for check, lengths in profile.items()]


def _tokens(lengths: tuple[int, ...]) -> str:
    return ", ".join(f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in lengths)


def _profile(profile: dict[str, tuple[int, ...]]) -> str:
    return "; ".join(f"{WHAT[check]} {_tokens(lengths)}" for check, lengths in profile.items())


def _not_builtin(name: str) -> str:
    """'' for a built-in, else what a report says instead of lengths."""
    try:
        info = arch_info(name)
    except KeyError:
        return "unknown here (not registered)"
    return "" if info.source.startswith("archs.") else "not run by archbench's suite (a plugin)"


def coverage(name: str) -> str:
    """One cell for reports: at which lengths and dtypes archbench's suite checks causality
    and step / prefill == forward (at every position) for ``name``."""
    if _not_builtin(name):
        return _not_builtin(name)
    short = "every backend: 21-64 tokens in float32, bfloat16, float64"
    if name in representatives():
        return (f"default backend: float32 {_profile(REPRESENTATIVE)}; bfloat16, float64 {_profile(OTHER_DTYPE)}"
                f" — other backends: float32 {_profile(OTHER)} — {short}")
    return f"default backend: float32 {_profile(OTHER)} — {short}"


def coverage_brief(name: str) -> str:
    """A table cell: what the suite checks ``name``'s default backend at in float32."""
    return _not_builtin(name) or _profile(REPRESENTATIVE if name in representatives() else OTHER)
