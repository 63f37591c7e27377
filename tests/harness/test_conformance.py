"""The built-in architectures pass the conformance suite (plugins run it themselves with
``assert_conformance``, so an installed plugin cannot fail this project's tests).

The cases come from ``harness.conformance.plan`` - the same plan the reports quote per
architecture: the short checks for every built-in and every backend that runs here (the
causality and form-agreement ones in float32, bfloat16 and float64); the long checks for
the default backend of each distinct mixer at plan.REPRESENTATIVE in float32 and
plan.OTHER_DTYPE in bfloat16 / float64, and for every other backend and variant at
plan.OTHER (token-by-token passes and the reference backends are slow on a CPU).
"""
import pytest

from archs import arch_info
from harness.conformance import CHECKS, DTYPE_CHECKS, LONG_CHECKS, SHORT_CHECKS, build_tiny, main, run_check
from harness.conformance.plan import (OTHER_DTYPES, builtins, coverage, long_cases, mixer_kinds,
                                      representatives, short_cases)

SHORT_CASES = short_cases()
LONG_CASES = long_cases()


def _assert_passes(arch, check, backend=None, lengths=(), dtype="float32"):
    result = run_check(arch, check, backend, lengths, dtype)
    assert result.passed and not result.skipped, f"{arch} [{backend or 'default'}, {dtype}] {check}: {result.detail}"


# training is checked once per architecture, with its default backend
SHORT = [(a, b, c) for a, b in SHORT_CASES for c in SHORT_CHECKS if not (b and c == "learns")]


@pytest.mark.slow
@pytest.mark.parametrize("arch,backend,check", SHORT, ids=[f"{a}-{b or 'default'}-{c}" for a, b, c in SHORT])
def test_short_checks(arch, backend, check):
    _assert_passes(arch, check, backend)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", OTHER_DTYPES)
@pytest.mark.parametrize("arch,backend", SHORT_CASES, ids=[f"{a}-{b or 'default'}" for a, b in SHORT_CASES])
def test_short_causality_and_forms_in_other_dtypes(arch, backend, dtype):
    for check in (c for c in DTYPE_CHECKS if c in SHORT_CHECKS):
        _assert_passes(arch, check, backend, dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize("case", LONG_CASES, ids=[c.id for c in LONG_CASES])
def test_long_checks(case):
    _assert_passes(case.arch, case.check, case.backend, case.lengths, case.dtype)


def test_every_mixer_declares_its_tiles_and_the_cases_cover_each_backend_here():
    reps = representatives()
    assert {"Attention", "SlidingWindowAttention", "InfiniAttention", "LinearAttentionMixer",
            "MambaMixer", "Mamba2Mixer", "LSTMMixer"} <= {k for n in reps for k in mixer_kinds(n)}
    tiled = {type(m).__name__: m.tiles() for n in reps for m in build_tiny(n).mixers}
    # cuDNN/torch LSTM has no tiles; cross-attention attends one cache computed at the separator
    assert all(tiled[k] for k in tiled if k not in ("LSTMMixer", "CrossAttention")), tiled
    # each mixer with a reference beside its fast path has its other backend(s) checked too
    assert {c.arch for c in LONG_CASES if c.backend} >= {"linear_attention", "mamba", "mamba2", "sliding_window",
                                                        "transformer"}
    # every built-in gets every long check; each representative in every dtype
    assert {(c.arch, c.check) for c in LONG_CASES} == {(n, c) for n in builtins() for c in LONG_CHECKS}
    assert {(c.arch, c.dtype, c.check) for c in LONG_CASES if c.arch in reps} == {
        (n, d, c) for n in reps for d in ("float32", *OTHER_DTYPES) for c in LONG_CHECKS}


def test_plugins_are_not_run_here():
    assert all(arch_info(n).source.startswith("archs.") for n in builtins())


def test_cli_reports_and_exits_zero(capsys):
    assert main(["transformer", "--check", "shapes", "--backend", "fused"]) == 0
    out = capsys.readouterr().out
    assert "PASS  transformer[fused]" in out and "0 failed" in out and "lengths [1024, 4096] (float32)" in out


def test_cli_runs_the_dtype_checks_in_each_dtype(capsys):
    assert main(["lstm", "--check", "shapes", "--check", "step_matches_forward", "--short"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PASS")]
    assert [(line.split()[2], line.split()[3]) for line in lines] == [
        ("shapes", "float32"), ("step_matches_forward", "float32"), ("step_matches_forward", "bfloat16"),
        ("step_matches_forward", "float64")]


def test_cli_unknown_arch_lists_known():
    with pytest.raises(KeyError, match="Known architectures: .*transformer"):
        main(["no_such_arch"])


def test_reports_can_state_the_checked_lengths_per_architecture():
    from harness.conformance import conformance_note
    assert "1024, 4096 tokens" in conformance_note() and "16384 with --long" in conformance_note()
    assert coverage("mamba").startswith("default backend: float32 causality 1K, 4K; prefill == forward 1K, 4K; "
                                        "step == forward 1K; bfloat16, float64 causality 256;")
    assert coverage("transformer_alibi").startswith("default backend: float32 causality 1K; prefill == forward 1K; "
                                                    "step == forward 256 —")
    assert coverage("no_such_arch") == "unknown here (not registered)"
    assert set(CHECKS) == set(SHORT_CHECKS) | set(LONG_CHECKS)
