"""check_method accepts a correct method and names what is wrong with broken ones."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msabench.method import Method
from msabench.methods.late_fusion import LateFusion
from msabench.testing import MethodCheckError, check_method


def test_late_fusion_passes():
    check_method(LateFusion, quick_params={"hidden": 8, "epochs": 2})


class MeanPredictor(Method):
    """Predicts the mean train label (a minimal correct method)."""

    name = "mean"
    tasks = frozenset({"regression"})

    def __init__(self, shift: float = 0.0) -> None:
        self.shift = shift

    def fit(self, train, valid, schedule, context):
        self.mean_ = float(train.labels.mean()) + self.shift
        return self

    def predict(self, split, mask):
        return np.full(len(split), self.mean_)


def test_minimal_method_passes():
    check_method(MeanPredictor)


class ForgetsSelf(MeanPredictor):
    def fit(self, train, valid, schedule, context):
        super().fit(train, valid, schedule, context)


class RenamesParam(MeanPredictor):
    def __init__(self, shift: float = 0.0) -> None:
        self.offset = shift


class WrongShape(MeanPredictor):
    def predict(self, split, mask):
        return np.zeros((len(split), 2))


class Nondeterministic(MeanPredictor):
    def predict(self, split, mask):
        return np.full(len(split), self.mean_) + np.random.rand(len(split))


class LearnsWhilePredicting(MeanPredictor):
    def fit(self, train, valid, schedule, context):
        self.weight_ = torch.zeros(1)
        return super().fit(train, valid, schedule, context)

    def predict(self, split, mask):
        self.weight_ += 1
        return np.full(len(split), self.mean_)

    def inference_state(self):
        return {"w": self.weight_}


class NaNUnderMissing(MeanPredictor):
    def predict(self, split, mask):
        present = mask["l"].sum(dim=1).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.full(len(split), self.mean_) / present * present


@pytest.mark.parametrize("cls, message", [
    (ForgetsSelf, "must return self"),
    (RenamesParam, "store shift unchanged"),
    (WrongShape, "returned shape"),
    (Nondeterministic, "differ"),
    (LearnsWhilePredicting, "changed the model's state"),
    (NaNUnderMissing, "non-finite"),
])
def test_broken_methods_fail_with_a_reason(cls, message):
    with pytest.raises(MethodCheckError, match=message):
        check_method(cls, quick_params={"shift": 0.5} if cls is RenamesParam else None)


def test_not_a_method():
    with pytest.raises(MethodCheckError, match="not a subclass"):
        check_method(dict)
