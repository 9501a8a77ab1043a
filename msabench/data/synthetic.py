"""Built-in synthetic datasets with real MSA shapes and a planted multimodal signal.

A latent state drives every modality. For sentiment, a score s = c + 0.55 u_l + 0.5 u_a + 0.5 u_v + noise: ``c`` is
shared (text sees it clearly, audio and vision faintly), each ``u_m`` belongs to one modality only. So text alone is
the strongest, audio and vision are weaker, and all three together beat text alone. For emotion, valence is read
mostly from text and arousal mostly from audio, so the modalities complement each other. Each frame carries the
signal only with some probability, on top of a per-sample nuisance style and frame noise; sequences have variable
lengths with zero padding. Everything is deterministic in ``seed``.

Option ``text=bert`` adds ``text_bert`` (MMSA layout (N, 3, T_l): ids, attention mask, segment ids) whose words carry
the text's planted sentiment: between [CLS] and [SEP], each word is, with probability 0.6, a positive or negative
word (chosen by the sign-probability sigmoid(1.5 t) of the text's signal t) and otherwise a neutral word, from a
made-up vocabulary (ids 110-119 positive, 120-129 negative, 130-159 neutral; any BERT-layout model with at least
160 ids reads them). The features are the same as without the option.
Each modality's features are generated into one preallocated array, a chunk of rows at a time, and the splits are
views of it: the set is never held twice (the unaligned MOSEI shapes hold about 8.5 GB with ``text_dim=768``).
Options ``scale`` (a fraction of the samples, same shapes) and ``text_dim`` change the shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from msabench.data.base import (
    EMOTION_IEMOCAP,
    REGRESSION_MOSI,
    DatasetSource,
    MultimodalDataset,
    Split,
    Task,
)


@dataclass(frozen=True)
class Shape:
    """Split sizes, sequence lengths and feature dims per modality."""

    sizes: tuple[int, int, int]
    seq_lens: dict[str, int]
    dims: dict[str, int]


# how strongly each modality's frames carry the signal, and how noisy they are
CARRY_PROB = {"l": 0.6, "a": 0.45, "v": 0.4}
FRAME_NOISE = {"l": 1.0, "a": 1.6, "v": 1.8}


def _sequences(rng: np.random.Generator, info: np.ndarray, seq_len: int, dim: int, modality: str,
               lengths: np.ndarray) -> np.ndarray:
    """(N, T, D) frames: a random projection of ``info`` on carrying frames + style + noise; padding zero."""
    n, k = info.shape
    proj = rng.normal(0.0, 1.0, (k, dim)) / np.sqrt(k)
    style_proj = rng.normal(0.0, 1.0, (4, dim)) / 2.0
    offset = rng.normal(0.0, 0.5, dim)
    scale = np.exp(rng.normal(0.0, 0.6, dim))  # unequal feature scales, as in real descriptors
    style = rng.normal(0.0, 1.0, (n, 4)) @ style_proj
    x = np.empty((n, seq_len, dim), dtype=np.float32)
    signal = (info @ proj).astype(np.float32)
    for start in range(0, n, 512):  # chunks keep peak memory low for MOSEI-sized sets
        sl = slice(start, min(start + 512, n))
        m = sl.stop - sl.start
        carry = (rng.random((m, seq_len, 1)) < CARRY_PROB[modality]) * 2.0
        noise = rng.normal(0.0, FRAME_NOISE[modality], (m, seq_len, dim))
        frames = signal[sl, None, :] * carry + style[sl, None, :] + noise
        frames = (frames * scale + offset).astype(np.float32)
        frames[np.arange(seq_len)[None, :] >= lengths[sl, None]] = 0.0
        x[sl] = frames
    return x


def _lengths(rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
    low = max(1, seq_len // 3)
    return rng.integers(low, seq_len + 1, size=n)


POSITIVE_IDS = np.arange(110, 120)
NEGATIVE_IDS = np.arange(120, 130)
NEUTRAL_IDS = np.arange(130, 160)
SYNTHETIC_VOCAB = 160


def sentiment_tokens(text_signal: np.ndarray, lengths: np.ndarray, seq_len: int, seed: int) -> np.ndarray:
    """(N, 3, seq_len) BERT-layout ids whose words carry ``text_signal``'s sign (see the module docstring)."""
    from msabench.masks import BERT_CLS_ID, BERT_SEP_ID

    rng = np.random.default_rng([seed, 1016])  # its own stream: the features do not change
    n = text_signal.shape[0]
    out = np.zeros((n, 3, seq_len), dtype=np.int64)
    p_pos = 1.0 / (1.0 + np.exp(-1.5 * text_signal))
    carry = rng.random((n, seq_len)) < 0.6
    positive = rng.random((n, seq_len)) < p_pos[:, None]
    words = np.where(carry, np.where(positive, rng.choice(POSITIVE_IDS, (n, seq_len)),
                                     rng.choice(NEGATIVE_IDS, (n, seq_len))),
                     rng.choice(NEUTRAL_IDS, (n, seq_len)))
    pos = np.arange(seq_len)[None, :]
    lens = np.maximum(lengths, 2)[:, None]
    out[:, 0] = np.where(pos == 0, BERT_CLS_ID, np.where(pos == lens - 1, BERT_SEP_ID, np.where(pos < lens, words, 0)))
    out[:, 1] = pos < lens
    return out


