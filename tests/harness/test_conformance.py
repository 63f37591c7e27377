"""The built-in architectures pass the conformance suite (plugins run it themselves with
``assert_conformance``, so an installed plugin cannot fail this project's tests).

Short checks: every built-in with its default backend, and every other backend that runs
here (minus the training check). Long checks (1K and 4K tokens): once per distinct mixer
(the first built-in using it) with its default backend at CHECKED_LENGTHS; each other
backend that runs here, and each other variant of a mixer (positional encodings, RetNet's
decay), at the first of them - the reference backends are quadratic or Python loops,
minutes at 4K on CPU.
"""
import pytest

from archs import arch_info, list_archs
from harness.conformance import (CHECKED_LENGTHS, LONG_CHECKS, SHORT_CHECKS, backends_here,
                                 build_tiny, main, run_check)

BUILTINS = [n for n in list_archs() if arch_info(n).source.startswith("archs.")]


def _mixer_kinds(name):
    return tuple(sorted({type(m).__name__ for m in build_tiny(name).mixers}))


def _representatives():
    seen = {}
    for name in BUILTINS:
        seen.setdefault((_mixer_kinds(name), arch_info(name).family), name)
    return sorted(seen.values())


def _other_backends(name):
    default = build_tiny(name).backends("cpu", CHECKED_LENGTHS[-1])
    return [b for b in backends_here(name) if b is not None and b != default]


REPRESENTATIVES = _representatives()
OTHER = [(name, b) for name in REPRESENTATIVES for b in _other_backends(name)]
LONG_CASES = [(name, None, CHECKED_LENGTHS) for name in REPRESENTATIVES] + \
    [(name, b, CHECKED_LENGTHS[:1]) for name, b in OTHER] + \
    [(name, None, CHECKED_LENGTHS[:1]) for name in BUILTINS if name not in REPRESENTATIVES]


def _assert_passes(name, check, backend=None, lengths=CHECKED_LENGTHS):
    result = run_check(name, check, backend, lengths)
    assert result.passed, f"{name} [{backend or 'default'}] {check}: {result.detail}"


@pytest.mark.parametrize("check", list(SHORT_CHECKS))
@pytest.mark.parametrize("arch", BUILTINS)
def test_short_checks(arch, check):
    _assert_passes(arch, check)


@pytest.mark.parametrize("check", [c for c in SHORT_CHECKS if c != "learns"])
@pytest.mark.parametrize("arch,backend", OTHER)
def test_short_checks_other_backends(arch, backend, check):
    _assert_passes(arch, check, backend)


@pytest.mark.parametrize("check", list(LONG_CHECKS))
@pytest.mark.parametrize("arch,backend,lengths", LONG_CASES,
                         ids=[f"{a}-{b or 'default'}-{'_'.join(map(str, ls))}" for a, b, ls in LONG_CASES])
def test_long_checks(arch, backend, lengths, check):
    _assert_passes(arch, check, backend, lengths)


def test_every_mixer_declares_its_tiles_and_the_cases_cover_each_backend_here():
    assert {"Attention", "SlidingWindowAttention", "InfiniAttention", "LinearAttentionMixer",
            "MambaMixer", "Mamba2Mixer", "LSTMMixer"} <= {k for n in REPRESENTATIVES for k in _mixer_kinds(n)}
    tiled = {type(m).__name__: m.tiles() for n in REPRESENTATIVES for m in build_tiny(n).mixers}
    # cuDNN/torch LSTM has no tiles; cross-attention attends one cache computed at the separator
    assert all(tiled[k] for k in tiled if k not in ("LSTMMixer", "CrossAttention")), tiled
    # each mixer with a reference beside its fast path has its other backend(s) checked too
    assert {n for n, _ in OTHER} >= {"linear_attention", "mamba", "mamba2", "sliding_window", "transformer"}


def test_plugins_are_not_run_here():
    assert all(arch_info(n).source.startswith("archs.") for n in BUILTINS)


def test_cli_reports_and_exits_zero(capsys):
    assert main(["transformer", "--check", "shapes", "--backend", "fused"]) == 0
    out = capsys.readouterr().out
    assert "PASS  transformer[fused]" in out and "0 failed" in out and "lengths [1024, 4096]" in out


def test_cli_unknown_arch_lists_known():
    with pytest.raises(KeyError, match="Known architectures: .*transformer"):
        main(["no_such_arch"])


def test_reports_can_state_the_checked_lengths():
    from harness.conformance import conformance_note
    assert "1024, 4096 tokens" in conformance_note() and "16384 with --long" in conformance_note()
