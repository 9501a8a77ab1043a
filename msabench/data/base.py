"""The one in-memory representation of a multimodal dataset.

Every loader turns its files into a :class:`MultimodalDataset`; everything downstream (protocols, methods,
runner) sees only this.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

MODALITIES: tuple[str, ...] = ("l", "a", "v")
MODALITY_NAMES = {"l": "text", "a": "audio", "v": "vision"}
SPLITS: tuple[str, ...] = ("train", "valid", "test")

TaskKind = Literal["regression", "multilabel", "multiclass"]


@dataclass(frozen=True)
class Task:
    """What the labels mean, which decides the loss and the metric set.

    kind: ``regression`` (a sentiment score, labels (N,)), ``multilabel`` (binary per emotion, labels (N, K) in
    {0, 1}, the MulT IEMOCAP convention) or ``multiclass`` (labels (N,) integer class ids).
    metric_set: ``mosi`` (MOSI/MOSEI metrics), ``sims`` (CH-SIMS metrics), ``iemocap`` or ``multiclass``.
    """

    kind: TaskKind
    metric_set: str
    label_names: tuple[str, ...] = ()

    @property
    def n_outputs(self) -> int:
        return 1 if self.kind == "regression" else len(self.label_names)


REGRESSION_MOSI = Task("regression", "mosi")
REGRESSION_SIMS = Task("regression", "sims")
IEMOCAP_EMOTIONS = ("Neutral", "Happy", "Sad", "Angry")
EMOTION_IEMOCAP = Task("multilabel", "iemocap", IEMOCAP_EMOTIONS)


@dataclass
class Split:
    """One split: per modality a float tensor (N, T, D) and lengths (N,), labels, ids.

    ``text_bert`` optionally holds BERT token ids (N, 3, L): ids, attention mask, segment ids (MMSA layout).
    Frames at positions >= length are padding; they are never "present".
    """

    name: str
    features: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    labels: torch.Tensor
    ids: list[str]
    text_bert: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def dims(self) -> dict[str, int]:
        return {m: int(x.shape[-1]) for m, x in self.features.items()}

    def seq_lens(self) -> dict[str, int]:
        return {m: int(x.shape[1]) for m, x in self.features.items()}

    def padding_mask(self) -> dict[str, torch.Tensor]:
        """Per modality a bool (N, T) mask, True where a frame exists (position < length)."""
        out = {}
        for m, x in self.features.items():
            positions = torch.arange(x.shape[1], device=x.device)
            out[m] = positions[None, :] < self.lengths[m].to(x.device)[:, None]
        return out

    def to(self, device: torch.device | str) -> "Split":
        return replace(
            self,
            features={m: x.to(device) for m, x in self.features.items()},
            lengths={m: x.to(device) for m, x in self.lengths.items()},
            labels=self.labels.to(device),
            text_bert=None if self.text_bert is None else self.text_bert.to(device),
        )

    def subset(self, index: torch.Tensor | np.ndarray | list[int]) -> "Split":
        """The samples at ``index`` (used for tiny test fixtures and conversation batches)."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long, device=self.labels.device)
        idx_list = idx.tolist()
        return replace(
            self,
            features={m: x[idx] for m, x in self.features.items()},
            lengths={m: x[idx] for m, x in self.lengths.items()},
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx_list],
            text_bert=None if self.text_bert is None else self.text_bert[idx],
        )


