"""MMSA pickles (CMU-MOSI, CMU-MOSEI, CH-SIMS as released for the MMSA toolkit).

Layout: a dict ``train``/``valid``/``test`` -> dict with ``text``, ``audio``, ``vision`` (float (N, T, D)),
``audio_lengths``/``vision_lengths`` (absent in aligned releases: the full T is used), ``regression_labels`` (N,),
``id``, and optionally ``text_bert`` (N, 3, L: token ids, attention mask, segment ids), ``classification_labels``,
``annotations``, ``raw_text`` and, for CH-SIMS, unimodal ``regression_labels_T``/``_A``/``_V``.

Text lengths: the attention-mask sum ``text_bert[:, 1, :].sum(-1)`` when ``text_bert`` is in the file; otherwise
the index of the last frame with any non-zero value, plus 1 (text features are zero-padded at the end). Audio
``-inf``/``+inf`` become 0, as MMSA does.

``text=bert`` with ``tokenizer=MODEL`` (a Hugging Face name or local directory, loaded offline first) tokenizes
``raw_text`` on load when the file has no ``text_bert``, padded/truncated to ``max_length`` tokens (default: the text
sequence length T, MMSA's L; it must equal T, since text masks are drawn over T positions).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msabench.data.base import (
    REGRESSION_MOSI,
    REGRESSION_SIMS,
    SPLITS,
    DataError,
    DatasetSource,
    MultimodalDataset,
    Split,
    Task,
    row_chunks,
    validate_split,
)
from msabench.data.safe_pickle import safe_load

SIMS_UNIMODAL_KEYS: tuple[str, ...] = ("regression_labels_T", "regression_labels_A", "regression_labels_V")
_MODALITY_KEYS: dict[str, str] = {"l": "text", "a": "audio", "v": "vision"}


# ----------------------------------------------------------------------------------------------------------------
# checks shared with the other pickle loaders


def get_split(data: object, split: str, source: str) -> Mapping[str, Any]:
    """``data[split]`` as a mapping, or a :class:`DataError` naming the file and split."""
    if not isinstance(data, Mapping):
        raise DataError(f"{source}: expected a dict with splits {list(SPLITS)}, got {type(data).__name__}")
    if split not in data:
        raise DataError(f"{source}: missing split {split!r}; the file has {sorted(map(str, data))}")
    value = data[split]
    if not isinstance(value, Mapping):
        raise DataError(f"{source} [split {split!r}]: expected a dict of arrays, got {type(value).__name__}")
    return value


def get_key(split_data: Mapping[str, Any], key: str, split: str, source: str) -> Any:
    """``split_data[key]`` or a :class:`DataError` naming file, split and key."""
    if key not in split_data:
        raise DataError(
            f"{source} [split {split!r}]: missing key {key!r}; the split has {sorted(map(str, split_data))}"
        )
    return split_data[key]


def float_array(value: Any, rank: int, key: str, split: str, source: str) -> np.ndarray:
    """A float32 array of the given rank, or a :class:`DataError`."""
    where = f"{source} [split {split!r}] key {key!r}"
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: not a numeric array ({exc})") from exc
    if arr.ndim != rank:
        raise DataError(f"{where}: expected a rank-{rank} array, got shape {arr.shape}")
    return arr


def int_array(value: Any, rank: int, key: str, split: str, source: str) -> np.ndarray:
    """An int64 array of whole numbers of the given rank, or a :class:`DataError`."""
    where = f"{source} [split {split!r}] key {key!r}"
    try:
        raw = np.asarray(value)
        arr = raw.astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: not an integer array ({exc})") from exc
    if arr.ndim != rank:
        raise DataError(f"{where}: expected a rank-{rank} array, got shape {arr.shape}")
    if np.issubdtype(raw.dtype, np.floating) and not np.array_equal(raw, arr):
        raise DataError(f"{where}: expected whole numbers")
    return arr


def check_count(n_expected: int, n: int, key: str, split: str, source: str, ref_key: str) -> None:
    """A :class:`DataError` when ``key`` holds ``n`` samples but ``ref_key`` holds ``n_expected``."""
    if n != n_expected:
        raise DataError(f"{source} [split {split!r}] key {key!r}: {n} samples but {ref_key!r} has {n_expected}")


def check_lengths(lengths: np.ndarray, t: int, key: str, split: str, source: str) -> None:
    """Lengths must lie in [0, T]; a length above T is bad input, not something to clip."""
    bad = np.flatnonzero((lengths < 0) | (lengths > t))
    if bad.size:
        raise DataError(
            f"{source} [split {split!r}] key {key!r}: {bad.size} lengths outside [0, {t}] "
            f"(first sample indices {bad[:5].tolist()}, values {lengths[bad[:5]].tolist()})"
        )


def check_finite(x: np.ndarray, key: str, split: str, source: str) -> None:
    """A :class:`DataError` for +-inf values (NaN is reported by ``validate_split``); checked a chunk of rows at a
    time, so no array-sized temporary."""
    if not any(np.isinf(x[sl]).any() for sl in row_chunks(x)):
        return
    bad = np.isinf(x)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(x.shape[0], -1).any(axis=1))
        raise DataError(
            f"{source} [split {split!r}] key {key!r}: {int(bad.sum())} infinite values in {rows.size} samples "
            f"(first sample indices {rows[:5].tolist()})"
        )


def infs_to_zero(x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """-inf and +inf replaced by 0 (MMSA does this for audio features): in a copy, or with ``in_place`` (an array
    the loader owns, e.g. just unpickled) in ``x`` itself, a chunk of rows at a time."""
    if not in_place or not x.flags.writeable:
        x = x.copy()
    for sl in row_chunks(x):
        part = x[sl]
        part[np.isinf(part)] = 0.0
    return x


def string_ids(value: Any, n: int, key: str, split: str, source: str) -> list[str]:
    """Ids as ``str`` (bytes decoded as UTF-8), checking there are ``n`` of them.

    A 2-D id array (one row of parts per sample, as some MulT releases store) is joined with ``_`` per row.
    """

    def text(v: object) -> str:
        if isinstance(v, (list, tuple, np.ndarray)):
            return "_".join(text(part) for part in np.asarray(v, dtype=object).reshape(-1))
        return v.decode("utf-8", errors="replace") if isinstance(v, (bytes, np.bytes_)) else str(v)

    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        arr = np.asarray(value, dtype=object)
        if arr.ndim == 0:
            raise DataError(f"{source} [split {split!r}] key {key!r}: expected a list of ids, got a scalar")
        items = list(arr)
    out = [text(v) for v in items]
    check_count(n, len(out), key, split, source, "labels")
    return out


def last_nonzero_lengths(x: np.ndarray) -> np.ndarray:
    """Per sample the index of the last frame with any non-zero value, plus 1 (0 for an all-zero sample)."""
    nonzero = np.empty(x.shape[:2], dtype=bool)  # (N, T), filled a chunk of rows at a time
    for sl in row_chunks(x):
        nonzero[sl] = (x[sl] != 0).any(axis=2)
    t = x.shape[1]
    last = t - np.argmax(nonzero[:, ::-1], axis=1)
    return np.where(nonzero.any(axis=1), last, 0).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------


def _option_choice(options: Mapping[str, object], key: str, choices: tuple[Any, ...], default: Any) -> Any:
    value = options.get(key, default)
    if isinstance(value, str) and value.lower() in ("none", "null", ""):
        value = None
    if value not in choices:
        raise DataError(f"dataset option {key}={value!r} is not one of {[c for c in choices]}")
    return value


class MMSAPickle(DatasetSource):
    """MMSA-format pickle (MOSI, MOSEI, CH-SIMS); options ``text`` and ``metric_set``."""

    name = "mmsa"
    description = ("MMSA pickle (CMU-MOSI/MOSEI/CH-SIMS): mmsa:PATH, options text=features|bert, "
                   "metric_set=mosi|sims, tokenizer=MODEL, max_length=L")
    takes_path = True

    def load(self) -> MultimodalDataset:
        """Read, check and convert the file; raise :class:`DataError` naming file, split and key on bad input."""
        source = str(self.path)
        text_mode = _option_choice(self.options, "text", ("features", "bert"), "features")
        metric_set = _option_choice(self.options, "metric_set", ("mosi", "sims", None), None)
        data = safe_load(source)
        raw_splits = {s: get_split(data, s, source) for s in SPLITS}
        del data
        if metric_set is None:
            train = raw_splits["train"]
            metric_set = "sims" if all(k in train for k in SIMS_UNIMODAL_KEYS) else "mosi"
        task: Task = REGRESSION_SIMS if metric_set == "sims" else REGRESSION_MOSI
        tokenize = self._tokenizer(text_mode)
        splits = {}
        for s in SPLITS:  # the unpickled split is dropped as soon as it is converted (a float64 original with it)
            splits[s] = self._split(raw_splits.pop(s), s, source, text_mode, tokenize)
        for split in splits.values():
            validate_split(split, task, source=source)
        seq_lens = splits["train"].seq_lens()
        return MultimodalDataset(
            name=Path(source).stem,
            task=task,
            splits=splits,
            aligned=len(set(seq_lens.values())) == 1,
            info={"format": "mmsa", "path": source, "text": text_mode, "metric_set": metric_set},
        )

    def _tokenizer(self, text_mode: str) -> Any:
        """A function (raw_text list, T, split, source) -> (N, 3, L) ids, or None without ``tokenizer=``."""
        name = self.options.get("tokenizer")
        if name in (None, "", "none"):
            return None
        if text_mode != "bert":
            raise DataError("dataset option tokenizer= needs text=bert (--dataset-option text=bert)")
        from msabench.text_encoder import TextEncoderError, load_tokenizer

        try:
            tok = load_tokenizer(str(name))
        except TextEncoderError as exc:
            raise DataError(str(exc)) from None
        max_length = self.options.get("max_length")

        def tokenize(texts: Any, t: int, split: str, source: str) -> np.ndarray:
            length = t if max_length in (None, "") else int(str(max_length))
            if length != t:
                raise DataError(f"{source}: max_length={length} must equal the text sequence length {t} "
                                f"(text masks are drawn over those positions); drop max_length")
            enc = tok([str(x) for x in texts], padding="max_length", truncation=True, max_length=length,
                      return_token_type_ids=True)
            return np.stack([np.asarray(enc["input_ids"]), np.asarray(enc["attention_mask"]),
                             np.asarray(enc["token_type_ids"])], axis=1).astype(np.int64)

        return tokenize

    @staticmethod
    def _split(raw: Mapping[str, Any], split: str, source: str, text_mode: str, tokenize: Any = None) -> Split:
        raw = dict(raw)  # this function's own: feature arrays are dropped from it as they are converted
        labels = float_array(get_key(raw, "regression_labels", split, source), 1, "regression_labels", split, source)
        n = labels.shape[0]
        features: dict[str, np.ndarray] = {}
        for m, key in _MODALITY_KEYS.items():
            x = float_array(get_key(raw, key, split, source), 3, key, split, source)
            check_count(n, x.shape[0], key, split, source, "regression_labels")
            raw.pop(key)  # a float64 original is freed now, not at the end of the load
            # the unpickled data is this loader's own: infs are zeroed in place
            features[m] = infs_to_zero(x, in_place=True) if m == "a" else x
            check_finite(features[m], key, split, source)

        text_bert = None
        if "text_bert" not in raw and text_mode == "bert" and tokenize is not None:
            texts = get_key(raw, "raw_text", split, source)
            check_count(n, len(texts), "raw_text", split, source, "regression_labels")
            text_bert = tokenize(texts, features["l"].shape[1], split, source)
        elif "text_bert" in raw or text_mode == "bert":
            if "text_bert" not in raw:
                raise DataError(f"{source} [split {split!r}]: no key 'text_bert' for text=bert; add "
                                f"--dataset-option tokenizer=MODEL to tokenize its raw_text")
            text_bert = int_array(get_key(raw, "text_bert", split, source), 3, "text_bert", split, source)
            check_count(n, text_bert.shape[0], "text_bert", split, source, "regression_labels")
            if text_bert.shape[1] != 3:
                raise DataError(
                    f"{source} [split {split!r}] key 'text_bert': expected shape (N, 3, L) "
                    f"(ids, mask, segments), got {text_bert.shape}"
                )

        lengths: dict[str, np.ndarray] = {}
        if text_bert is not None:
            lengths["l"] = text_bert[:, 1, :].sum(axis=-1)
        else:
            lengths["l"] = last_nonzero_lengths(features["l"])
        check_lengths(lengths["l"], features["l"].shape[1], "text_bert" if text_bert is not None else "text",
                      split, source)
        for m in ("a", "v"):
            key = f"{_MODALITY_KEYS[m]}_lengths"
            t = features[m].shape[1]
            if key in raw:
                lengths[m] = int_array(raw[key], 1, key, split, source)
                check_count(n, lengths[m].shape[0], key, split, source, "regression_labels")
                check_lengths(lengths[m], t, key, split, source)
            else:
                lengths[m] = np.full(n, t, dtype=np.int64)

        ids = string_ids(get_key(raw, "id", split, source), n, "id", split, source)
        return Split(
            name=split,
            features={m: torch.from_numpy(np.ascontiguousarray(x)) for m, x in features.items()},
            lengths={m: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for m, v in lengths.items()},
            labels=torch.from_numpy(np.ascontiguousarray(labels)),
            ids=ids,
            text_bert=torch.from_numpy(np.ascontiguousarray(text_bert)) if text_mode == "bert" else None,
        )
