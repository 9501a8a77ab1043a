"""The IEMOCAP pickle released with MulT (``iemocap_data.pkl`` / ``iemocap_data_noalign.pkl``).

Layout: a dict ``train``/``valid``/``test`` -> dict with ``text`` (N, 20, 300), ``audio`` (N, 20, 74), ``vision``
(N, 20, 35), ``labels`` (N, 4, 2) one-hot per emotion in the order Neutral, Happy, Sad, Angry (index 1 of the last
axis means present) and optionally ``id``. The file carries no lengths: every sequence gets its full T (the aligned
release is zero-padded to a fixed 20 steps, and MulT itself uses the full length). Audio +-inf become 0.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msabench.data.base import (
    EMOTION_IEMOCAP,
    SPLITS,
    DataError,
    DatasetSource,
    MultimodalDataset,
    Split,
    validate_split,
)
from msabench.data.mmsa import check_count, check_finite, float_array, get_key, get_split, infs_to_zero, string_ids
from msabench.data.safe_pickle import safe_load

_MODALITY_KEYS: dict[str, str] = {"l": "text", "a": "audio", "v": "vision"}


class MulTIEMOCAPPickle(DatasetSource):
    """MulT IEMOCAP pickle: four binary emotions (Neutral, Happy, Sad, Angry)."""

    name = "mult-iemocap"
    description = "MulT IEMOCAP pickle (4 binary emotions): mult-iemocap:PATH"
    takes_path = True

    def load(self) -> MultimodalDataset:
        """Read, check and convert the file; raise :class:`DataError` naming file, split and key on bad input."""
        source = str(self.path)
        data = safe_load(source)
        raw_splits = {s: get_split(data, s, source) for s in SPLITS}
        splits = {s: _split(raw, s, source) for s, raw in raw_splits.items()}
        for split in splits.values():
            validate_split(split, EMOTION_IEMOCAP, source=source)
        seq_lens = splits["train"].seq_lens()
        return MultimodalDataset(
            name=Path(source).stem,
            task=EMOTION_IEMOCAP,
            splits=splits,
            aligned=len(set(seq_lens.values())) == 1,
            info={"format": "mult-iemocap", "path": source},
        )


def _split(raw: Mapping[str, Any], split: str, source: str) -> Split:
    k = len(EMOTION_IEMOCAP.label_names)
    onehot = float_array(get_key(raw, "labels", split, source), 3, "labels", split, source)
    if onehot.shape[1:] != (k, 2):
        raise DataError(
            f"{source} [split {split!r}] key 'labels': expected shape (N, {k}, 2) (one-hot absent/present per "
            f"emotion {list(EMOTION_IEMOCAP.label_names)}), got {onehot.shape}"
        )
    bad = ~np.isin(onehot, (0.0, 1.0)) | (onehot.sum(axis=2, keepdims=True) != 1)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(onehot.shape[0], -1).any(axis=1))
        raise DataError(
            f"{source} [split {split!r}] key 'labels': {rows.size} samples are not one-hot over (absent, present) "
            f"(first sample indices {rows[:5].tolist()})"
        )
    labels = np.argmax(onehot, axis=2).astype(np.float32)  # (N, K): 1 where present
    n = labels.shape[0]

    features: dict[str, torch.Tensor] = {}
    lengths: dict[str, torch.Tensor] = {}
    for m, key in _MODALITY_KEYS.items():
        x = float_array(get_key(raw, key, split, source), 3, key, split, source)
        check_count(n, x.shape[0], key, split, source, "labels")
        if m == "a":
            x = infs_to_zero(x)
        check_finite(x, key, split, source)
        features[m] = torch.from_numpy(np.ascontiguousarray(x))
        lengths[m] = torch.full((n,), x.shape[1], dtype=torch.long)

    ids = string_ids(raw["id"], n, "id", split, source) if "id" in raw else [f"{split}_{i}" for i in range(n)]
    return Split(name=split, features=features, lengths=lengths, labels=torch.from_numpy(labels), ids=ids)
