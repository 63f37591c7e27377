"""Scaling exponents and crossover lengths from result rows, each with its uncertainty.

``fit_exponent`` fits ``log y = log c + s log x`` by least squares per series and
reports the slope ``s`` (≈2 for dense attention time, ≈1 for a recurrent mixer) with
a 95% confidence interval. ``crossover`` finds the length where one architecture's
curve crosses another's, with an interval. Only status=ok rows with positive, finite x
and y are used; repeated measurements at one length are reduced to their median first,
so a length measured five times does not count as five independent points.

Neither is printed as a finding when the data cannot support it ("not resolved", with
the reason in ``unresolved``):

* an exponent whose fit has no confidence interval (2 lengths), whose 95% CI is wider
  than ±MAX_CI_HALF_WIDTH (it cannot tell L^1 from L^2), or whose slope is clearly
  non-zero but with r² < MIN_R2 (the points do not lie on a power law; a flat curve -
  decode time of a recurrent model - has nothing for r² to explain, so there the CI
  alone decides);
* a measured crossover where the two curves' p10–p90 bands (``time_ms_p10`` /
  ``time_ms_p90``; the spread of repeated rows without them) overlap at every measured
  length on one side of it, or that crosses more than once; its interval runs from where
  one curve stops being clearly faster to where the other clearly is;
* a crossover extrapolated from fits that are not resolved, or whose slopes' 95% CIs
  overlap (the fits may never meet); its interval comes from the slopes' CIs.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from harness.report.series import SERIES_KEYS, by_series, curve_labels  # noqa: F401 - one series identity

# Why 4: the asymptotic exponent shows at long lengths; short ones are dominated by
# fixed overheads (launches, Python) that flatten the slope.
DEFAULT_LAST_K = 4
# An exponent is "not resolved" beyond these (see the module doc): a 95% CI of ±0.5 is
# the widest that still tells L^1 from L^2 apart, and a power law explaining less than
# 90% of the variation of a clearly sloped curve is not the curve's law.
MAX_CI_HALF_WIDTH = 0.5
MIN_R2 = 0.9

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (used when
# scipy is not installed).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t (scipy if installed, else table / expansion)."""
    if dof < 1:
        return math.nan
    try:
        from scipy import stats
    except ImportError:
        return _t975_fallback(dof)
    return float(stats.t.ppf(0.975, dof))