@dataclass
class MultimodalDataset:
    """Named splits plus the task and a content fingerprint recorded in every result row."""

    name: str
    task: Task
    splits: dict[str, Split]
    aligned: bool = True
    info: dict = field(default_factory=dict)
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self)

    def __getitem__(self, split: str) -> Split:
        if split not in self.splits:
            raise KeyError(f"dataset {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]

    @property
    def train(self) -> Split:
        return self["train"]

    @property
    def valid(self) -> Split:
        return self["valid"]

    @property
    def test(self) -> Split:
        return self["test"]


def fingerprint(dataset: MultimodalDataset) -> str:
    """A short sha256 over task, split contents (features, lengths, labels, ids)."""
    h = hashlib.sha256()
    h.update(repr((dataset.task.kind, dataset.task.metric_set, dataset.task.label_names)).encode())
    for split_name in sorted(dataset.splits):
        split = dataset.splits[split_name]
        h.update(split_name.encode())
        for m in sorted(split.features):
            h.update(m.encode())
            # hashed through the buffer protocol: same digest as .tobytes(), without a copy of the features
            h.update(np.ascontiguousarray(split.features[m].detach().cpu().numpy()))
            h.update(np.ascontiguousarray(split.lengths[m].detach().cpu().numpy().astype(np.int64)).tobytes())
        h.update(np.ascontiguousarray(split.labels.detach().cpu().numpy()).tobytes())
        h.update("\x00".join(split.ids).encode())
        if split.text_bert is not None:
            h.update(np.ascontiguousarray(split.text_bert.cpu().numpy()).tobytes())
    return h.hexdigest()[:16]


def row_chunks(x: torch.Tensor | np.ndarray, chunk_bytes: int = 64 * 2**20) -> list[slice]:
    """Slices of about ``chunk_bytes`` of leading rows of ``x``, for passes that need a temporary per element."""
    n = int(x.shape[0])
    itemsize = x.itemsize if isinstance(x, np.ndarray) else x.element_size()
    row_bytes = max(1, int(np.prod(x.shape[1:], dtype=np.int64)) * itemsize)
    step = max(1, chunk_bytes // row_bytes)
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def _has_nan(x: torch.Tensor) -> bool:
    """Whether ``x`` holds a NaN, checked a chunk of rows at a time (no split-sized bool temporary)."""
    return any(bool(torch.isnan(x[sl]).any()) for sl in row_chunks(x))


class DataError(ValueError):
    """Bad input data; the message names the file, split and key."""


def validate_split(split: Split, task: Task, source: str) -> None:
    """Check shapes, lengths, labels and NaNs; raise :class:`DataError` naming ``source``, split and key."""
    where = f"{source} [split {split.name!r}]"
    n = len(split)
    if len(split.ids) != n:
        raise DataError(f"{where}: {len(split.ids)} ids but {n} labels")
    for m, x in split.features.items():
        key = MODALITY_NAMES.get(m, m)
        if x.ndim != 3:
            raise DataError(f"{where} key {key!r}: expected a rank-3 array (N, T, D), got shape {tuple(x.shape)}")
        if x.shape[0] != n:
            raise DataError(f"{where} key {key!r}: {x.shape[0]} samples but {n} labels")
        if _has_nan(x):
            bad = torch.isnan(x)
            rows = torch.nonzero(bad.any(dim=2).any(dim=1)).flatten().tolist()
            raise DataError(
                f"{where} key {key!r}: {int(bad.sum())} NaN values in {len(rows)} samples "
                f"(first sample indices {rows[:5]}); clean or impute them before training"
            )
        lengths = split.lengths[m]
        if lengths.shape != (n,):
            raise DataError(f"{where} key {key}_lengths: expected {n} lengths, got shape {tuple(lengths.shape)}")
        if (lengths < 0).any() or (lengths > x.shape[1]).any():
            raise DataError(f"{where} key {key}_lengths: lengths must lie in [0, {x.shape[1]}]")
    labels = split.labels
    if task.kind == "regression":
        if labels.ndim != 1:
            raise DataError(f"{where} labels: expected shape (N,), got {tuple(labels.shape)}")
        if torch.isnan(labels).any():
            raise DataError(f"{where} labels: {int(torch.isnan(labels).sum())} NaN labels")
        limit = 1.0 if task.metric_set == "sims" else 3.0
        if (labels.abs() > limit + 1e-6).any():
            raise DataError(f"{where} labels: sentiment scores must lie in [-{limit:g}, {limit:g}] for {task.metric_set}")
    elif task.kind == "multilabel":
        if labels.ndim != 2 or labels.shape[1] != len(task.label_names):
            raise DataError(
                f"{where} labels: expected shape (N, {len(task.label_names)}), got {tuple(labels.shape)}"
            )
        if not torch.isin(labels, torch.tensor([0.0, 1.0], device=labels.device)).all():
            raise DataError(f"{where} labels: multilabel targets must be 0 or 1")
    else:
        if labels.ndim != 1 or (labels < 0).any() or (labels >= len(task.label_names)).any():
            raise DataError(f"{where} labels: class ids must lie in [0, {len(task.label_names)})")


class DatasetSource:
    """A registered way to obtain a :class:`MultimodalDataset` (``msabench.datasets`` entry point).

    Built-in synthetic sets take no path; file formats (``mmsa:PATH``) take one. Options are keyword arguments
    (``--dataset-option key=value`` on the command line).
    """

    name: str = ""
    description: str = ""
    takes_path: bool = False

    def __init__(self, path: str | None = None, **options: object) -> None:
        if self.takes_path and not path:
            raise DataError(f"dataset format {self.name!r} needs a file: use --dataset {self.name}:PATH")
        if not self.takes_path and path:
            raise DataError(f"dataset {self.name!r} takes no path, got {path!r}")
        self.path = path
        self.options = options

    def load(self) -> MultimodalDataset:
        raise NotImplementedError
