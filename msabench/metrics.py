"""Evaluation metrics, computed exactly as the field does (MMSA ``MetricsTop``, MulT ``eval_iemocap``).

All functions take numpy arrays or torch tensors and return plain ``float`` values. Undefined values (Pearson
correlation of a constant, an empty non-zero subset) are ``nan``; no numpy warning escapes.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from msabench.data.base import Task

SELECTION_METRIC: dict[str, tuple[str, str]] = {
    "mosi": ("MAE", "minimize"),
    "sims": ("MAE", "minimize"),
    "iemocap": ("Mean_F1", "maximize"),
    "multiclass": ("weighted_F1", "maximize"),
}

METRIC_DIRECTION: dict[str, str] = {
    # mosi
    "Has0_acc_2": "maximize",
    "Has0_F1": "maximize",
    "Non0_acc_2": "maximize",
    "Non0_F1": "maximize",
    "Mult_acc_5": "maximize",
    "Mult_acc_7": "maximize",
    "MAE": "minimize",
    "Corr": "maximize",
    # sims
    "Mult_acc_2": "maximize",
    "Mult_acc_3": "maximize",
    "F1_score": "maximize",
    # iemocap (per-emotion ``{name}_acc`` / ``{name}_F1`` are handled by metric_direction)
    "Mean_acc": "maximize",
    "Mean_F1": "maximize",
    # multiclass
    "acc": "maximize",
    "weighted_F1": "maximize",
}


def metric_direction(name: str) -> str:
    """``'maximize'`` or ``'minimize'`` for a metric name, including per-emotion ``{emotion}_acc``/``_F1``."""
    if name in METRIC_DIRECTION:
        return METRIC_DIRECTION[name]
    if name.endswith("_acc") or name.endswith("_F1"):
        return "maximize"
    raise ValueError(
        f"unknown metric {name!r}; known: {sorted(METRIC_DIRECTION)} and per-emotion '<name>_acc'/'<name>_F1'"
    )


def selection_score(task: Task, metrics: Mapping[str, float]) -> float:
    """The task's model-selection metric as a higher-is-better number (negated when it is minimised)."""
    if task.metric_set not in SELECTION_METRIC:
        raise ValueError(f"unknown metric set {task.metric_set!r}; known: {sorted(SELECTION_METRIC)}")
    name, direction = SELECTION_METRIC[task.metric_set]
    if name not in metrics:
        raise KeyError(f"selection metric {name!r} missing from metrics {sorted(metrics)}")
    value = float(metrics[name])
    return -value if direction == "minimize" else value


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _to_numpy(x: object) -> np.ndarray:
    """A numpy array from a numpy array, list or (possibly GPU / grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()  # type: ignore[union-attr]
    return np.asarray(x)


def _as_float(x: object) -> np.ndarray:
    """Floating array; keeps float32 as float32 so bin comparisons match MMSA (float32 tensors)."""
    arr = _to_numpy(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _regression_pair(pred: object, truth: object) -> tuple[np.ndarray, np.ndarray]:
    p = _as_float(pred).reshape(-1)
    t = _as_float(truth).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predictions have {p.size} values but labels have {t.size}")
    if p.size == 0:
        raise ValueError("cannot compute metrics on zero samples")
    return p, t


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation, ``nan`` when undefined (fewer than 2 samples or a constant input)."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.corrcoef(a, b)[0, 1])


def _weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """``sklearn.metrics.f1_score(truth, pred, average="weighted", zero_division=0)`` (as MMSA / MulT), from class
    counts with sklearn's own formula (2·tp / (true + predicted), averaged with the true counts as weights).

    sklearn's input validation costs ~2 ms a call and a run computes this thousands of times (every condition,
    every epoch's validation); tests/test_metrics.py checks equality with sklearn on random inputs.
    """
    truth, pred = np.asarray(truth).reshape(-1), np.asarray(pred).reshape(-1)
    labels, codes = np.unique(np.concatenate([truth, pred]), return_inverse=True)
    t, p = codes[:truth.size], codes[truth.size:]
    k = labels.size
    true_sum = np.bincount(t, minlength=k)
    tp = np.bincount(t[t == p], minlength=k)
    denom = (true_sum + np.bincount(p, minlength=k)).astype(np.float64)
    f = np.divide(2.0 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(np.average(f, weights=true_sum)) if true_sum.sum() else 0.0


def _accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    """``sklearn.metrics.accuracy_score`` (share of equal labels), without its input validation."""
    truth, pred = np.asarray(truth).reshape(-1), np.asarray(pred).reshape(-1)
    return float(np.mean(truth == pred))


def _multiclass_acc(pred: np.ndarray, truth: np.ndarray) -> float:
    # np.round rounds half to even (2.5 -> 2, -0.5 -> -0); MMSA uses np.round, so we keep it.
    return float(np.mean(np.round(pred) == np.round(truth)))


def _bin(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Class i for values in (edges[i], edges[i+1]], as MMSA's SIMS loop."""
    out = np.full(values.shape, -1, dtype=np.int64)
    for i in range(len(edges) - 1):
        out[np.logical_and(values > edges[i], values <= edges[i + 1])] = i
    return out


# ----------------------------------------------------------------------------------------------------------------
# metric sets


