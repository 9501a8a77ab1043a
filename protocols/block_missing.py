"""``block-missing``: contiguous runs of frames lost (bursty sensor dropouts), at r = 0.0 ... 1.0.

Each (sample, modality) sequence follows a two-state Markov chain (Gilbert-Elliott): started from its stationary
law, drop runs have mean length ``burst`` frames and the stationary drop share is r. When r is so high that keep
runs would be shorter than one frame, drop runs are lengthened to r / (1 - r) frames so that the share stays r.
"""
from __future__ import annotations

import numpy as np

from msabench.protocol import EvalProtocol, KeepPattern
from msabench.protocols.random_missing import RATIOS


def markov_keep(rng: np.random.Generator, shape: tuple[int, int], rate: float, burst: float) -> np.ndarray:
    """Keep-pattern (N, T) with stationary drop share ``rate`` and mean drop-run length >= ``burst``."""
    n, t = shape
    if rate <= 0.0:
        return np.ones(shape, dtype=bool)
    if rate >= 1.0:
        return np.zeros(shape, dtype=bool)
    burst = max(burst, rate / (1.0 - rate), 1.0)
    p_end_drop = 1.0 / burst  # drop -> keep
    p_start_drop = rate * p_end_drop / (1.0 - rate)  # keep -> drop, gives stationary share `rate`
    u = rng.random((n, t))
    keep = np.empty(shape, dtype=bool)
    dropped = u[:, 0] < rate
    keep[:, 0] = ~dropped
    for i in range(1, t):  # vectorised over samples; T steps
        dropped = np.where(dropped, u[:, i] >= p_end_drop, u[:, i] < p_start_drop)
        keep[:, i] = ~dropped
    return keep


class BlockMissing(EvalProtocol):
    name = "block-missing"
    version = "1"
    description = "bursty frame loss (contiguous runs) at r = 0.0 ... 1.0"
    default_training_recipe = "frame"

    def __init__(self, burst: float = 5.0, mask_seed: int = 0, train_recipe: str = "default") -> None:
        super().__init__(mask_seed=mask_seed, train_recipe=train_recipe)
        self.burst = burst

    def conditions(self) -> list[str]:
        return [f"{r:.1f}" for r in RATIOS]

    def draw(self, split, condition, rng_for) -> KeepPattern:
        rate = float(condition)
        return {m: markov_keep(rng_for(m), tuple(x.shape[:2]), rate, self.burst) for m, x in split.features.items()}
