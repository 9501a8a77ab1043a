"""The Method contract: keyword hyperparameters, ``fit`` on train + valid only, ``predict`` under any mask.

Modelled on scikit-learn's estimators: ``__init__`` only stores its keyword arguments unchanged, ``fit`` returns
self, fitted state ends in ``_``. A method never sees the test split and knows nothing about runners or files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from msabench.data.base import MultimodalDataset, Split, Task
from msabench.masks import Mask
from msabench.params import param_defaults
from msabench.protocol import TrainingSchedule

EpochCallback = Callable[[int, float, float], None]


class UnsupportedTaskError(ValueError):
    """The method cannot handle this dataset's task (or needs aligned sequences)."""


@dataclass
class FitContext:
    """What the runner tells a method about a run: task, seed, device, fixed validation masks, callbacks.

    ``cache_dir`` (with ``dataset_fingerprint``) lets a method reuse an expensive intermediate result across the
    runs of one grid, e.g. CorrKD's teacher, which is the same for every distillation variant and protocol. A method
    must give the same numbers with and without the cache.
    """

    task: Task
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False
    valid_masks: dict[str, Mask] = field(default_factory=dict)
    epochs: int | None = None
    on_epoch: EpochCallback | None = None
    progress: bool = False
    aligned: bool = True
    dataset_fingerprint: str = ""
    cache_dir: str | None = None  # where a method may keep artefacts reusable across runs (None: no caching)
    data_placement: str = "device"  # "device": whole splits on the device; "host": batches moved (msabench.placement)


class Method:
    """Base class of every method (registered under the entry-point group ``msabench.methods``)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tasks: ClassVar[frozenset[str]] = frozenset({"regression", "multilabel", "multiclass"})
    requires_aligned: ClassVar[bool] = False

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in param_defaults(type(self))}

    def set_params(self, **params: Any) -> "Method":
        known = param_defaults(type(self))
        for k, v in params.items():
            if k not in known:
                raise ValueError(f"{type(self).__name__} has no hyperparameter {k!r}")
            setattr(self, k, v)
        return self

    @classmethod
    def dataset_defaults(cls, dataset: MultimodalDataset) -> dict[str, Any]:
        """Hyperparameter defaults for a given dataset (e.g. a paper's per-dataset settings); {} by default."""
        return {}

    @classmethod
    def finalize_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The resolved hyperparameters as recorded (e.g. with a pretrained encoder's identity); unchanged here."""
        return params

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Hyperparameters for one Optuna trial; {} means nothing to tune."""
        return {}

    @classmethod
    def check_supported(cls, task: Task, aligned: bool) -> None:
        if task.kind not in cls.tasks:
            raise UnsupportedTaskError(
                f"method {cls.name or cls.__name__!r} supports {sorted(cls.tasks)} tasks, not {task.kind!r} "
                f"({task.metric_set}); pick another method or dataset"
            )
        if cls.requires_aligned and not aligned:
            raise UnsupportedTaskError(
                f"method {cls.name or cls.__name__!r} needs word-aligned sequences of equal length; this dataset "
                f"is unaligned. Use the aligned release of the data or another method"
            )

    def fit(self, train: Split, valid: Split, schedule: TrainingSchedule, context: FitContext) -> "Method":
        raise NotImplementedError

    def predict(self, split: Split, mask: Mask) -> np.ndarray:
        """Predictions for every sample: (N,) scores, (N, K) emotion probabilities or (N, C) class probabilities."""
        raise NotImplementedError

    def inference_state(self) -> dict[str, Any]:
        """What must be saved to predict again (no training-only parts such as a teacher)."""
        return {}

    def training_curve(self) -> list[dict[str, float]]:
        """Per-epoch records (epoch, train_loss, valid_score) of the last fit."""
        return list(getattr(self, "curve_", []))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
