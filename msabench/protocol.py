"""Missingness protocols: named evaluation conditions with fixed masks, and a seeded training schedule.

A protocol knows nothing about methods. Its masks are a pure function of (protocol name, version, parameters,
dataset fingerprint, split, condition, mask seed), drawn with numpy on the CPU for the whole split at once, so they
are the same in any process, on any device, whatever the batch size or order.
"""
from __future__ import annotations

import json
from typing import Callable

import numpy as np

from msabench.data.base import Split
from msabench.masks import Mask, derive_rng, full_mask, mask_hash, restrict_to_padding
from msabench.params import param_defaults

KeepPattern = dict[str, np.ndarray]  # modality -> bool (N, T), True = keep


# training recipes: how masks are drawn each epoch --------------------------------------------------------------
def _shape(split: Split, m: str) -> tuple[int, int]:
    return tuple(split.features[m].shape[:2])  # type: ignore[return-value]


def recipe_complete(split: Split, rng_for: Callable[[str], np.random.Generator]) -> KeepPattern:
    return {m: np.ones(_shape(split, m), dtype=bool) for m in split.features}


def recipe_frame(split: Split, rng_for: Callable[[str], np.random.Generator]) -> KeepPattern:
    """LNLN's recipe: half the samples complete; the others drop frames at r ~ U(0, 1) per sample and modality."""
    n = len(split)
    complete = rng_for("complete").random(n) < 0.5
    out = {}
    for m in sorted(split.features):
        rng = rng_for(m)
        rate = rng.random(n)
        rate[complete] = 0.0
        out[m] = rng.random(_shape(split, m)) >= rate[:, None]
    return out


def recipe_frame_per_modality(split: Split, rng_for: Callable[[str], np.random.Generator]) -> KeepPattern:
    """LNLN's own training masks (its ``core/dataset.py``): per modality, exactly floor(N/2) samples, drawn
    independently per modality, are complete; the others drop frames at r ~ U(0, 1) per sample and modality. Unlike
    :func:`recipe_frame`, a sample is complete in every modality only with probability about 1/2^M."""
    out = {}
    for m in sorted(split.features):
        rng = rng_for(m)
        rate = _per_modality_rate(len(split), m, rng, rng_for)
        out[m] = rng.random(_shape(split, m)) >= rate[:, None]
    return out


