"""A third-party plugin: a spy method that records what it is given, and a protocol that drops half the frames.

The spy appends one JSON line per call to the file named by the environment variable MSABENCH_SPY_LOG (if set):
which method was called and the split name and size it received. Tests read it to prove that the test split
never reaches ``fit`` or model selection.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from msabench.method import Method
from msabench.protocol import EvalProtocol


def _record(event: str, **fields) -> None:
    path = os.environ.get("MSABENCH_SPY_LOG")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"event": event, **fields}) + "\n")


class SpyMethod(Method):
    """Ridge regression on the mean of present text frames; logs every split it sees."""

    name = "test-spy"
    description = "spy: ridge on mean text features, records the splits it receives"
    tasks = frozenset({"regression"})

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    @staticmethod
    def _design(split, mask) -> np.ndarray:
        x = split.features["l"] * mask["l"].unsqueeze(-1).to(split.features["l"].dtype)
        count = mask["l"].sum(dim=1, keepdim=True).clamp_min(1)
        return np.column_stack([(x.sum(dim=1) / count).cpu().numpy(), np.ones(len(split))])

    def fit(self, train, valid, schedule, context):
        _record("fit", train=train.name, valid=valid.name, n_train=len(train), n_valid=len(valid),
                valid_masks=sorted(context.valid_masks))
        mask = schedule.mask(0)
        x = self._design(train, mask)
        y = train.labels.cpu().numpy()
        self.coef_ = np.linalg.solve(x.T @ x + self.alpha * np.eye(x.shape[1]), x.T @ y)
        self.curve_ = [{"epoch": 0, "train_loss": float(np.mean(np.abs(x @ self.coef_ - y))), "valid_score": 0.0}]
        return self

    def predict(self, split, mask):
        _record("predict", split=split.name, n=len(split))
        return self._design(split, mask) @ self.coef_

    def inference_state(self):
        return {"coef": torch.as_tensor(self.coef_)}


class HalfMissing(EvalProtocol):
    """Drops the first or the second half of every sequence."""

    name = "test-half"
    version = "2"
    description = "drops the first or the second half of each sequence"
    default_training_recipe = "frame"

    def conditions(self):
        return ["first-half", "second-half"]

    def draw(self, split, condition, rng_for):
        out = {}
        for m, x in split.features.items():
            n, t = x.shape[:2]
            half = (np.arange(t) < t // 2) if condition == "first-half" else (np.arange(t) >= t // 2)
            out[m] = np.broadcast_to(~half, (n, t)).copy()
        return out
