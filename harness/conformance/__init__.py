"""The conformance suite: behavioural checks every architecture must pass.

The project's own tests run it over the built-in architectures, once per backend that
runs here; plugin authors run it on theirs:

    python -m harness.conformance my_arch            # or: archbench-conformance my_arch
    python -m harness.conformance 'transformer*' --kwargs '{"n_heads": 2}'
    python -m harness.conformance my_arch --long     # long checks up to 16K tokens

or from pytest:  ``assert_conformance("my_arch")``.

Each check builds the architecture's tiny variant (``arch_info(name).tiny``) in float32.
Short checks (~21-64 tokens): shapes, determinism, causality, batch independence, train ==
eval mode, step == forward, prefill == forward, gradients, no weight hidden in a buffer,
state size (declared == reported == the state's tensors), learning, the length limit.
Long checks at CHECKED_LENGTHS (1024 and 4096 tokens; LONG_LENGTHS with --long): causality
by input gradients and perturbation cuts on both sides of every tile boundary the mixers
declare (``Mixer.tiles()``), and step / uneven-chunk prefill == forward across tiles.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from archs import arch_info, list_archs
from archs.backends import BackendUnavailableError

from harness.conformance._common import (BATCH, CHECKED_LENGTHS, LENGTH, LONG_LENGTHS, RTOL, SPLIT,
                                         VOCAB, CheckResult, ConformanceError, build_tiny, tokens)
from harness.conformance.kinds import for_model
from harness.conformance.long import check_long_causality, check_long_decode
from harness.conformance.short import (check_batch_independence, check_buffers, check_causality,
                                       check_determinism, check_gradients, check_learns,
                                       check_length_limit, check_prefill_matches_forward,
                                       check_shapes, check_state_size, check_step_matches_forward,
                                       check_train_eval, measured_state_bytes)

# Order matters: determinism and batch independence first, so a random or batch-mixing
# forward is reported as such rather than as a causality or decode failure.
SHORT_CHECKS: dict[str, Callable[..., str]] = {
    "shapes": check_shapes,
    "determinism": check_determinism,
    "batch_independence": check_batch_independence,
    "causality": check_causality,
    "train_eval": check_train_eval,
    "step_matches_forward": check_step_matches_forward,
    "prefill_matches_forward": check_prefill_matches_forward,
    "gradients": check_gradients,
    "buffers": check_buffers,
    "state_size": check_state_size,
    "learns": check_learns,
    "length_limit": check_length_limit,
}
LONG_CHECKS: dict[str, Callable[..., str]] = {
    "long_causality": check_long_causality,
    "long_decode": check_long_decode,
}
CHECKS: dict[str, Callable[..., str]] = {**SHORT_CHECKS, **LONG_CHECKS}


def conformance_note(lengths: tuple[int, ...] = CHECKED_LENGTHS) -> str:
    """One sentence for reports: which lengths the conformance suite checked."""
    return (f"conformance: every built-in's causality and step/prefill == forward checked at "
            f"{', '.join(map(str, lengths))} tokens (harness.conformance; "
            f"{', '.join(map(str, LONG_LENGTHS))} with --long)")


def _cannot_run_here(exc: Exception) -> bool:
    """A backend that needs a missing package or a CUDA device (explicit requests raise)."""
    return isinstance(exc, (BackendUnavailableError, ImportError)) or \
        (isinstance(exc, (ValueError, RuntimeError)) and "cuda" in str(exc).lower())


def backends_here(name: str, skipped: dict[str, str] | None = None, **overrides) -> list[str | None]:
    """The backends of ``name`` that run on this machine, each once (``skipped`` collects
    the others with the reason).

    [None] when the builder takes no ``backend`` keyword (its default is what runs). "auto"
    is kept only when it resolves differently from every explicit backend (e.g. a choice
    that depends on the length)."""
    info = arch_info(name)
    if "backend" not in info.accepted_kwargs():
        return [None]
    runs: dict[str, set[str]] = {}
    for backend in info.backends:
        try:
            model = build_tiny(name, backend, **overrides)
            model(tokens(length=LENGTH))
            runs[backend] = {model.backends("cpu", n) for n in (LENGTH, *CHECKED_LENGTHS)}
        except Exception as exc:  # noqa: BLE001 - only "cannot run here" is skipped
            if not _cannot_run_here(exc):
                raise
            if skipped is not None:
                skipped[backend] = f"{type(exc).__name__}: {exc}"
    explicit = {b: r for b, r in runs.items() if b != "auto"}
    if "auto" in runs and any(r == runs["auto"] for r in explicit.values()):
        del runs["auto"]
    return list(runs) or [None]


def run_check(name: str, check: str, backend: str | None = None,
              lengths: tuple[int, ...] = CHECKED_LENGTHS, **overrides) -> CheckResult:
    try:
        model = build_tiny(name, backend, **overrides)
        # bidirectional and encoder-decoder models take the checks that apply to them
        run = for_model(check, CHECKS[check], model, lambda b: build_tiny(name, b, **overrides))
        detail = run(model, lengths=lengths, rebuild=lambda seed: build_tiny(name, backend, seed=seed, **overrides))
        return CheckResult(name, check, True, detail, backend)
    except ConformanceError as exc:
        return CheckResult(name, check, False, str(exc), backend)
    except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported by name
        return CheckResult(name, check, False, f"raised {type(exc).__name__}: {exc}", backend)


def assert_conformance(name: str, checks: list[str] | None = None, backends: list[str | None] | None = None,
                       lengths: tuple[int, ...] = CHECKED_LENGTHS, **overrides) -> None:
    """For a plugin's own pytest suite: run ``checks`` (default: all, long ones at ``lengths``)
    for every backend that runs here; raise AssertionError listing every failed check."""
    failed = []
    for backend in backends or backends_here(name, **overrides):
        for check in checks or CHECKS:
            result = run_check(name, check, backend, lengths, **overrides)
            if not result.passed:
                failed.append(f"{check}{f' [backend={backend}]' if backend else ''}: {result.detail}")
    if failed:
        raise ConformanceError("; ".join(failed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archs", nargs="*", help="names or globs (default: every registered one)")
    parser.add_argument("--kwargs", default="{}", help="JSON keyword overrides for the tiny variant")
    parser.add_argument("--check", action="append", choices=list(CHECKS), help="run only these checks")
    parser.add_argument("--backend", action="append", help="only these backends (default: all that run here)")
    parser.add_argument("--long", action="store_true", help=f"long checks at {LONG_LENGTHS}, "
                        f"not {CHECKED_LENGTHS}")
    parser.add_argument("--short", action="store_true", help="skip the long checks")
    args = parser.parse_args(argv)
    names = sorted({n for pattern in (args.archs or ["*"]) for n in list_archs(pattern)}) if args.archs \
        else list_archs()
    if args.archs and not names:
        arch_info(args.archs[0])  # raises with the list of known names
    overrides = json.loads(args.kwargs)
    lengths = LONG_LENGTHS if args.long else CHECKED_LENGTHS
    checks = args.check or list(SHORT_CHECKS if args.short else CHECKS)
    failures = 0
    for name in names:
        skipped: dict[str, str] = {}
        for backend in args.backend or backends_here(name, skipped, **overrides):
            for check in checks:
                result = run_check(name, check, backend, lengths, **overrides)
                failures += not result.passed
                label = f"{name}[{backend}]" if backend else name
                print(f"{'PASS' if result.passed else 'FAIL'}  {label:32s} {check:24s} {result.detail}",
                      flush=True)
        for backend, why in skipped.items():
            print(f"SKIP  {name + '[' + backend + ']':32s} cannot run here: {why[:120]}")
    print(f"{len(names)} architecture(s), {failures} failed check(s); long checks at lengths {list(lengths)}")
    return 1 if failures else 0


__all__ = ["BATCH", "CHECKED_LENGTHS", "CHECKS", "LENGTH", "LONG_CHECKS", "LONG_LENGTHS", "RTOL",
           "SHORT_CHECKS", "SPLIT", "VOCAB", "CheckResult", "ConformanceError", "assert_conformance",
           "backends_here", "build_tiny", "conformance_note", "main", "measured_state_bytes", "run_check",
           *[f.__name__ for f in CHECKS.values()]]