def _assemble(name: str, task: Task, shape: Shape, infos: dict[str, np.ndarray], labels: np.ndarray,
              rng: np.random.Generator, aligned: bool, text_signal: np.ndarray | None = None,
              tokens_seed: int = 0) -> MultimodalDataset:
    n = labels.shape[0]
    features, lengths = {}, {}
    shared_len = _lengths(rng, n, min(shape.seq_lens.values())) if aligned else None
    for m in ("l", "a", "v"):
        lens = shared_len if aligned else _lengths(rng, n, shape.seq_lens[m])
        lengths[m] = lens
        features[m] = _sequences(rng, infos[m], shape.seq_lens[m], shape.dims[m], m, lens)
    text_bert = None
    if text_signal is not None:
        lengths["l"] = np.maximum(lengths["l"], 2)  # room for [CLS] and [SEP]; unchanged for every built-in shape
        text_bert = sentiment_tokens(text_signal, lengths["l"], shape.seq_lens["l"], tokens_seed)
    splits = {}
    bounds = np.cumsum((0,) + shape.sizes)
    for i, split_name in enumerate(("train", "valid", "test")):
        sl = slice(bounds[i], bounds[i + 1])
        splits[split_name] = Split(
            name=split_name,
            # views of the one generated array per modality (rows are contiguous): no second copy
            features={m: torch.from_numpy(features[m][sl]) for m in features},
            lengths={m: torch.from_numpy(lengths[m][sl].astype(np.int64)) for m in lengths},
            labels=torch.from_numpy(labels[sl].copy()),
            ids=[f"{name}_{j:05d}" for j in range(sl.start, sl.stop)],
            text_bert=None if text_bert is None else torch.from_numpy(text_bert[sl].copy()),
        )
    return MultimodalDataset(name, task, splits, aligned=aligned, info={"format": "synthetic"})


def make_sentiment(name: str, shape: Shape, seed: int = 0, aligned: bool = True,
                   tokens: bool = False) -> MultimodalDataset:
    """A MOSI-like regression set: labels in [-3, 3] on a 1/3 grid (averaged annotator scores)."""
    rng = np.random.default_rng(seed)
    n = sum(shape.sizes)
    c = rng.normal(size=(n, 2))
    u = {m: rng.normal(size=(n, 2)) for m in ("l", "a", "v")}
    score = c[:, 0] + 0.55 * u["l"][:, 0] + 0.5 * u["a"][:, 0] + 0.5 * u["v"][:, 0] + 0.25 * rng.normal(size=n)
    labels = np.round(3.0 * np.tanh(score / 1.6) * 3.0) / 3.0
    infos = {
        "l": np.column_stack([c[:, 0], c[:, 1], u["l"]]),
        "a": np.column_stack([0.35 * c[:, 0], c[:, 1], u["a"]]),
        "v": np.column_stack([0.3 * c[:, 0], c[:, 1], u["v"]]),
    }
    # the words carry the text's share of the score: the shared part plus text's own part
    text_signal = c[:, 0] + 0.55 * u["l"][:, 0] if tokens else None
    return _assemble(name, REGRESSION_MOSI, shape, infos, labels.astype(np.float32), rng, aligned, text_signal, seed)


# valence, arousal of Neutral, Happy, Sad, Angry
EMOTION_CENTRES = np.array([[0.0, 0.0], [1.2, 0.6], [-1.0, -0.9], [-1.0, 1.1]])


def make_emotion(name: str, shape: Shape, seed: int = 0, aligned: bool = True,
                 tokens: bool = False) -> MultimodalDataset:
    """An IEMOCAP-like set: one of four emotions per sample, as (N, 4) binary labels (MulT layout)."""
    rng = np.random.default_rng(seed)
    n = sum(shape.sizes)
    cls = rng.choice(4, size=n, p=[0.32, 0.25, 0.2, 0.23])
    va = EMOTION_CENTRES[cls] + 0.45 * rng.normal(size=(n, 2))
    u = {m: rng.normal(size=(n, 2)) for m in ("l", "a", "v")}
    infos = {
        "l": np.column_stack([va[:, 0], 0.3 * va[:, 1], u["l"]]),
        "a": np.column_stack([0.3 * va[:, 0], va[:, 1], u["a"]]),
        "v": np.column_stack([0.45 * va[:, 0], 0.45 * va[:, 1], u["v"]]),
    }
    labels = np.eye(4, dtype=np.float32)[cls]
    text_signal = va[:, 0] if tokens else None  # the words carry valence
    return _assemble(name, EMOTION_IEMOCAP, shape, infos, labels, rng, aligned, text_signal, seed)