def _t975_fallback(dof: int) -> float:
    if dof <= len(_T975):
        return _T975[dof - 1]
    # Cornish-Fisher expansion around the normal quantile; error < 1e-4 for dof > 30.
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def _usable(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    if x not in df.columns or y not in df.columns:
        raise ValueError(f"columns {x!r} and {y!r} are needed; the frame has {list(df.columns)}")
    ok = df["status"] == "ok" if "status" in df.columns else pd.Series(True, index=df.index)
    d = df.loc[ok, :].copy()
    d[x] = pd.to_numeric(d[x], errors="coerce").astype(float)
    d[y] = pd.to_numeric(d[y], errors="coerce").astype(float)
    return d[np.isfinite(d[x]) & np.isfinite(d[y]) & (d[x] > 0) & (d[y] > 0)]


@dataclass
class PowerFit:
    """y ≈ prefactor · x^slope over [x_min, x_max] (``n_points`` distinct x)."""

    slope: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    stderr: float = math.nan
    prefactor: float = math.nan
    r2: float = math.nan
    n_points: int = 0
    x_min: float = math.nan
    x_max: float = math.nan
    reason: str = ""
    unresolved: str = ""   # why the exponent is "not resolved" ("" when it is)
    x_center: float = math.nan  # mean log x and log y of the fitted points: the line pivots there
    y_center: float = math.nan

    def predict(self, x: float) -> float:
        return self.prefactor * x**self.slope

    def judge(self) -> "PowerFit":
        """Set ``unresolved`` (module doc); returns self."""
        half = (self.ci_high - self.ci_low) / 2
        if not math.isfinite(self.slope):
            self.unresolved = "no fit"
        elif not math.isfinite(half):
            self.unresolved = f"{self.n_points} lengths give no confidence interval"
        elif half > MAX_CI_HALF_WIDTH:
            self.unresolved = f"95% CI ±{half:.2f}, wider than ±{MAX_CI_HALF_WIDTH:g}"
        elif math.isfinite(self.r2) and self.r2 < MIN_R2 and not self.ci_low <= 0 <= self.ci_high:
            self.unresolved = f"poor fit: r² {self.r2:.2f} < {MIN_R2:g}"
        else:
            self.unresolved = ""
        return self


def fit_power_law(xs: Sequence[float], ys: Sequence[float], *, min_x: float | None = None,
                  last_k: int | None = DEFAULT_LAST_K) -> PowerFit:
    """Log-log least squares on (x, y) pairs; medians per distinct x; the ``last_k``
    largest x at or above ``min_x``. Too few points give NaN with a ``reason``."""
    pts = pd.DataFrame({"x": np.asarray(xs, float), "y": np.asarray(ys, float)})
    pts = pts[np.isfinite(pts.x) & np.isfinite(pts.y) & (pts.x > 0) & (pts.y > 0)]
    if min_x is not None:
        pts = pts[pts.x >= min_x]
    med = pts.groupby("x")["y"].median().sort_index()
    if last_k is not None:
        med = med.iloc[-last_k:]
    n = len(med)
    if n < 2:
        return PowerFit(n_points=n, reason=f"need >= 2 distinct lengths to fit, got {n}").judge()
    lx, ly = np.log(med.index.to_numpy(float)), np.log(med.to_numpy(float))
    slope, intercept = np.polyfit(lx, ly, 1)
    resid = ly - (intercept + slope * lx)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    fit = PowerFit(float(slope), prefactor=float(math.exp(intercept)), r2=r2, n_points=n,
                   x_min=float(med.index.min()), x_max=float(med.index.max()),
                   x_center=float(lx.mean()), y_center=float(ly.mean()))
    if n == 2:
        fit.reason = "2 lengths: exact line, no confidence interval"
        return fit.judge()
    sxx = float(((lx - lx.mean()) ** 2).sum())
    fit.stderr = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
    half = t_quantile_975(n - 2) * fit.stderr
    fit.ci_low, fit.ci_high = fit.slope - half, fit.slope + half
    return fit.judge()


def fit_exponent(df: pd.DataFrame, x: str = "seq_len", y: str = "time_ms",
                 by: Sequence[str] | None = None, min_x: float | None = None,
                 last_k: int | None = DEFAULT_LAST_K) -> pd.DataFrame:
    """One row per series: the ``by`` columns, slope, ci_low, ci_high (95%), stderr,
    prefactor, r2, n_points, x_min, x_max (the range actually fitted), reason.

    ``by`` defaults to the SERIES_KEYS present in ``df``. Series with no usable row
    still appear (NaN, with a reason) so a failed architecture is visible."""
    df = df.reset_index(drop=True)  # concatenated frames repeat labels; rows are matched by label below
    by = [c for c in (SERIES_KEYS if by is None else by) if c in df.columns]
    if not by:
        raise ValueError(f"none of the grouping columns {SERIES_KEYS} are in the frame")
    usable = _usable(df, x, y)
    out = []
    for key, group in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows = usable.loc[usable.index.intersection(group.index)]
        fit = fit_power_law(rows[x], rows[y], min_x=min_x, last_k=last_k)
        if len(rows) == 0:
            fit.reason = f"no status=ok rows with positive {y}"
        out.append({**dict(zip(by, key)), **asdict(fit)})
    return pd.DataFrame(out, columns=[*by, *PowerFit.__dataclass_fields__])


# ---------------------------------------------------------------- crossovers

# Extrapolated crossovers are reported only within this factor of the measured lengths.
MAX_EXTRAPOLATION = 4.0

# Within one comparison these must be constant; crossover_table groups by them.
CONTEXT_KEYS: tuple[str, ...] = ("mode", "dtype", "batch", "device")


@dataclass
class Crossover:
    """Where curve ``a`` crosses curve ``b``. ``x`` is None when they never meet.

    method: "interpolated" (a sign change between two measured lengths, located by
    linear interpolation in log-log), "fit" (no crossing inside the measured range;
    the two power-law fits meet at ``x``: ``extrapolated`` is True) or "none".
    ``a_lower_below``: whether a's y is the smaller one below the crossing (for time,
    "a is faster at short lengths")."""

    a: str
    b: str
    x: float | None = None
    extrapolated: bool = False
    method: str = "none"
    a_lower_below: bool | None = None
    n_crossings: int = 0
    reason: str = ""
    x_low: float | None = None    # the interval (module doc); None when not resolved
    x_high: float | None = None
    unresolved: str = ""          # why it is "not resolved" ("" when it is)


def _bands(df: pd.DataFrame, label: str, labels: pd.Series, x: str, y: str) -> pd.DataFrame:
    """Per length: the median ``mid`` of curve ``label`` and its spread [lo, hi] (the medians
    of ``<y>_p10`` / ``<y>_p90`` where the rows have them, else the range of the rows)."""
    rows = df[labels == label]
    groups = rows.groupby(x)
    out = pd.DataFrame({"mid": groups[y].median(), "lo": groups[y].min(), "hi": groups[y].max()})
    for side, column in (("lo", f"{y}_p10"), ("hi", f"{y}_p90")):
        if column in rows.columns:
            measured = groups[column].median()
            out[side] = measured.where(measured > 0, out[side])
    return out.sort_index()


def crossover(df: pd.DataFrame, a: str, b: str, *, x: str = "seq_len", y: str = "time_ms",
              **filters: object) -> Crossover:
    """Length at which curve ``a`` crosses curve ``b`` (labels as in ``curve_labels``),
    among rows matching ``filters`` (e.g. ``mode="forward"``). See ``Crossover``."""
    df = df.reset_index(drop=True)  # rows are matched by label below
    for col, value in filters.items():
        if col not in df.columns:
            raise ValueError(f"filter column {col!r} is not in the frame")
        df = df[df[col] == value]
    labels_all = curve_labels(df)
    for name in (a, b):
        if name not in set(labels_all):
            raise ValueError(f"no rows for {name!r}; curves here are {sorted(set(labels_all))} "
                             "(an arch measured with several backends is named 'arch[backend]')")
    both = df[labels_all.isin([a, b])]
    for col in CONTEXT_KEYS:
        if col in both.columns and both[col].nunique(dropna=False) > 1:
            values = sorted(map(str, both[col].unique()))
            raise ValueError(f"rows for {a} and {b} mix {col} values {values}; pass {col}=... to choose one")
    usable = _usable(both, x, y)
    labels = labels_all.loc[usable.index]
    return _locate(a, b, _bands(usable, a, labels, x, y), _bands(usable, b, labels, x, y))


def _zero(lx: np.ndarray, g: np.ndarray, i: int) -> float:
    """Where g (log-log) crosses 0 between lengths i and i + 1, by linear interpolation."""
    return float(math.exp(lx[i] + (lx[i + 1] - lx[i]) * g[i] / (g[i] - g[i + 1]))) if g[i] != g[i + 1] \
        else float(math.exp(lx[i]))


def _interval(result: Crossover, lx: np.ndarray, low: pd.DataFrame, high: pd.DataFrame, i: int) -> None:
    """Set the interval of a measured crossing between lengths i and i + 1 of ``lx``: from
    where the curve lower below it stops being clearly lower (its p90 under the other's
    p10) to where the other clearly is; "not resolved" when either never happens."""
    unclear = np.log(low["hi"].to_numpy(float)) - np.log(high["lo"].to_numpy(float))  # < 0: low clearly lower
    clear = np.log(low["lo"].to_numpy(float)) - np.log(high["hi"].to_numpy(float))    # > 0: high clearly lower
    below = [j for j in range(i + 1) if unclear[j] < 0]
    above = [j for j in range(i + 1, len(lx)) if clear[j] > 0]
    if result.n_crossings > 1:
        result.unresolved = f"the curves cross {result.n_crossings} times (noise at these lengths?)"
    elif not below or not above:
        side = "below" if not below else "above"
        result.unresolved = f"their p10–p90 bands overlap at every measured length {side} it"
    else:
        result.x_low, result.x_high = _zero(lx, unclear, below[-1]), _zero(lx, clear, above[0] - 1)


def _locate(a: str, b: str, band_a: pd.DataFrame, band_b: pd.DataFrame) -> Crossover:
    common = band_a.index.intersection(band_b.index).sort_values()
    result = Crossover(a, b)
    if len(common) >= 2:
        lx = np.log(common.to_numpy(float))
        d = np.log(band_a.loc[common, "mid"].to_numpy(float)) - np.log(band_b.loc[common, "mid"].to_numpy(float))
        found = []
        for i in range(len(d) - 1):
            if d[i] == 0:
                found.append((lx[i], i))
            elif d[i] * d[i + 1] < 0:
                found.append((lx[i] + (lx[i + 1] - lx[i]) * d[i] / (d[i] - d[i + 1]), i))
        if found:
            lxc, i = found[0]
            below = d[i] if d[i] != 0 else (d[i - 1] if i > 0 else -d[i + 1])
            result.x, result.method, result.n_crossings = float(math.exp(lxc)), "interpolated", len(found)
            result.a_lower_below = bool(below < 0)
            low, high = (band_a, band_b) if result.a_lower_below else (band_b, band_a)
            _interval(result, lx, low.loc[common], high.loc[common], i)
            return result
    return _from_fits(result, band_a["mid"], band_b["mid"], common)


def _from_fits(result: Crossover, ya: pd.Series, yb: pd.Series, common: pd.Index) -> Crossover:
    fa = fit_power_law(ya.index, ya.to_numpy())
    fb = fit_power_law(yb.index, yb.to_numpy())
    span = f"between {common.min():g} and {common.max():g}" if len(common) else "at any shared length"
    if math.isnan(fa.slope) or math.isnan(fb.slope):
        result.reason = f"no crossing measured {span}, and too few points to fit ({fa.reason or fb.reason})"
        return result
    if math.isclose(fa.slope, fb.slope, rel_tol=1e-9, abs_tol=1e-12):
        result.reason = f"no crossing measured {span}; the fits are parallel (slope {fa.slope:.3g})"
        return result
    lxc = (math.log(fb.prefactor) - math.log(fa.prefactor)) / (fa.slope - fb.slope)
    lo, hi = float(common.min()), float(common.max())
    if len(common) and not math.log(lo / MAX_EXTRAPOLATION) <= lxc <= math.log(hi * MAX_EXTRAPOLATION):
        # Fits meeting far outside the data say nothing about the architectures.
        result.reason = (f"no crossing measured {span}, nor within {MAX_EXTRAPOLATION:g}x of that "
                         f"range by the fits")
        return result
    result.x, result.method, result.extrapolated = float(math.exp(lxc)), "fit", True
    # Below the crossing the steeper curve is the lower one.
    result.a_lower_below = bool(fa.slope > fb.slope)
    result.reason = f"no crossing measured {span}; power-law fits over the longest lengths meet here"
    _fit_interval(result, fa, fb)
    return result


def _fit_interval(result: Crossover, fa: PowerFit, fb: PowerFit) -> None:
    """The interval of a crossing of two fits: each line pivots about its centre of mass
    with its slope anywhere in its 95% CI; "not resolved" if a fit is, or if the slopes'
    CIs overlap (then the lines may never meet)."""
    if fa.unresolved or fb.unresolved:
        result.unresolved = f"a fit is not resolved ({fa.unresolved or fb.unresolved})"
        return
    if fa.ci_low <= fb.ci_high and fb.ci_low <= fa.ci_high:
        result.unresolved = (f"the slopes' 95% CIs overlap ([{fa.ci_low:.2f}, {fa.ci_high:.2f}] and "
                             f"[{fb.ci_low:.2f}, {fb.ci_high:.2f}]): the fits may never meet")
        return
    ends = [(fb.y_center - fa.y_center + sa * fa.x_center - sb * fb.x_center) / (sa - sb)
            for sa in (fa.ci_low, fa.ci_high) for sb in (fb.ci_low, fb.ci_high)]
    result.x_low, result.x_high = float(math.exp(min(ends))), float(math.exp(max(ends)))


def crossover_table(df: pd.DataFrame, x: str = "seq_len", y: str = "time_ms",
                    by: Sequence[str] = CONTEXT_KEYS) -> pd.DataFrame:
    """``crossover`` for every pair of curves within each group of ``by`` columns."""
    by = [c for c in by if c in df.columns]
    out = []
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        for a, b in itertools.combinations(sorted(set(curve_labels(group))), 2):
            c = crossover(group, a, b, x=x, y=y)
            out.append({**dict(zip(by, key)), **asdict(c)})
    return pd.DataFrame(out, columns=[*by, *Crossover.__dataclass_fields__])
