"""harness.report.fit: power-law exponents with confidence intervals, crossover lengths."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from harness.report.fit import (
    _t975_fallback, crossover, crossover_table, fit_exponent, fit_power_law, t_quantile_975,
)

LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192]


def frame(curves, lengths=LENGTHS, noise=0.0, seed=0, **extra):
    """Rows y = c * L^p per (arch, c, p), multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    rows = [dict(arch=arch, mode="forward", status="ok", seq_len=L,
                 time_ms=c * L**p * math.exp(rng.normal(0, noise)), **extra)
            for arch, c, p in curves for L in lengths]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- exponents


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_recovers_known_exponent_with_noise(power):
    df = frame([("x", 1e-3, power)], noise=0.05, seed=int(power))
    fit = fit_exponent(df, last_k=None).iloc[0]
    assert fit.ci_low < power < fit.ci_high  # the interval covers the truth
    assert fit.ci_low <= fit.slope <= fit.ci_high
    assert fit.ci_high - fit.ci_low < 0.3
    assert (fit.n_points, fit.x_min, fit.x_max) == (7, 128, 8192)


@pytest.mark.slow
def test_confidence_interval_coverage_is_about_95_percent():
    hits = 0
    for seed in range(200):
        fit = fit_power_law(LENGTHS, [2.0 * L**1.5 * math.exp(e) for L, e in
                                      zip(LENGTHS, np.random.default_rng(seed).normal(0, 0.1, 7))],
                            last_k=None)
        hits += fit.ci_low < 1.5 < fit.ci_high
    assert 180 <= hits <= 199  # 95% of 200 = 190, binomial sd ~3


def test_exact_power_law_and_default_range_is_longest_lengths():
    fit = fit_exponent(frame([("x", 3.0, 2.0)])).iloc[0]
    assert fit.slope == pytest.approx(2.0, abs=1e-9) and fit.prefactor == pytest.approx(3.0)
    assert (fit.n_points, fit.x_min, fit.x_max) == (4, 1024, 8192)
    fit = fit_exponent(frame([("x", 3.0, 2.0)]), min_x=500, last_k=None).iloc[0]
    assert (fit.n_points, fit.x_min) == (5, 512)


def test_only_ok_rows_and_repeats_reduce_to_medians():
    df = frame([("x", 1.0, 1.0)])
    bad = pd.DataFrame([dict(arch="x", mode="forward", status="oom", seq_len=8192, time_ms=1e9)])
    repeat = df.assign(time_ms=df.time_ms * 1.0)
    fit = fit_exponent(pd.concat([df, bad, repeat, repeat]), last_k=None).iloc[0]
    assert fit.slope == pytest.approx(1.0) and fit.n_points == 7


def test_degenerate_inputs_give_nan_and_reason():
    one = fit_exponent(frame([("x", 1.0, 1.0)], lengths=[128])).iloc[0]
    assert math.isnan(one.slope) and "need >= 2 distinct lengths" in one.reason
    two = fit_exponent(frame([("x", 1.0, 1.0)], lengths=[128, 256])).iloc[0]
    assert two.slope == pytest.approx(1.0) and math.isnan(two.ci_low) and "no confidence" in two.reason
    failed = frame([("x", 1.0, 1.0)]).assign(status="timeout")
    row = fit_exponent(failed).iloc[0]
    assert math.isnan(row.slope) and "no status=ok rows" in row.reason


def test_series_are_separated_by_backend():
    df = pd.concat([frame([("m", 1.0, 1.0)], backend="ref"), frame([("m", 1.0, 2.0)], backend="fast")])
    fits = fit_exponent(df).set_index("backend")
    assert fits.loc["ref", "slope"] == pytest.approx(1.0) and fits.loc["fast", "slope"] == pytest.approx(2.0)


def test_fit_exponent_rejects_missing_columns():
    with pytest.raises(ValueError, match="columns 'seq_len' and 'tokens'"):
        fit_exponent(frame([("x", 1.0, 1.0)]), y="tokens")


def test_t_quantile_fallback_matches_scipy():
    pytest.importorskip("scipy")
    for dof in range(1, 80):
        assert _t975_fallback(dof) == pytest.approx(t_quantile_975(dof), abs=2e-3)
    assert math.isnan(t_quantile_975(0))


# ---------------------------------------------------------------- crossovers


def test_crossover_of_two_power_laws_at_known_length():
    # 1e-5 L^2 = 1e-2 L  <=>  L = 1000; exact power laws are straight in log-log,
    # so log-log interpolation between the measured lengths is exact.
    df = frame([("attn", 1e-5, 2.0), ("ssm", 1e-2, 1.0)])
    c = crossover(df, "attn", "ssm", mode="forward")
    assert c.x == pytest.approx(1000.0, rel=1e-9)
    assert (c.method, c.extrapolated, c.n_crossings, c.a_lower_below) == ("interpolated", False, 1, True)
    assert crossover(df, "ssm", "attn").a_lower_below is False


def test_crossover_outside_range_comes_from_fits_and_is_flagged():
    df = frame([("attn", 1e-5, 2.0), ("ssm", 1e-2, 1.0)], lengths=[2048, 4096, 8192])
    c = crossover(df, "attn", "ssm")
    assert c.extrapolated and c.method == "fit" and c.x == pytest.approx(1000.0, rel=1e-6)
    assert "no crossing measured between 2048 and 8192" in c.reason


def test_parallel_curves_never_cross():
    c = crossover(frame([("a", 1.0, 1.0), ("b", 2.0, 1.0)]), "a", "b")
    assert c.x is None and "parallel" in c.reason


def test_crossover_input_errors():
    df = pd.concat([frame([("a", 1.0, 1.0), ("b", 1.0, 2.0)]),
                    frame([("a", 1.0, 1.0)]).assign(mode="train")])
    with pytest.raises(ValueError, match="mix mode values"):
        crossover(df, "a", "b")
    with pytest.raises(ValueError, match="no rows for 'c'"):
        crossover(df, "a", "c", mode="forward")


@pytest.mark.slow
def test_crossover_table_all_pairs_per_mode():
    df = frame([("a", 1e-5, 2.0), ("b", 1e-2, 1.0), ("c", 1.0, 0.5)])
    table = crossover_table(pd.concat([df, df.assign(mode="train")]))
    assert len(table) == 6  # 3 pairs x 2 modes
    ab = table[(table.a == "a") & (table.b == "b")]
    assert ab.x.tolist() == pytest.approx([1000.0, 1000.0])


def test_labelled_series_stay_one_curve_across_backends():
    import pandas as pd
    from harness.report.fit import by_series
    df = pd.DataFrame({"arch": ["sw", "sw", "t", "t"], "label": ["sw", "sw", "t_math", "t_math"],
                       "backend": ["sdpa", "blocked", "math", "math"]})
    out = by_series(df)
    assert out["arch"].tolist() == ["sw", "sw", "t_math", "t_math"]
    assert out["backend"].tolist() == ["blocked+sdpa", "blocked+sdpa", "math", "math"]


def test_fits_meeting_far_outside_the_data_are_not_reported():
    import pandas as pd
    from harness.report.fit import crossover
    xs = [256, 512, 1024, 2048]
    rows = [{"arch": "a", "seq_len": x, "time_ms": 1.0 + 1e-6 * x, "status": "ok"} for x in xs]
    rows += [{"arch": "b", "seq_len": x, "time_ms": 2.0, "status": "ok"} for x in xs]
    c = crossover(pd.DataFrame(rows), "a", "b")
    assert c.x is None and "within 4x" in c.reason
