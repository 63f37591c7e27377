"""The conformance suite: behavioural checks every architecture must pass.

The project's own tests run it over the built-in architectures, once per backend that
runs here; plugin authors run it on theirs:

    python -m harness.conformance my_arch            # or: archbench-conformance my_arch
    python -m harness.conformance 'transformer*' --kwargs '{"n_heads": 2}'
    python -m harness.conformance my_arch --long     # long checks up to 16K tokens
    python -m harness.conformance my_arch --dtype bfloat16

or from pytest:  ``assert_conformance("my_arch")``.

Each check builds the architecture's tiny variant (``arch_info(name).tiny``). Short checks
(~21-64 tokens): shapes, determinism, causality (every position: exact-zero gradients to
future inputs and cuts), batch independence, train == eval mode, step == forward, prefill
== forward, gradients, no weight hidden in a buffer, state size (declared == reported ==
the state's tensors), learning, the length limit. Long checks at CHECKED_LENGTHS (1024 and
4096 tokens; LONG_LENGTHS with --long): causality by input gradients and perturbation cuts
on both sides of every tile boundary the mixers declare (``Mixer.tiles()``), one
token-by-token pass compared with the forward at every position (long_decode), and
uneven-chunk prefill compared at every position (long_prefill). The causality and
form-agreement checks (DTYPE_CHECKS) run in float32, bfloat16 and float64 with a tolerance
per dtype (long ones at the first length in bfloat16 / float64); the others in float32. A
mixer declaring ``causal = False`` (bidirectional) has its causal checks reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import Callable, Iterator

import torch

from archs import arch_info, list_archs
from archs.backends import BackendUnavailableError

from harness.conformance._common import (BATCH, CHECKED_LENGTHS, DTYPES, GRAD_LEAK_RTOLS, LENGTH,
                                         LONG_LENGTHS, RTOL, RTOLS, SPLIT, VOCAB, CheckResult,
                                         ConformanceError, build_tiny,
                                         dtype_name, dtype_named, tokens)
from harness.conformance.kinds import for_model
from harness.conformance.long import check_long_causality, check_long_decode, check_long_prefill
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
    "long_prefill": check_long_prefill,
}
CHECKS: dict[str, Callable[..., str]] = {**SHORT_CHECKS, **LONG_CHECKS}
# Run in every dtype of DTYPES (the others in float32): causality and the agreement of forms.
DTYPE_CHECKS: tuple[str, ...] = ("causality", "step_matches_forward", "prefill_matches_forward",
                                 "long_causality", "long_decode", "long_prefill")
# Meaningless for a bidirectional model (no causal order, no token-by-token decoding):
# reported as skipped when a mixer declares causal = False.
CAUSAL_CHECKS: tuple[str, ...] = ("causality", "step_matches_forward", "prefill_matches_forward",
                                  "state_size", "long_causality", "long_decode", "long_prefill")


def conformance_note(lengths: tuple[int, ...] = CHECKED_LENGTHS) -> str:
    """One sentence for reports: what the conformance suite checks, and where to read the
    lengths checked for each architecture (harness.conformance.plan.coverage)."""
    return (f"conformance (harness.conformance): causality, and step / prefill == forward at every position, "
            f"checked for each architecture at the lengths in the Conformance table; a plugin's author runs "
            f"it at {', '.join(map(str, lengths))} tokens by default ({', '.join(map(str, LONG_LENGTHS))} "
            f"with --long)")


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
              lengths: tuple[int, ...] = CHECKED_LENGTHS, dtype: str | torch.dtype = torch.float32,
              **overrides) -> CheckResult:
    """One check on the tiny variant of ``name`` in ``dtype``; a crash is a failed check,
    a backend that cannot run in ``dtype`` here (other than float32) a skipped one."""
    dtype = dtype_named(dtype)
    result = partial(CheckResult, name, check, backend=backend, dtype=dtype_name(dtype))
    try:
        model = build_tiny(name, backend, dtype=dtype, **overrides)
        # bidirectional and encoder-decoder models take the checks that apply to them
        run = for_model(check, CHECKS[check], model, lambda b: build_tiny(name, b, dtype=dtype, **overrides))
        detail = run(model, lengths=lengths,
                     rebuild=lambda seed: build_tiny(name, backend, seed=seed, dtype=dtype, **overrides))
        return result(True, detail)
    except ConformanceError as exc:
        return result(False, str(exc))
    except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported by name
        if dtype != torch.float32 and _cannot_run_here(exc):
            return result(True, f"skipped: cannot run in {dtype_name(dtype)} here: {exc}", skipped=True)
        return result(False, f"raised {type(exc).__name__}: {exc}")


def run_checks(name: str, checks: list[str] | None = None, backends: list[str | None] | None = None,
               lengths: tuple[int, ...] = CHECKED_LENGTHS, dtypes: list[str] | None = None,
               skipped: dict[str, str] | None = None, dtype_lengths: tuple[int, ...] | None = None,
               **overrides) -> Iterator[CheckResult]:
    """Every check of ``checks`` (default: all) for each backend that runs here (``skipped``
    collects the others) and each dtype (DTYPE_CHECKS in every dtype of ``dtypes``, default
    all of DTYPES; the rest in float32). The long checks run at ``lengths`` in float32 and
    at ``dtype_lengths`` (default: the first of ``lengths``) in the other dtypes: the bugs
    only they show - a state kept in 8 bits, a form computing in float32 - show within 1K
    tokens, at a fraction of the cost. Once a model proves not deterministic, the rest of its
    checks in that dtype are reported as not run: their comparisons would mean nothing."""
    dtypes = [dtype_named(d) for d in dtypes] if dtypes else list(DTYPES)
    for backend in backends or backends_here(name, skipped, **overrides):
        for dtype in dtypes:
            at = lengths if dtype == torch.float32 else dtype_lengths or lengths[:1]
            random_forward = ""
            for check in checks or CHECKS:
                if dtype != torch.float32 and check not in DTYPE_CHECKS:
                    continue
                if random_forward:
                    yield CheckResult(name, check, True, f"not run: {random_forward}", backend,
                                      dtype_name(dtype), skipped=True)
                    continue
                result = run_check(name, check, backend, at, dtype, **overrides)
                if not result.passed and result.detail.startswith("not deterministic"):
                    random_forward = f"the forward is not deterministic in {result.dtype} ({check} failed)"
                yield result


def _label(result: CheckResult) -> str:
    backend = f"backend={result.backend}, " if result.backend else ""
    return f"{result.check} [{backend}{result.dtype}]"


def assert_conformance(name: str, checks: list[str] | None = None, backends: list[str | None] | None = None,
                       lengths: tuple[int, ...] = CHECKED_LENGTHS, dtypes: list[str] | None = None,
                       dtype_lengths: tuple[int, ...] | None = None, **overrides) -> None:
    """For a plugin's own pytest suite: run ``checks`` (default: all, long ones at ``lengths``)
    for every backend that runs here, causality and form agreement in every dtype of
    ``dtypes`` (default float32, bfloat16, float64; see ``run_checks`` for their lengths);
    raise AssertionError listing every failed check."""
    results = run_checks(name, checks, backends, lengths, dtypes, dtype_lengths=dtype_lengths, **overrides)
    failed = [f"{_label(r)}: {r.detail}" for r in results if not r.passed]
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
    parser.add_argument("--dtype", action="append", choices=[dtype_name(d) for d in DTYPES],
                        help=f"causality and form agreement only in these dtypes (default: all; "
                             f"{', '.join(DTYPE_CHECKS)} run in each, the other checks in float32)")
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
        for result in run_checks(name, checks, args.backend, lengths, args.dtype, skipped, **overrides):
            failures += not result.passed
            label = f"{name}[{result.backend}]" if result.backend else name
            verdict = "SKIP" if result.skipped else "PASS" if result.passed else "FAIL"
            print(f"{verdict}  {label:32s} {result.check:24s} {result.dtype:9s} {result.detail}", flush=True)
        for backend, why in skipped.items():
            print(f"SKIP  {name + '[' + backend + ']':32s} cannot run here: {why[:120]}")
    print(f"{len(names)} architecture(s), {failures} failed check(s); long checks at lengths {list(lengths)} "
          f"(float32), {list(lengths[:1])} (bfloat16, float64)")
    return 1 if failures else 0


__all__ = ["BATCH", "CAUSAL_CHECKS", "CHECKED_LENGTHS", "CHECKS", "DTYPES", "DTYPE_CHECKS", "GRAD_LEAK_RTOLS",
           "LENGTH", "LONG_CHECKS", "LONG_LENGTHS", "RTOL", "RTOLS", "SHORT_CHECKS", "SPLIT", "VOCAB", "CheckResult",
           "ConformanceError", "assert_conformance", "backends_here", "build_tiny", "conformance_note", "main",
           "measured_state_bytes", "run_check", "run_checks",
           *[f.__name__ for f in CHECKS.values()]]