MOSI = Shape((1284, 229, 686), {"l": 50, "a": 50, "v": 50}, {"l": 300, "a": 5, "v": 20})
MOSI_UNALIGNED = Shape((1284, 229, 686), {"l": 50, "a": 375, "v": 500}, {"l": 300, "a": 5, "v": 20})
MOSEI = Shape((16326, 1871, 4659), {"l": 50, "a": 50, "v": 50}, {"l": 300, "a": 74, "v": 35})
# MMSA's unaligned_50.pkl: text 50 steps, audio and vision 500 (its text features are 768-d: option text_dim=768)
MOSEI_UNALIGNED = Shape((16326, 1871, 4659), {"l": 50, "a": 500, "v": 500}, {"l": 300, "a": 74, "v": 35})
IEMOCAP = Shape((2717, 798, 938), {"l": 20, "a": 20, "v": 20}, {"l": 300, "a": 74, "v": 35})
SMALL = Shape((320, 80, 160), {"l": 20, "a": 20, "v": 20}, {"l": 32, "a": 8, "v": 12})
SMALL_UNALIGNED = Shape((320, 80, 160), {"l": 20, "a": 30, "v": 25}, {"l": 32, "a": 8, "v": 12})


def _as_bool(value: object) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")


def _scale_option(options: dict) -> float:
    try:
        scale = float(options.get("scale", 1.0))
    except (TypeError, ValueError):
        scale = -1.0
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"dataset option scale={options.get('scale')!r}: use a fraction of the samples in (0, 1]")
    return scale


def _text_dim_option(options: dict, shape: Shape) -> int:
    try:
        dim = int(options.get("text_dim", shape.dims["l"]))
    except (TypeError, ValueError):
        dim = 0
    if dim < 1:
        raise ValueError(f"dataset option text_dim={options.get('text_dim')!r}: use a positive feature size, "
                         "e.g. 768 (BERT)")
    return dim


class _Synthetic(DatasetSource):
    takes_path = False
    shape: Shape = SMALL
    unaligned_shape: Shape = SMALL_UNALIGNED
    emotion = False

    def load(self) -> MultimodalDataset:
        seed = int(self.options.get("seed", 0))
        aligned = _as_bool(self.options.get("aligned", True))
        text = str(self.options.get("text", "features"))
        unknown = set(self.options) - {"seed", "aligned", "scale", "text_dim", "text"}
        if unknown:
            raise ValueError(f"dataset {self.name!r} takes options seed, aligned, scale, text_dim and text, "
                             f"not {sorted(unknown)}")
        if text not in ("features", "bert"):
            raise ValueError(f"dataset {self.name!r}: option text={text!r} should be features or bert")
        shape = self.shape if aligned else self.unaligned_shape
        extra = ""
        if "scale" in self.options or "text_dim" in self.options:
            scale, text_dim = _scale_option(self.options), _text_dim_option(self.options, shape)
            shape = Shape(tuple(max(2, round(n * scale)) for n in shape.sizes), dict(shape.seq_lens),
                          {**shape.dims, "l": text_dim})
            extra = f",scale={scale:g},text_dim={text_dim}"
        make = make_emotion if self.emotion else make_sentiment
        name = self.name if (seed == 0 and aligned and not extra) else f"{self.name}[seed={seed},aligned={aligned}{extra}]"
        if text == "bert":
            name += "[text=bert]"
        return make(name, shape, seed=seed, aligned=aligned, tokens=text == "bert")


class SyntheticSmall(_Synthetic):
    name = "synthetic-small"
    description = "tiny synthetic sentiment set (320/80/160, T=20) for tests and the demo"


class SyntheticMOSI(_Synthetic):
    name = "synthetic-mosi"
    description = "synthetic CMU-MOSI shapes: 1284/229/686, T=50, dims 300/5/20 (option aligned=false: 50/375/500)"
    shape = MOSI
    unaligned_shape = MOSI_UNALIGNED


class SyntheticMOSEI(_Synthetic):
    name = "synthetic-mosei"
    description = ("synthetic CMU-MOSEI shapes: 16326/1871/4659, T=50, dims 300/74/35 (option aligned=false: "
                   "50/500/500 as MMSA's unaligned_50.pkl; text_dim=768 for its BERT text; scale=0.25 for a quarter "
                   "of the samples)")
    shape = MOSEI
    unaligned_shape = MOSEI_UNALIGNED


class SyntheticIEMOCAP(_Synthetic):
    name = "synthetic-iemocap"
    description = "synthetic IEMOCAP (MulT layout): 2717/798/938, T=20, dims 300/74/35, 4 emotions"
    shape = IEMOCAP
    unaligned_shape = IEMOCAP
    emotion = True