def mosi_metrics(pred: object, truth: object) -> dict[str, float]:
    """CMU-MOSI / MOSEI regression metrics (MMSA ``__eval_mosei_regression``).

    Has0: truth >= 0 vs < 0 (preds >= 0). Non0: samples with truth == 0 dropped, > 0 vs not. Mult_acc_5/7: both
    clipped to [-2, 2] / [-3, 3] then rounded with np.round. MAE and Corr on the unclipped values.
    """
    p, t = _regression_pair(pred, truth)
    out: dict[str, float] = {}
    out["Has0_acc_2"] = _accuracy(t >= 0, p >= 0)
    out["Has0_F1"] = _weighted_f1(t >= 0, p >= 0)
    nonzero = t != 0
    if nonzero.any():
        out["Non0_acc_2"] = _accuracy(t[nonzero] > 0, p[nonzero] > 0)
        out["Non0_F1"] = _weighted_f1(t[nonzero] > 0, p[nonzero] > 0)
    else:
        out["Non0_acc_2"] = float("nan")
        out["Non0_F1"] = float("nan")
    out["Mult_acc_5"] = _multiclass_acc(np.clip(p, -2.0, 2.0), np.clip(t, -2.0, 2.0))
    out["Mult_acc_7"] = _multiclass_acc(np.clip(p, -3.0, 3.0), np.clip(t, -3.0, 3.0))
    out["MAE"] = float(np.mean(np.abs(p.astype(np.float64) - t.astype(np.float64))))
    out["Corr"] = _pearson(p, t)
    return out


_SIMS_EDGES_2 = (-1.01, 0.0, 1.01)
_SIMS_EDGES_3 = (-1.01, -0.1, 0.1, 1.01)
_SIMS_EDGES_5 = (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)


def sims_metrics(pred: object, truth: object) -> dict[str, float]:
    """CH-SIMS regression metrics (MMSA ``__eval_sims_regression``).

    Both clipped to [-1, 1] first (MAE and Corr too, as MMSA). Classes: 2 = [-1, 0], (0, 1]; 3 = [-1, -0.1],
    (-0.1, 0.1], (0.1, 1]; 5 = [-1, -0.7], (-0.7, -0.1], (-0.1, 0.1], (0.1, 0.7], (0.7, 1]. F1_score is the
    weighted F1 of the 2-class bins.
    """
    p, t = _regression_pair(pred, truth)
    p = np.clip(p, -1.0, 1.0)
    t = np.clip(t, -1.0, 1.0)
    out: dict[str, float] = {}
    p2, t2 = _bin(p, _SIMS_EDGES_2), _bin(t, _SIMS_EDGES_2)
    out["Mult_acc_2"] = float(np.mean(p2 == t2))
    out["Mult_acc_3"] = float(np.mean(_bin(p, _SIMS_EDGES_3) == _bin(t, _SIMS_EDGES_3)))
    out["Mult_acc_5"] = float(np.mean(_bin(p, _SIMS_EDGES_5) == _bin(t, _SIMS_EDGES_5)))
    out["F1_score"] = _weighted_f1(t2, p2)
    out["MAE"] = float(np.mean(np.abs(p.astype(np.float64) - t.astype(np.float64))))
    out["Corr"] = _pearson(p, t)
    return out


def iemocap_metrics(prob: object, truth: object, names: Sequence[str]) -> dict[str, float]:
    """MulT IEMOCAP metrics: per emotion accuracy and weighted F1 of "present", plus their means.

    ``prob`` (N, K) is the probability each emotion is present; present iff prob > 0.5, which equals MulT's argmax
    over [absent, present] logits with ties going to absent.
    """
    p = _as_float(prob)
    t = _to_numpy(truth)
    k = len(names)
    if p.ndim != 2 or p.shape[1] != k or t.shape != p.shape:
        raise ValueError(
            f"expected predictions and labels of shape (N, {k}), got {tuple(p.shape)} and {tuple(t.shape)}"
        )
    if p.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero samples")
    pred = (p > 0.5).astype(np.int64)
    true = np.rint(t.astype(np.float64)).astype(np.int64)
    out: dict[str, float] = {}
    accs, f1s = [], []
    for i, name in enumerate(names):
        acc = _accuracy(true[:, i], pred[:, i])
        f1 = _weighted_f1(true[:, i], pred[:, i])
        out[f"{name}_acc"] = acc
        out[f"{name}_F1"] = f1
        accs.append(acc)
        f1s.append(f1)
    out["Mean_acc"] = float(np.mean(accs))
    out["Mean_F1"] = float(np.mean(f1s))
    return out


def multiclass_metrics(prob: object, truth: object) -> dict[str, float]:
    """Accuracy and weighted F1 of the argmax class of ``prob`` (N, C) against integer labels (N,)."""
    p = _as_float(prob)
    t = _to_numpy(truth).reshape(-1)
    if p.ndim != 2 or p.shape[0] != t.shape[0]:
        raise ValueError(f"expected predictions (N, C) and labels (N,), got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero samples")
    pred = np.argmax(p, axis=1)
    true = t.astype(np.int64)
    return {"acc": _accuracy(true, pred), "weighted_F1": _weighted_f1(true, pred)}


def compute_metrics(task: Task, predictions: object, labels: object) -> dict[str, float]:
    """The metric set ``task.metric_set`` of ``predictions`` against ``labels``."""
    if task.metric_set == "mosi":
        return mosi_metrics(predictions, labels)
    if task.metric_set == "sims":
        return sims_metrics(predictions, labels)
    if task.metric_set == "iemocap":
        return iemocap_metrics(predictions, labels, task.label_names)
    if task.metric_set == "multiclass":
        return multiclass_metrics(predictions, labels)
    raise ValueError(f"unknown metric set {task.metric_set!r}; known: 'mosi', 'sims', 'iemocap', 'multiclass'")
