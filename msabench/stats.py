"""Statistics for leaderboards: paired significance tests, Holm correction, bootstrap intervals, robustness summaries.

Everything works on plain numpy arrays of per-seed scores, so it can be checked against scipy and statsmodels directly.
Impossible computations (too few seeds, zero variance) give ``nan`` with a reason, never an exception.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

#: paired Wilcoxon signed-rank from this many seed pairs on; paired t-test below it
WILCOXON_MIN_PAIRS = 6
#: bootstrap resamples for confidence intervals of a mean
BOOTSTRAP_RESAMPLES = 9999


@dataclass(frozen=True)
class PairedTest:
    """Result of comparing a method with the reference on seed-matched scores."""

    test: str  # "wilcoxon", "ttest_rel" or "" when no test was possible
    statistic: float
    p_value: float
    n_pairs: int
    reason: str = ""  # why p_value is nan, if it is


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


def paired_test(a: Sequence[float], b: Sequence[float], min_wilcoxon: int = WILCOXON_MIN_PAIRS) -> PairedTest:
    """Two-sided paired test of ``a`` against ``b`` (same order = same seed); nan pairs are dropped.

    Wilcoxon signed-rank (``scipy.stats.wilcoxon``, default zero handling) with at least ``min_wilcoxon`` pairs,
    the paired t-test (``scipy.stats.ttest_rel``) otherwise. The p-value is nan, with a reason, for fewer than
    2 pairs, for identical scores in every pair, and for the t-test when the differences have zero variance.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired arrays differ in length: {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    test = "wilcoxon" if n >= min_wilcoxon else "ttest_rel"
    nan = float("nan")
    if n < 2:
        return PairedTest("", nan, nan, n, f"{n} seed pair(s); a paired test needs at least 2")
    diff = x - y
    if np.all(diff == 0):
        return PairedTest("", nan, nan, n, "identical scores on every seed")
    if test == "ttest_rel" and np.all(diff == diff[0]):
        return PairedTest("", nan, nan, n, "the seed-wise differences have zero variance; t is undefined")
    result = _quiet(stats.wilcoxon if test == "wilcoxon" else stats.ttest_rel, x, y)
    p = float(result.pvalue)
    return PairedTest(test, float(result.statistic), p, n, "" if np.isfinite(p) else "test returned nan")


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values over the finite entries; nan stays nan.

    Sorted ascending, the i-th smallest of m p-values becomes max over j <= i of (m - j + 1) * p_(j), capped at 1:
    the values of ``statsmodels.stats.multitest.multipletests(p, method='holm')[1]`` (checked in the tests), computed
    here because statsmodels runs a full ``gc.collect()`` on every Holm call, which makes large tables slow.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size:
        order = finite[np.argsort(p[finite], kind="stable")]
        m = order.size
        adjusted = np.maximum.accumulate(p[order] * np.arange(m, 0, -1))
        out[order] = np.minimum(adjusted, 1.0)
    return out


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, seed: int = 0,
                 n_resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Bootstrap interval of the mean (``scipy.stats.bootstrap``, BCa, seeded); nan values are dropped.

    Fewer than 2 values give (nan, nan); identical values give (value, value). With very few seeds the interval
    is necessarily coarse (with 3 seeds it cannot be wider than the observed range).
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return float("nan"), float("nan")
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = _quiet(stats.bootstrap, (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                 rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa degenerate: fall back to percentile
        res = _quiet(stats.bootstrap, (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                     rng=np.random.default_rng(seed), method="percentile")
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return low, high


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof = 1; nan for one value) and count of the finite values."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), 0
    std = float(np.std(x, ddof=1)) if x.size > 1 else float("nan")
    return float(np.mean(x)), std, int(x.size)


def robustness_auc(ratios: Sequence[float], scores: Sequence[float]) -> float:
    """Area under the robustness curve: trapezoid rule of ``scores`` over missing ratios (sorted by ratio).

    Not normalised: over r = 0 ... 1 it is in the metric's units, over another range it scales with its width.
    Any nan score makes the area nan (a curve with a hole has no area).
    """
    r = np.asarray(ratios, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if r.shape != s.shape or r.size < 2:
        raise ValueError("robustness_auc needs at least two (ratio, score) points of equal count")
    order = np.argsort(r, kind="stable")
    return float(np.trapezoid(s[order], r[order]))


def effective_robustness(missing: Sequence[float], complete: Sequence[float], baseline_missing: float,
                         baseline_complete: float) -> np.ndarray:
    """Effective robustness of a method against a baseline, per seed.

    After MultiBench (Liang et al., "MultiBench: Multiscale Benchmarks for Multimodal Representation Learning",
    NeurIPS 2021 Datasets and Benchmarks): the score under missing data beyond what the baseline's robustness
    predicts from the method's own complete-data score. With the baseline's seed means ``Mb`` (missing) and
    ``Cb`` (complete), a method with per-seed scores ``M_s`` (missing) and ``C_s`` (complete) has

        ER_s = M_s - C_s * Mb / Cb

    so the baseline itself has mean ER exactly 0, a method that keeps the same share of its complete-data score as
    the baseline scores 0, and ER is in the metric's units with the metric's direction (positive is more robust
    for higher-is-better metrics, negative for MAE). ``Cb == 0`` gives nan.
    """
    m = np.asarray(missing, dtype=np.float64)
    c = np.asarray(complete, dtype=np.float64)
    if m.shape != c.shape:
        raise ValueError("missing and complete scores must be seed-matched arrays of equal length")
    if not np.isfinite(baseline_complete) or baseline_complete == 0:
        return np.full(m.shape, np.nan)
    return m - c * (baseline_missing / baseline_complete)
