"""Metrics against hand-computed values (MMSA / MulT conventions)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from msabench.data.base import EMOTION_IEMOCAP, REGRESSION_MOSI, REGRESSION_SIMS, Task
from msabench.metrics import (
    METRIC_DIRECTION,
    SELECTION_METRIC,
    compute_metrics,
    iemocap_metrics,
    metric_direction,
    mosi_metrics,
    multiclass_metrics,
    selection_score,
    sims_metrics,
)


def _no_warnings(fn, *args):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args)
    assert [str(w.message) for w in caught] == []
    return out


# ---------------------------------------------------------------------------------------------------- mosi


def test_mosi_ties_at_zero_has0_vs_non0():
    truth = np.array([0.0, 0.0, 1.0, -1.0])
    pred = np.array([0.5, -0.5, 2.0, 0.3])
    m = _no_warnings(mosi_metrics, pred, truth)
    # Has0: truth >= 0 -> T T T F, pred >= 0 -> T F T T
    assert m["Has0_acc_2"] == pytest.approx(0.5)
    # class True: P = R = 2/3 -> F1 2/3 (support 3); class False: F1 0 (support 1)
    assert m["Has0_F1"] == pytest.approx(0.75 * 2 / 3)
    # Non0 keeps samples 2, 3: truth T F, pred T T
    assert m["Non0_acc_2"] == pytest.approx(0.5)
    assert m["Non0_F1"] == pytest.approx(0.5 * 2 / 3)
    # rounded: pred 0, -0, 2, 0 vs truth 0, 0, 1, -1
    assert m["Mult_acc_5"] == pytest.approx(0.5)
    assert m["Mult_acc_7"] == pytest.approx(0.5)
    assert m["MAE"] == pytest.approx(3.3 / 4)
    # truth mean 0: cov = sum p*t = 1.7, sum t^2 = 2, sum (p - 0.575)^2 = 3.2675
    assert m["Corr"] == pytest.approx(1.7 / math.sqrt(2 * 3.2675))


def test_mosi_zero_counts_as_positive_in_has0():
    truth = np.array([0.0, 0.0, 2.0])
    pred = np.array([0.0, 1.0, -1.0])
    m = mosi_metrics(pred, truth)
    # truth >= 0: T T T; pred >= 0: T T F
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)
    assert m["Has0_F1"] == pytest.approx(0.8)  # only class True: P 1, R 2/3
    # Non0 keeps sample 2 only: truth T, pred F
    assert m["Non0_acc_2"] == 0.0 and m["Non0_F1"] == 0.0


def test_mosi_round_half_to_even_and_clipping():
    truth = np.array([2.5, 2.0, -2.5, 1.5, 0.5, 3.0])
    pred = np.array([2.0, 2.4, -2.0, 2.0, 0.0, 2.2])
    m = mosi_metrics(pred, truth)
    # np.round: 2.5 -> 2, -2.5 -> -2, 1.5 -> 2, 0.5 -> 0; only 3.0 vs 2.2 differs in [-3, 3]
    assert m["Mult_acc_7"] == pytest.approx(5 / 6)
    # clipped to [-2, 2]: 3.0 -> 2 and 2.2 -> 2 agree as well
    assert m["Mult_acc_5"] == pytest.approx(1.0)


def test_mosi_mae_uses_unclipped_values():
    m = mosi_metrics(np.array([5.0, -1.0]), np.array([3.0, -1.0]))
    assert m["MAE"] == pytest.approx(1.0)
    assert m["Mult_acc_7"] == pytest.approx(1.0)


def test_mosi_one_class_inputs():
    m = _no_warnings(mosi_metrics, np.array([0.1, 0.2, 3.0]), np.array([1.0, 2.0, 0.5]))
    assert m["Has0_acc_2"] == 1.0 and m["Has0_F1"] == 1.0
    assert m["Non0_acc_2"] == 1.0 and m["Non0_F1"] == 1.0
    m = _no_warnings(mosi_metrics, np.array([-1.0, -2.0]), np.array([1.0, 2.0]))
    assert m["Has0_acc_2"] == 0.0 and m["Has0_F1"] == 0.0
    assert m["Non0_acc_2"] == 0.0 and m["Non0_F1"] == 0.0
    assert m["Corr"] == pytest.approx(-1.0)


def test_mosi_all_zero_truth_gives_nan_non0():
    m = _no_warnings(mosi_metrics, np.array([1.0, -1.0]), np.array([0.0, 0.0]))
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1"])
    assert m["Has0_acc_2"] == pytest.approx(0.5)
    assert m["Has0_F1"] == pytest.approx(2 / 3)  # class True: P 1, R 1/2
    assert math.isnan(m["Corr"])  # constant truth


def test_mosi_constant_prediction_corr_nan_without_warning():
    m = _no_warnings(mosi_metrics, np.array([0.3, 0.3, 0.3]), np.array([1.0, -1.0, 2.0]))
    assert math.isnan(m["Corr"])
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)
    assert m["Has0_F1"] == pytest.approx(2 / 3 * 0.8)  # class True: P 2/3, R 1 -> F1 0.8
    assert m["MAE"] == pytest.approx((0.7 + 1.3 + 1.7) / 3)


def test_single_sample_corr_nan():
    m = _no_warnings(mosi_metrics, np.array([0.5]), np.array([1.0]))
    assert math.isnan(m["Corr"])
    assert m["MAE"] == pytest.approx(0.5)


def test_torch_inputs_match_numpy():
    truth = [0.0, 0.0, 1.0, -1.0]
    pred = [0.5, -0.5, 2.0, 0.3]
    from_torch = mosi_metrics(torch.tensor(pred, requires_grad=True).view(4, 1), torch.tensor(truth))
    assert from_torch["Has0_F1"] == pytest.approx(0.5)
    assert from_torch["MAE"] == pytest.approx(0.825)
    assert all(isinstance(v, float) for v in from_torch.values())


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        mosi_metrics(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------------------------------------------- sims


SIMS_TRUTH = [-0.1, 0.1, -0.7, 0.7, 0.0, 1.5]
SIMS_PRED = [-0.09, 0.1, -0.69, 0.71, 0.0, -2.0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sims_bin_edges(dtype):
    m = _no_warnings(sims_metrics, np.array(SIMS_PRED, dtype=dtype), np.array(SIMS_TRUTH, dtype=dtype))
    # truth classes  2: 0 1 0 1 0 1   3: 0 1 0 2 1 2   5: 1 2 0 3 2 4
    # pred classes   2: 0 1 0 1 0 0   3: 1 1 0 2 1 0   5: 2 2 1 4 2 0
    assert m["Mult_acc_2"] == pytest.approx(5 / 6)
    assert m["Mult_acc_3"] == pytest.approx(4 / 6)
    assert m["Mult_acc_5"] == pytest.approx(2 / 6)
    # class 0: P 3/4, R 1 -> 6/7; class 1: P 1, R 2/3 -> 0.8; equal supports
    assert m["F1_score"] == pytest.approx(0.5 * (6 / 7 + 0.8))
    # on clipped values: 0.01, 0, 0.01, 0.01, 0, |-1 - 1| = 2
    assert m["MAE"] == pytest.approx(2.03 / 6, rel=1e-6)


def test_sims_clips_before_mae_and_corr():
    m = sims_metrics(np.array([2.0, 0.0, -1.0]), np.array([1.0, 0.0, -1.0]))
    assert m["MAE"] == pytest.approx(0.0)
    assert m["Corr"] == pytest.approx(1.0)
    assert m["Mult_acc_5"] == 1.0


def test_sims_constant_prediction():
    m = _no_warnings(sims_metrics, np.zeros(4), np.array([0.5, -0.5, 0.2, 0.9]))
    assert math.isnan(m["Corr"])
    # pred all class 0 (2-class); truth 1 0 1 1 -> acc 1/4, F1 = 1/4 * F1(class 0: P 1/4, R 1 -> 0.4)
    assert m["Mult_acc_2"] == pytest.approx(0.25)
    assert m["F1_score"] == pytest.approx(0.25 * 0.4)


# ---------------------------------------------------------------------------------------------------- iemocap


def test_iemocap_per_emotion_and_means():
    prob = np.array([[0.9, 0.5], [0.2, 0.6], [0.7, 0.1], [0.4, 0.51]])
    truth = np.array([[1, 1], [0, 1], [0, 0], [1, 1]])
    m = _no_warnings(iemocap_metrics, prob, truth, ["Happy", "Sad"])
    # Happy: pred 1 0 1 0 vs 1 0 0 1
    assert m["Happy_acc"] == pytest.approx(0.5)
    assert m["Happy_F1"] == pytest.approx(0.5)
    # Sad: 0.5 is a tie -> absent; pred 0 1 0 1 vs 1 1 0 1; class 1 F1 0.8 (support 3), class 0 F1 2/3 (support 1)
    assert m["Sad_acc"] == pytest.approx(0.75)
    assert m["Sad_F1"] == pytest.approx(0.75 * 0.8 + 0.25 * 2 / 3)
    assert m["Mean_acc"] == pytest.approx(0.625)
    assert m["Mean_F1"] == pytest.approx((0.5 + 0.6 + 1 / 6) / 2)
    assert set(m) == {"Happy_acc", "Happy_F1", "Sad_acc", "Sad_F1", "Mean_acc", "Mean_F1"}


def test_iemocap_one_class_emotion_no_crash():
    prob = np.array([[0.9, 0.1, 0.2, 0.3], [0.8, 0.2, 0.9, 0.1]])
    truth = np.array([[1, 0, 0, 0], [1, 0, 1, 0]])
    m = _no_warnings(compute_metrics, EMOTION_IEMOCAP, prob, truth)
    assert m["Neutral_acc"] == 1.0 and m["Neutral_F1"] == 1.0
    assert m["Mean_acc"] == 1.0 and m["Mean_F1"] == 1.0


# ---------------------------------------------------------------------------------------------------- multiclass / dispatch


def test_multiclass():
    prob = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])
    truth = np.array([1, 0, 1, 2])
    m = _no_warnings(multiclass_metrics, prob, truth)
    # pred 1 0 2 1: F1 class0 1 (support 1), class1 0.5 (support 2), class2 0 (support 1)
    assert m["acc"] == pytest.approx(0.5)
    assert m["weighted_F1"] == pytest.approx(0.25 * 1 + 0.5 * 0.5)
    task = Task("multiclass", "multiclass", ("a", "b", "c"))
    assert compute_metrics(task, prob, truth) == m


def test_compute_metrics_dispatch_and_unknown():
    assert set(compute_metrics(REGRESSION_MOSI, np.array([1.0, -1.0]), np.array([1.0, 0.5]))) == {
        "Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr"}
    assert set(compute_metrics(REGRESSION_SIMS, np.array([1.0, -1.0]), np.array([1.0, 0.5]))) == {
        "Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"}
    with pytest.raises(ValueError, match="bogus"):
        compute_metrics(Task("regression", "bogus"), np.zeros(2), np.zeros(2))


def test_selection_and_direction():
    assert SELECTION_METRIC["mosi"] == ("MAE", "minimize")
    assert selection_score(REGRESSION_MOSI, {"MAE": 0.8, "Corr": 0.5}) == pytest.approx(-0.8)
    assert selection_score(REGRESSION_SIMS, {"MAE": 0.4}) == pytest.approx(-0.4)
    assert selection_score(EMOTION_IEMOCAP, {"Mean_F1": 0.6}) == pytest.approx(0.6)
    multiclass = Task("multiclass", "multiclass", ("a", "b"))
    assert selection_score(multiclass, {"weighted_F1": 0.7}) == pytest.approx(0.7)
    assert metric_direction("MAE") == "minimize"
    assert metric_direction("Corr") == "maximize"
    assert metric_direction("Happy_F1") == "maximize"
    assert metric_direction("Angry_acc") == "maximize"
    with pytest.raises(ValueError):
        metric_direction("not_a_metric")
    names = set(mosi_metrics(np.array([1.0, -1.0]), np.array([1.0, 0.5])))
    names |= set(sims_metrics(np.array([1.0, -1.0]), np.array([1.0, 0.5])))
    names |= {"Mean_acc", "Mean_F1", "acc", "weighted_F1"}
    assert names <= set(METRIC_DIRECTION)
    assert {n for n, d in METRIC_DIRECTION.items() if d == "minimize"} == {"MAE"}


# the fast metric helpers equal scikit-learn's ----------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.metrics import accuracy_score, f1_score  # noqa: E402

from msabench.metrics import _accuracy, _weighted_f1  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(-2, 4), st.integers(-2, 4)), min_size=1, max_size=60), st.booleans())
def test_weighted_f1_and_accuracy_equal_sklearn(pairs, as_bool):
    truth = np.array([t for t, _ in pairs])
    pred = np.array([p for _, p in pairs])
    if as_bool:  # the binary metrics compare booleans (e.g. truth > 0 vs pred > 0)
        truth, pred = truth > 0, pred > 0
    expected = f1_score(truth, pred, average="weighted", zero_division=0)
    assert _weighted_f1(truth, pred) == pytest.approx(expected, abs=1e-15)
    assert _accuracy(truth, pred) == accuracy_score(truth, pred)
