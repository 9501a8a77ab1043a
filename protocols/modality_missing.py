"""``modality-missing`` (inter-modality): whole modalities absent.

Conditions name the modalities present: ``{l}``, ``{a}``, ``{v}``, ``{l,a}``, ``{l,v}``, ``{a,v}`` and the complete
``{l,a,v}``. The summary ``Avg`` is the mean over the six missing conditions (the CorrKD table convention).
"""
from __future__ import annotations

import numpy as np

from msabench.protocol import EvalProtocol, KeepPattern

MISSING_CONDITIONS = ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}"]
COMPLETE = "{l,a,v}"


def present_modalities(condition: str) -> set[str]:
    return set(condition.strip("{}").split(","))


class ModalityMissing(EvalProtocol):
    name = "modality-missing"
    version = "1"
    description = "inter-modality: whole modalities absent ({l} ... {a,v}, Avg, {l,a,v})"
    default_training_recipe = "modality"

    def conditions(self) -> list[str]:
        return [*MISSING_CONDITIONS, COMPLETE]

    def validation_conditions(self) -> list[str]:
        return self.conditions()

    def summaries(self) -> dict[str, list[str]]:
        return {"Avg": list(MISSING_CONDITIONS)}

    def draw(self, split, condition, rng_for) -> KeepPattern:
        present = present_modalities(condition)
        return {m: np.full(tuple(x.shape[:2]), m in present, dtype=bool) for m, x in split.features.items()}
