"""``uncertain-missing``: each sample loses whole modalities at rate p in {0.1, ..., 0.7}, keeping at least one.

The GCNet / CPM-Net protocol. Each modality of each sample is dropped independently with probability p; a
sample that would lose all of them keeps one, chosen uniformly, so the realised rate is slightly below p.
"""
from __future__ import annotations

import numpy as np

from msabench.protocol import EvalProtocol, KeepPattern

RATES = tuple(round(0.1 * i, 1) for i in range(1, 8))


class UncertainMissing(EvalProtocol):
    name = "uncertain-missing"
    version = "1"
    description = "whole modalities dropped per sample at p = 0.1 ... 0.7, at least one kept"
    default_training_recipe = "modality"

    def conditions(self) -> list[str]:
        return [f"{p:.1f}" for p in RATES]

    def draw(self, split, condition, rng_for) -> KeepPattern:
        mods = sorted(split.features)
        n = len(split)
        keep = rng_for("drop").random((n, len(mods))) >= float(condition)
        empty = ~keep.any(axis=1)
        rescue = rng_for("rescue").integers(0, len(mods), size=n)
        keep[empty, rescue[empty]] = True
        return {m: np.broadcast_to(keep[:, i:i + 1], tuple(split.features[m].shape[:2])).copy()
                for i, m in enumerate(mods)}
