"""``none``: complete data only."""
from __future__ import annotations

import numpy as np

from msabench.protocol import EvalProtocol, KeepPattern


class NoMissing(EvalProtocol):
    name = "none"
    version = "1"
    description = "complete data only (one condition: complete)"
    default_training_recipe = "complete"

    def conditions(self) -> list[str]:
        return ["complete"]

    def draw(self, split, condition, rng_for) -> KeepPattern:
        return {m: np.ones(tuple(x.shape[:2]), dtype=bool) for m, x in split.features.items()}
