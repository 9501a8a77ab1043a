"""``check_method``: a conformance check any method author can run before a benchmark.

It fits the method on tiny synthetic data in seconds and checks the contract: keyword hyperparameters stored
unchanged, ``fit`` returns self and never receives the test split, predictions for every sample under complete and
missing masks, finite values of the right shape, no change of state while predicting, determinism for a seed, and
a working search space.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import torch

from msabench.data.base import MultimodalDataset, Split
from msabench.data.synthetic import SMALL, SMALL_UNALIGNED, Shape, make_emotion, make_sentiment
from msabench.masks import Mask, full_mask
from msabench.method import FitContext, Method
from msabench.params import param_defaults
from msabench.plugins import PROTOCOLS

TINY = Shape((48, 16, 24), {"l": 8, "a": 8, "v": 8}, dict(SMALL.dims))
TINY_UNALIGNED = Shape((48, 16, 24), {"l": 8, "a": 12, "v": 10}, dict(SMALL_UNALIGNED.dims))
TINY_EMOTION = Shape((48, 16, 24), {"l": 6, "a": 6, "v": 6}, {"l": 16, "a": 10, "v": 8})


class MethodCheckError(AssertionError):
    """The method breaks the Method contract; the message says how."""


def tiny_datasets(aligned: bool = True, tokens: bool = False) -> dict[str, MultimodalDataset]:
    """Small regression and emotion sets for quick checks (``tokens``: with sentiment-bearing ``text_bert``)."""
    return {
        "regression": make_sentiment("tiny-sentiment", TINY if aligned else TINY_UNALIGNED, seed=7, aligned=aligned,
                                     tokens=tokens),
        "multilabel": make_emotion("tiny-emotion", TINY_EMOTION, seed=7, aligned=True, tokens=tokens),
    }


def _missing_masks(split: Split) -> dict[str, Mask]:
    full = full_mask(split)
    gen = torch.Generator().manual_seed(0)
    masks = {"complete": full}
    for m in full:
        masks[f"no-{m}"] = {k: (v if k != m else torch.zeros_like(v)) for k, v in full.items()}
    masks["only-l"] = {k: (v if k == "l" else torch.zeros_like(v)) for k, v in full.items()}
    masks["random-frames"] = {k: v & (torch.rand(v.shape, generator=gen) > 0.5) for k, v in full.items()}
    masks["nothing"] = {k: torch.zeros_like(v) for k, v in full.items()}
    return masks


def _fit(cls: type[Method], params: dict, dataset: MultimodalDataset, seed: int) -> Method:
    protocol = PROTOCOLS.get("random-missing")()
    method = cls(**params)
    context = FitContext(task=dataset.task, seed=seed, device=torch.device("cpu"),
                         valid_masks=protocol.masks(dataset.valid, dataset.fingerprint, ["0.5"]),
                         aligned=dataset.aligned)
    schedule = protocol.training_schedule(dataset.train, seed, dataset.fingerprint)
    returned = method.fit(dataset.train, dataset.valid, schedule, context)
    if returned is not method:
        raise MethodCheckError(f"{cls.__name__}.fit must return self")
    return method


def _state_snapshot(method: Method) -> list[torch.Tensor]:
    tensors = []

    def collect(obj) -> None:
        if isinstance(obj, torch.Tensor):
            tensors.append(obj.detach().clone())
        elif isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                collect(v)

    collect(method.inference_state())
    return tensors


def check_method(cls: type[Method], quick_params: dict | None = None, tasks: list[str] | None = None) -> None:
    """Raise :class:`MethodCheckError` if ``cls`` breaks the Method contract.

    ``quick_params`` overrides hyperparameters for speed (by default epochs=2 when the method has ``epochs``).
    With ``text_encoder`` in ``quick_params`` (a model directory), the data carry token ids for the encoder.
    """
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise MethodCheckError(f"{cls!r} is not a subclass of msabench.method.Method")
    defaults = param_defaults(cls)
    params = {"epochs": 2} if "epochs" in defaults else {}
    if "patience" in defaults:
        params["patience"] = 0
    params.update(quick_params or {})

    # scikit-learn contract: keyword hyperparameters stored unchanged
    obj = cls(**params)
    for k, v in params.items():
        if getattr(obj, k, object()) != v:
            raise MethodCheckError(f"{cls.__name__}.__init__ must store {k} unchanged as self.{k}")
    if cls(**obj.get_params()).get_params() != obj.get_params():
        raise MethodCheckError(f"{cls.__name__}.get_params does not round-trip through __init__")

    # a search space that builds a valid method
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    space = cls.search_space(trial)
    unknown = set(space) - set(defaults)
    if unknown:
        raise MethodCheckError(f"{cls.__name__}.search_space suggests unknown hyperparameters {sorted(unknown)}")
    cls(**{**params, **space})

    tokens = params.get("text_encoder", "features") != "features"
    for kind, dataset in tiny_datasets(aligned=True, tokens=tokens).items():
        if kind not in cls.tasks or (tasks is not None and kind not in tasks):
            continue
        _check_on(cls, params, dataset)
    if not cls.requires_aligned and "regression" in cls.tasks and (tasks is None or "regression" in tasks):
        _check_on(cls, params, tiny_datasets(aligned=False, tokens=tokens)["regression"])


def _check_on(cls: type[Method], params: dict, dataset: MultimodalDataset) -> None:
    where = f"{cls.__name__} on {dataset.name} ({dataset.task.kind}, aligned={dataset.aligned})"
    hidden_test = dataset.test
    blind = replace(dataset, splits={"train": dataset.train, "valid": dataset.valid})
    method = _fit(cls, params, blind, seed=5)
    before = _state_snapshot(method)
    n_out = dataset.task.n_outputs
    first = None
    for name, mask in _missing_masks(hidden_test).items():
        pred = np.asarray(method.predict(hidden_test, mask))
        expected = (len(hidden_test),) if dataset.task.kind == "regression" else (len(hidden_test), n_out)
        if pred.shape != expected:
            raise MethodCheckError(f"{where}: predict under {name} returned shape {pred.shape}, expected {expected}")
        if not np.isfinite(pred).all():
            raise MethodCheckError(f"{where}: predict under {name} returned non-finite values")
        if dataset.task.kind != "regression" and ((pred < 0).any() or (pred > 1).any()):
            raise MethodCheckError(f"{where}: predict must return probabilities in [0, 1]")
        if name == "complete":
            first = pred
    again = np.asarray(method.predict(hidden_test, full_mask(hidden_test)))
    if not np.allclose(first, again):
        raise MethodCheckError(f"{where}: two predictions of the same data differ (dropout left on?)")
    after = _state_snapshot(method)
    if len(before) != len(after) or any(not torch.equal(a, b) for a, b in zip(before, after)):
        raise MethodCheckError(f"{where}: predict changed the model's state")
    other = _fit(cls, copy.deepcopy(params), blind, seed=5)
    if not np.allclose(np.asarray(other.predict(hidden_test, full_mask(hidden_test))), first, atol=1e-5):
        raise MethodCheckError(f"{where}: two fits with the same seed give different predictions")