def _per_modality_rate(n: int, m: str, rng: np.random.Generator,
                       rng_for: Callable[[str], np.random.Generator]) -> np.ndarray:
    rate = rng.random(n)  # the first n draws of modality m's stream; its frames follow
    rate[rng_for("complete/" + m).permutation(n)[: n // 2]] = 0.0
    return rate


def recipe_modality(split: Split, rng_for: Callable[[str], np.random.Generator]) -> KeepPattern:
    """A random non-empty subset of modalities per sample (uniform over the 2^M - 1 subsets)."""
    mods = sorted(split.features)
    n = len(split)
    code = rng_for("subset").integers(1, 2 ** len(mods), size=n)
    return {m: np.broadcast_to(((code >> i) & 1).astype(bool)[:, None], _shape(split, m)).copy()
            for i, m in enumerate(mods)}


def recipe_frame_modality(split: Split, rng_for: Callable[[str], np.random.Generator]) -> KeepPattern:
    """CorrKD's "modality random missing": frame drops and whole-modality drops combined."""
    frame = recipe_frame(split, lambda k: rng_for("frame/" + k))
    modality = recipe_modality(split, lambda k: rng_for("modality/" + k))
    return {m: frame[m] & modality[m] for m in frame}


def recipe_modality_proper(split: Split, rng_for: Callable[[str], np.random.Generator]) -> KeepPattern:
    """MMIN's training masks: one of the 2^M - 2 non-empty proper subsets of modalities per sample, uniformly
    (never all modalities, never none: the six missing patterns of three modalities)."""
    mods = sorted(split.features)
    n = len(split)
    code = rng_for("subset").integers(1, 2 ** len(mods) - 1, size=n)
    return {m: np.broadcast_to(((code >> i) & 1).astype(bool)[:, None], _shape(split, m)).copy()
            for i, m in enumerate(mods)}


def frame_rates(split: Split, rng_for: Callable[[str], np.random.Generator]) -> dict[str, np.ndarray]:
    """The per-sample drop rates :func:`recipe_frame` draws (0 for the complete half), from the same streams."""
    n = len(split)
    complete = rng_for("complete").random(n) < 0.5
    rates = {}
    for m in sorted(split.features):
        rate = rng_for(m).random(n)  # the first n draws of the stream recipe_frame reads its rates from
        rate[complete] = 0.0
        rates[m] = rate
    return rates


def frame_per_modality_rates(split: Split, rng_for: Callable[[str], np.random.Generator]) -> dict[str, np.ndarray]:
    """The per-sample drop rates :func:`recipe_frame_per_modality` draws (0 for each modality's complete half)."""
    return {m: _per_modality_rate(len(split), m, rng_for(m), rng_for) for m in sorted(split.features)}


TRAINING_RECIPES: dict[str, Callable[[Split, Callable[[str], np.random.Generator]], KeepPattern]] = {
    "complete": recipe_complete,
    "frame": recipe_frame,
    "frame-per-modality": recipe_frame_per_modality,
    "modality": recipe_modality,
    "frame+modality": recipe_frame_modality,
    "modality-proper": recipe_modality_proper,
}


class TrainingSchedule:
    """Fresh training masks every epoch, from a generator seeded by (protocol, dataset, run seed, epoch)."""

    def __init__(self, identity: list, split: Split, seed: int, recipe: str) -> None:
        if recipe not in TRAINING_RECIPES:
            raise ValueError(f"unknown training recipe {recipe!r}; choose one of {sorted(TRAINING_RECIPES)}")
        self.identity = identity
        self.split = split
        self.seed = seed
        self.recipe = recipe

    def mask(self, epoch: int) -> Mask:
        """The training mask of ``epoch`` for the whole train split (padding never present)."""
        if self.recipe == "complete":
            return full_mask(self.split)
        keep = TRAINING_RECIPES[self.recipe](
            self.split, lambda key: derive_rng("train", *self.identity, self.seed, epoch, key)
        )
        return restrict_to_padding(self.split, keep)

    def rates(self, epoch: int) -> dict[str, np.ndarray] | None:
        """Per modality the (N,) missing rate each training sample was drawn with in ``epoch`` (LNLN trains its
        completeness check against 1 - this): 0 for ``complete``, 0/1 per whole modality for ``modality``, 1 where
        ``frame+modality`` drops the whole modality; None for a recipe that draws no rates."""
        rng_for = lambda prefix: (lambda key: derive_rng("train", *self.identity, self.seed, epoch, prefix + key))
        n = len(self.split)
        if self.recipe == "complete":
            return {m: np.zeros(n) for m in self.split.features}
        if self.recipe == "frame":
            return frame_rates(self.split, rng_for(""))
        if self.recipe == "frame-per-modality":
            return frame_per_modality_rates(self.split, rng_for(""))
        if self.recipe == "modality":
            keep = recipe_modality(self.split, rng_for(""))
            return {m: 1.0 - k[:, 0].astype(float) for m, k in keep.items()}
        if self.recipe == "frame+modality":
            frame = frame_rates(self.split, rng_for("frame/"))
            keep = recipe_modality(self.split, rng_for("modality/"))
            return {m: np.where(keep[m][:, 0], frame[m], 1.0) for m in frame}
        return None

    def with_recipe(self, recipe: str) -> "TrainingSchedule":
        """The same schedule drawing with another recipe (a teacher asks for ``complete``)."""
        return TrainingSchedule(self.identity, self.split, self.seed, recipe)

    def complete(self) -> "TrainingSchedule":
        return self.with_recipe("complete")

    def __repr__(self) -> str:
        return f"TrainingSchedule(recipe={self.recipe!r}, seed={self.seed})"


class EvalProtocol:
    """Base class of missingness protocols (registered under ``msabench.protocols``).

    Subclasses set ``name``, ``version``, ``description``, take their parameters as keyword arguments, and
    implement :meth:`conditions` and :meth:`draw`.
    """

    name: str = ""
    version: str = "1"
    description: str = ""
    default_training_recipe: str = "complete"

    def __init__(self, mask_seed: int = 0, train_recipe: str = "default") -> None:
        self.mask_seed = mask_seed
        self.train_recipe = train_recipe

    # the contract -------------------------------------------------------------------------------------------
    def conditions(self) -> list[str]:
        raise NotImplementedError

    def draw(self, split: Split, condition: str, rng_for: Callable[[str], np.random.Generator]) -> KeepPattern:
        """The keep-pattern of ``condition`` for ``split``; ``rng_for(key)`` gives independent seeded streams."""
        raise NotImplementedError

    def validation_conditions(self) -> list[str]:
        """Conditions scored on the validation split during training and tuning (mid-level by default)."""
        conds = self.conditions()
        return [conds[len(conds) // 2]]

    def summaries(self) -> dict[str, list[str]]:
        """Named averages over conditions reported beside them, e.g. {"Avg": [...]}."""
        return {"Mean": self.conditions()}

    # derived ------------------------------------------------------------------------------------------------
    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in param_defaults(type(self))}

    def identity(self) -> list:
        return [self.name, self.version, json.dumps(self.get_params(), sort_keys=True, default=str)]

    def mask_identity(self) -> list:
        """What the evaluation masks are drawn from: :meth:`identity` with the training recipe left at its default,
        so that runs trained with another recipe (``--protocol-option train_recipe=...``) are evaluated on exactly
        the masks of every other run (for the default recipe this is :meth:`identity` itself)."""
        params = self.get_params()
        if "train_recipe" in params:
            params["train_recipe"] = "default"
        return [self.name, self.version, json.dumps(params, sort_keys=True, default=str)]

    def mask(self, split: Split, condition: str, dataset_fingerprint: str) -> Mask:
        """The fixed mask of ``condition`` on ``split`` (same for every method, run and training recipe)."""
        if condition not in self.conditions():
            raise ValueError(f"protocol {self.name!r} has no condition {condition!r}; it has {self.conditions()}")
        base = [*self.mask_identity(), dataset_fingerprint, split.name, condition, self.mask_seed]
        keep = self.draw(split, condition, lambda key: derive_rng(*base, key))
        return restrict_to_padding(split, keep)

    def masks(self, split: Split, dataset_fingerprint: str, conditions: list[str] | None = None) -> dict[str, Mask]:
        return {c: self.mask(split, c, dataset_fingerprint) for c in (conditions or self.conditions())}

    def mask_hashes(self, split: Split, dataset_fingerprint: str) -> dict[str, str]:
        return {c: mask_hash(m) for c, m in self.masks(split, dataset_fingerprint).items()}

    def training_schedule(self, train: Split, seed: int, dataset_fingerprint: str) -> TrainingSchedule:
        recipe = self.default_training_recipe if self.train_recipe == "default" else self.train_recipe
        return TrainingSchedule([*self.identity(), dataset_fingerprint], train, seed, recipe)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"
