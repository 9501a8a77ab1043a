"""One copy of a loaded dataset for every worker process on a machine.

The parent process writes each split's arrays once as ``.npy`` files (:func:`save_shared`); each worker maps them
(:func:`load_shared`, copy-on-write memory maps), so the workers read the same pages of the page cache instead of
each loading, generating or unpickling its own copy. The fingerprint is carried over, not recomputed.
"""
from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from msabench.data.base import MultimodalDataset, Split, Task

_META = "dataset.json"


def save_shared(dataset: MultimodalDataset, directory: str | Path) -> str:
    """Write ``dataset`` under ``directory`` (created) for :func:`load_shared`; returns the directory."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, split in dataset.splits.items():
        arrays = {f"features.{m}": x for m, x in split.features.items()}
        arrays.update({f"lengths.{m}": x for m, x in split.lengths.items()})
        arrays["labels"] = split.labels
        if split.text_bert is not None:
            arrays["text_bert"] = split.text_bert
        for key, tensor in arrays.items():
            np.save(root / f"{name}.{key}.npy", tensor.detach().cpu().numpy())
        splits[name] = {"arrays": sorted(arrays), "ids": list(split.ids)}
    task = dataset.task
    meta = {"name": dataset.name, "task": [task.kind, task.metric_set, list(task.label_names)],
            "aligned": dataset.aligned, "info": dataset.info, "fingerprint": dataset.fingerprint, "splits": splits}
    (root / _META).write_text(json.dumps(meta, default=str))
    return str(root)


def load_shared(directory: str | Path) -> MultimodalDataset:
    """The dataset written by :func:`save_shared`, its arrays memory-mapped (copy-on-write: writes stay private)."""
    root = Path(directory)
    meta = json.loads((root / _META).read_text())
    splits = {}
    for name, entry in meta["splits"].items():
        arrays = {}
        with warnings.catch_warnings():  # torch warns about numpy arrays it did not allocate; they are ours
            warnings.simplefilter("ignore", UserWarning)
            for key in entry["arrays"]:
                arrays[key] = torch.from_numpy(np.load(root / f"{name}.{key}.npy", mmap_mode="c"))
        splits[name] = Split(
            name=name,
            features={k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("features.")},
            lengths={k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("lengths.")},
            labels=arrays["labels"], ids=entry["ids"], text_bert=arrays.get("text_bert"),
        )
    kind, metric_set, label_names = meta["task"]
    return MultimodalDataset(meta["name"], Task(kind, metric_set, tuple(label_names)), splits,
                             aligned=meta["aligned"], info=meta["info"], fingerprint=meta["fingerprint"])


@functools.lru_cache(maxsize=4)
def load_shared_cached(directory: str) -> MultimodalDataset:
    """:func:`load_shared` once per process."""
    return load_shared(directory)
