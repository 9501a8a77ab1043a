"""``random-missing`` (intra-modality): each present frame dropped independently with ratio r.

Conditions r = 0.0, 0.1, ..., 1.0 (the CorrKD and TFR-Net curves), the same r for every modality; or, with
``rates="l=0.3,a=0.5,v=0.5"``, one condition with a rate per modality. Summaries: ``Mean`` over every rate and
``LNLN-Avg`` over r = 0.0 ... 0.9, the average LNLN (Zhang et al., NeurIPS 2024, Table 2) and the papers that
follow its protocol report (r = 1.0 excluded).
"""
from __future__ import annotations

import numpy as np

from msabench.protocol import EvalProtocol, KeepPattern

RATIOS = tuple(round(0.1 * i, 1) for i in range(11))


def parse_rates(rates: str) -> dict[str, float]:
    """``"l=0.3,a=0.5,v=0.5"`` → ``{"l": 0.3, "a": 0.5, "v": 0.5}``."""
    out = {}
    for part in rates.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("l", "a", "v"):
            raise ValueError(f"rates must look like 'l=0.3,a=0.5,v=0.5', got {rates!r}")
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"missing rate for {key.strip()} must lie in [0, 1], got {rate}")
        out[key.strip()] = rate
    return out


class RandomMissing(EvalProtocol):
    name = "random-missing"
    version = "1"
    description = "intra-modality: frames dropped independently at r = 0.0 ... 1.0"
    default_training_recipe = "frame"

    def __init__(self, rates: str = "", mask_seed: int = 0, train_recipe: str = "default") -> None:
        super().__init__(mask_seed=mask_seed, train_recipe=train_recipe)
        self.rates = rates
        self._rates = parse_rates(rates) if rates else None

    def conditions(self) -> list[str]:
        if self._rates:
            return [self.rates]
        return [f"{r:.1f}" for r in RATIOS]

    def summaries(self) -> dict[str, list[str]]:
        conds = self.conditions()
        if self._rates:
            return {"Mean": conds}
        return {"LNLN-Avg": [c for c in conds if float(c) < 1.0], "Mean": conds}

    def rate_of(self, condition: str, modality: str) -> float:
        if self._rates:
            return self._rates.get(modality, 0.0)
        return float(condition)

    def draw(self, split, condition, rng_for) -> KeepPattern:
        out = {}
        for m, x in split.features.items():
            rate = self.rate_of(condition, m)
            out[m] = rng_for(m).random(tuple(x.shape[:2])) >= rate
        return out
