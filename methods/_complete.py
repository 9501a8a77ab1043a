"""Complete (unmasked) training features for methods that reconstruct what the mask removed (LNLN, TFR-Net).

The train split is prepared (moved, standardised) once per fit and shared with the training loop, so the complete
rows of a batch are a gather from the same tensors the loop masks, not a second copy of the split.
"""
from __future__ import annotations

import torch

from msabench.data.base import Split
from msabench.training import Batch, PreparedSplit, TorchMethod


class CompleteFeatures(TorchMethod):
    """A TorchMethod that can look up the complete features of the training rows of a batch."""

    def begin_complete(self, train: Split) -> None:
        """Prepare ``train`` once; the training loop's ``prepare(train)`` gets the same object."""
        self._complete_cache = (train, super().prepare(train))

    def end_complete(self) -> None:
        self._complete_cache = None

    def prepare(self, split: Split) -> PreparedSplit:
        cache = getattr(self, "_complete_cache", None)
        if cache is not None and cache[0] is split:
            return cache[1]
        return super().prepare(split)

    def complete_rows(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per modality the complete train features of the batch's rows, for the modalities whose features the
        batch carries as they are (a text encoder's token states have another width: that modality is left out)."""
        features = self._complete_cache[1].features
        return {m: x.index_select(0, batch.index) for m, x in features.items()
                if m in batch.features and x.shape[-1] == batch.features[m].shape[-1]}
