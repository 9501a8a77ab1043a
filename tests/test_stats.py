"""Statistics for leaderboards, checked against scipy/statsmodels on the same arrays and hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from msabench.stats import (WILCOXON_MIN_PAIRS, bootstrap_ci, effective_robustness, holm, mean_std, paired_test,
                            robustness_auc)


def test_paired_ttest_below_threshold_matches_scipy():
    a = [0.61, 0.64, 0.58, 0.66]
    b = [0.55, 0.60, 0.57, 0.59]
    res = paired_test(a, b)
    assert WILCOXON_MIN_PAIRS == 6
    assert res.test == "ttest_rel" and res.n_pairs == 4
    ref = sps.ttest_rel(a, b)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)


def test_paired_wilcoxon_from_six_pairs_matches_scipy():
    a = [0.70, 0.66, 0.71, 0.69, 0.75, 0.64, 0.72]
    b = [0.65, 0.67, 0.62, 0.63, 0.64, 0.60, 0.66]
    res = paired_test(a, b)
    assert res.test == "wilcoxon" and res.n_pairs == 7
    assert res.p_value == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-12)


def test_paired_test_drops_nan_pairs():
    a = [0.6, np.nan, 0.7, 0.65]
    b = [0.5, 0.4, 0.55, 0.62]
    res = paired_test(a, b)
    assert res.n_pairs == 3
    assert res.p_value == pytest.approx(sps.ttest_rel([0.6, 0.7, 0.65], [0.5, 0.55, 0.62]).pvalue)


@pytest.mark.parametrize("a, b, reason", [
    ([0.5], [0.4], "at least 2"),
    ([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], "identical"),
    ([1.5, 2.5, 3.5], [1.0, 2.0, 3.0], "zero variance"),  # every difference exactly 0.5: t undefined
])
def test_impossible_tests_give_nan_with_reason(a, b, reason):
    res = paired_test(a, b)
    assert math.isnan(res.p_value)
    assert res.test == ""
    assert reason in res.reason


def test_holm_equals_hand_computation():
    # sorted finite p: 0.01, 0.03, 0.04 (m = 3) -> 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    adjusted = holm([0.01, 0.04, 0.03, float("nan")])
    np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06], rtol=1e-12)
    assert math.isnan(adjusted[3])
    np.testing.assert_allclose(holm([0.2, 0.6]), [0.4, 0.6])  # 0.2*2, max(0.6*1, 0.4)
    assert holm([0.9, 0.8]).max() <= 1.0


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.random.default_rng(5).uniform(0, 0.2, size=9)
    p[3] = p[6]  # a tie
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)


def test_mean_std_by_hand():
    mean, std, n = mean_std([1.0, 2.0, 4.0, np.nan])
    assert mean == pytest.approx(7 / 3)
    assert std == pytest.approx(math.sqrt(7 / 3))  # ((16 + 1 + 25) / 9) / (3 - 1)
    assert n == 3
    assert math.isnan(mean_std([0.5])[1])


def test_bootstrap_ci_covers_mean_and_matches_normal_interval_for_large_samples():
    x = np.random.default_rng(1).normal(0.6, 0.05, size=400)
    low, high = bootstrap_ci(x, seed=3)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert bootstrap_ci(x, seed=3) == (low, high)  # seeded


def test_bootstrap_ci_degenerate_cases():
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))
    assert bootstrap_ci([0.4, 0.4, 0.4]) == (0.4, 0.4)
    low, high = bootstrap_ci([0.60, 0.62, 0.65])
    assert 0.60 <= low <= 0.6233 <= high <= 0.65


def test_auc_is_the_hand_trapezoid_in_any_order():
    r = [0.0, 0.5, 1.0, 0.25]
    s = [1.0, 0.5, 0.0, 0.8]
    # sorted: (0, 1), (0.25, .8), (.5, .5), (1, 0): .25*(1+.8)/2 + .25*(.8+.5)/2 + .5*(.5+0)/2
    assert robustness_auc(r, s) == pytest.approx(0.225 + 0.1625 + 0.125)
    with pytest.raises(ValueError):
        robustness_auc([0.0], [1.0])


def test_effective_robustness_by_hand():
    er = effective_robustness([0.7, 0.5], [0.8, 0.6], baseline_missing=0.6, baseline_complete=0.8)
    np.testing.assert_allclose(er, [0.7 - 0.8 * 0.75, 0.5 - 0.6 * 0.75])
    assert np.isnan(effective_robustness([0.7], [0.8], 0.6, 0.0)).all()
