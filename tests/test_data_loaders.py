"""MMSA and MulT IEMOCAP pickle loaders on small hand-written files."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from msabench.data.base import EMOTION_IEMOCAP, REGRESSION_MOSI, REGRESSION_SIMS, DataError
from msabench.data.mmsa import MMSAPickle
from msabench.data.mult_iemocap import MulTIEMOCAPPickle
from msabench.data.safe_pickle import UnsafePickleError

SIZES = {"train": 6, "valid": 3, "test": 4}
T_TEXT, T_AUDIO, T_VISION = 8, 10, 12
D_TEXT, D_AUDIO, D_VISION = 5, 4, 3
REAL_MOSI = Path(__file__).resolve().parents[1].parent / "shared/data/mosi-utterance/mosi_utterance.pkl"


def _padded(rng: np.random.Generator, lengths: list[int], t: int, d: int) -> np.ndarray:
    """Values in [1, 2) up to each length, zeros after."""
    x = np.zeros((len(lengths), t, d), dtype=np.float32)
    for i, n in enumerate(lengths):
        x[i, :n] = 1.0 + rng.random((n, d), dtype=np.float32)
    return x


def _mmsa_split(rng, n: int, split: str, aligned: bool, sims: bool = False) -> dict:
    text_len = [(i % T_TEXT) + 1 for i in range(n)]
    t_a, t_v = (T_TEXT, T_TEXT) if aligned else (T_AUDIO, T_VISION)
    audio_len = [(2 * i) % t_a + 1 for i in range(n)]
    vision_len = [t_v - i for i in range(n)]
    limit = 1.0 if sims else 3.0
    labels = np.linspace(-limit, limit, n).astype(np.float32)
    out = {
        "id": [f"{split}_vid_{i}" for i in range(n)],
        "raw_text": ["word"] * n,
        "text": _padded(rng, text_len, T_TEXT, D_TEXT),
        "audio": _padded(rng, audio_len, t_a, D_AUDIO),
        "vision": _padded(rng, vision_len, t_v, D_VISION),
        "regression_labels": labels,
        "classification_labels": np.sign(labels).astype(np.int64) + 1,
        "annotations": ["x"] * n,
    }
    if not aligned:
        out["audio_lengths"] = audio_len  # a list, as MMSA stores it
        out["vision_lengths"] = np.array(vision_len)
    if sims:
        for key in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            out[key] = labels.copy()
    return out


def _mmsa_data(aligned: bool, sims: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {s: _mmsa_split(rng, n, s, aligned, sims) for s, n in SIZES.items()}


def _dump(data: object, path: Path) -> str:
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return str(path)


# ---------------------------------------------------------------------------------------------------- MMSA


def test_mmsa_unaligned(tmp_path):
    data = _mmsa_data(aligned=False)
    data["train"]["audio"][1, 0, 2] = -np.inf
    data["train"]["audio"][2, 1, 0] = np.inf
    path = _dump(data, tmp_path / "mosi_unaligned.pkl")
    ds = MMSAPickle(path).load()
    assert ds.name == "mosi_unaligned"
    assert ds.task == REGRESSION_MOSI
    assert ds.aligned is False
    assert ds.info["format"] == "mmsa" and ds.info["path"] == path
    for split, n in SIZES.items():
        s = ds[split]
        raw = data[split]
        assert len(s) == n
        assert tuple(s.features["l"].shape) == (n, T_TEXT, D_TEXT)
        assert tuple(s.features["a"].shape) == (n, T_AUDIO, D_AUDIO)
        assert tuple(s.features["v"].shape) == (n, T_VISION, D_VISION)
        assert s.features["l"].dtype == torch.float32
        assert s.lengths["l"].tolist() == [(i % T_TEXT) + 1 for i in range(n)]
        assert s.lengths["a"].tolist() == raw["audio_lengths"]
        assert s.lengths["v"].tolist() == raw["vision_lengths"].tolist()
        assert s.labels.dtype == torch.float32
        np.testing.assert_array_equal(s.labels.numpy(), raw["regression_labels"])
        assert s.ids == [f"{split}_vid_{i}" for i in range(n)]
        assert s.text_bert is None
    audio = ds.train.features["a"]
    assert audio[1, 0, 2].item() == 0.0 and audio[2, 1, 0].item() == 0.0
    assert torch.isfinite(audio).all()
    np.testing.assert_array_equal(audio[0].numpy(), data["train"]["audio"][0])


def test_mmsa_aligned_without_lengths_uses_full_t(tmp_path):
    ds = MMSAPickle(_dump(_mmsa_data(aligned=True), tmp_path / "aligned.pkl")).load()
    assert ds.aligned is True
    assert ds.test.lengths["a"].tolist() == [T_TEXT] * 4
    assert ds.test.lengths["v"].tolist() == [T_TEXT] * 4
    assert ds.test.lengths["l"].tolist() == [1, 2, 3, 4]


def test_mmsa_text_length_all_zero_sample_and_inner_zero(tmp_path):
    data = _mmsa_data(aligned=True)
    data["valid"]["text"][0] = 0.0
    data["valid"]["text"][2, :] = 0.0
    data["valid"]["text"][2, 4, 1] = 0.5  # frames 0-3 zero, frame 4 not: length 5
    ds = MMSAPickle(_dump(data, tmp_path / "z.pkl")).load()
    assert ds.valid.lengths["l"].tolist() == [0, 2, 5]


def _add_text_bert(data: dict) -> dict[str, list[int]]:
    expected = {}
    for split, d in data.items():
        n = len(d["id"])
        lens = [(i % T_TEXT) + 1 for i in range(n)]
        tb = np.zeros((n, 3, T_TEXT), dtype=np.int64)
        for i, k in enumerate(lens):
            tb[i, 0, :k] = 100 + np.arange(k)
            tb[i, 1, :k] = 1
        d["text_bert"] = tb.astype(np.float64)  # some releases store float token ids
        expected[split] = lens
    return expected


def test_mmsa_text_bert(tmp_path):
    data = _mmsa_data(aligned=True)
    expected = _add_text_bert(data)
    data["train"]["text"][:, -1, 0] = 1.0  # feature padding no longer tells the length; the mask must
    path = _dump(data, tmp_path / "bert.pkl")
    ds = MMSAPickle(path, text="bert").load()
    for split in SIZES:
        s = ds[split]
        assert s.lengths["l"].tolist() == expected[split]
        assert s.text_bert is not None and s.text_bert.dtype == torch.long
        assert tuple(s.text_bert.shape) == (SIZES[split], 3, T_TEXT)
        assert tuple(s.features["l"].shape) == (SIZES[split], T_TEXT, D_TEXT)
    assert ds.train.text_bert[2, 0, :3].tolist() == [100, 101, 102]
    feats = MMSAPickle(path, text="features").load()
    assert feats.train.text_bert is None
    assert feats.train.lengths["l"].tolist() == expected["train"]


def test_mmsa_bert_option_needs_text_bert(tmp_path):
    path = _dump(_mmsa_data(aligned=True), tmp_path / "nobert.pkl")
    with pytest.raises(DataError, match="text_bert"):
        MMSAPickle(path, text="bert").load()
    with pytest.raises(DataError, match="text"):
        MMSAPickle(path, text="glove").load()


def test_mmsa_sims_inferred_and_overridden(tmp_path):
    path = _dump(_mmsa_data(aligned=False, sims=True), tmp_path / "sims.pkl")
    assert MMSAPickle(path).load().task == REGRESSION_SIMS
    assert MMSAPickle(path, metric_set="mosi").load().task == REGRESSION_MOSI
    assert MMSAPickle(path, metric_set="None").load().task == REGRESSION_SIMS
    with pytest.raises(DataError, match="metric_set"):
        MMSAPickle(path, metric_set="iemocap").load()
    plain = _dump(_mmsa_data(aligned=False, sims=False), tmp_path / "plain.pkl")
    assert MMSAPickle(plain).load().task == REGRESSION_MOSI
    # a MOSI-range file forced to SIMS has labels outside [-1, 1]
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        MMSAPickle(plain, metric_set="sims").load()


def test_mmsa_needs_path():
    with pytest.raises(DataError, match="mmsa:PATH"):
        MMSAPickle(None)


def _load_broken(tmp_path, mutate) -> str:
    data = _mmsa_data(aligned=False)
    mutate(data)
    path = _dump(data, tmp_path / "broken.pkl")
    with pytest.raises(DataError) as info:
        MMSAPickle(path).load()
    message = str(info.value)
    assert "broken.pkl" in message
    return message


def test_mmsa_missing_split(tmp_path):
    msg = _load_broken(tmp_path, lambda d: d.pop("valid"))
    assert "missing split 'valid'" in msg


def test_mmsa_missing_key(tmp_path):
    msg = _load_broken(tmp_path, lambda d: d["test"].pop("audio"))
    assert "'test'" in msg and "missing key 'audio'" in msg


def test_mmsa_missing_labels(tmp_path):
    msg = _load_broken(tmp_path, lambda d: d["train"].pop("regression_labels"))
    assert "'train'" in msg and "'regression_labels'" in msg


def test_mmsa_mismatched_n(tmp_path):
    def mutate(d):
        d["train"]["vision"] = d["train"]["vision"][:5]

    msg = _load_broken(tmp_path, mutate)
    assert "'train'" in msg and "'vision'" in msg and "5 samples" in msg and "6" in msg


def test_mmsa_mismatched_lengths_count(tmp_path):
    msg = _load_broken(tmp_path, lambda d: d["valid"]["audio_lengths"].pop())
    assert "'valid'" in msg and "audio_lengths" in msg


def test_mmsa_mismatched_ids(tmp_path):
    msg = _load_broken(tmp_path, lambda d: d["valid"]["id"].pop())
    assert "'valid'" in msg and "'id'" in msg


def test_mmsa_wrong_rank(tmp_path):
    def mutate(d):
        d["valid"]["audio"] = d["valid"]["audio"][:, 0, :]

    msg = _load_broken(tmp_path, mutate)
    assert "'valid'" in msg and "'audio'" in msg and "rank-3" in msg


def test_mmsa_label_out_of_range(tmp_path):
    def mutate(d):
        d["test"]["regression_labels"][2] = 3.5

    msg = _load_broken(tmp_path, mutate)
    assert "'test'" in msg and "labels" in msg and "[-3, 3]" in msg


def test_mmsa_nan_features(tmp_path):
    def mutate(d):
        d["valid"]["vision"][1, 0, 0] = np.nan
        d["valid"]["vision"][1, 3, 2] = np.nan

    msg = _load_broken(tmp_path, mutate)
    assert "'valid'" in msg and "'vision'" in msg and "2 NaN values" in msg and "[1]" in msg


def test_mmsa_length_beyond_t(tmp_path):
    def mutate(d):
        d["train"]["audio_lengths"][3] = T_AUDIO + 1

    msg = _load_broken(tmp_path, mutate)
    assert "'train'" in msg and "audio_lengths" in msg and "[3]" in msg


def test_mmsa_inf_in_vision_is_an_error(tmp_path):
    def mutate(d):
        d["test"]["vision"][0, 0, 0] = -np.inf

    msg = _load_broken(tmp_path, mutate)
    assert "'vision'" in msg and "infinite" in msg


def test_mmsa_not_a_dict(tmp_path):
    path = _dump([1, 2, 3], tmp_path / "list.pkl")
    with pytest.raises(DataError, match="list.pkl"):
        MMSAPickle(path).load()


def test_mmsa_refuses_unsafe_pickle(tmp_path):
    data = _mmsa_data(aligned=True)
    data["train"]["extra"] = Path("not/plain/data")  # a class outside the allow-list
    path = _dump(data, tmp_path / "unsafe.pkl")
    with pytest.raises(UnsafePickleError, match=r"unsafe\.pkl.*pathlib"):
        MMSAPickle(path).load()


@pytest.mark.skipif(not REAL_MOSI.exists() and not os.environ.get("CI"), reason=f"{REAL_MOSI} not present")
def test_real_mosi_utterance():
    assert REAL_MOSI.exists(), f"{REAL_MOSI} missing (CI is set)"
    ds = MMSAPickle(str(REAL_MOSI)).load()
    assert {s: len(ds[s]) for s in ("train", "valid", "test")} == {"train": 1215, "valid": 232, "test": 752}
    assert ds.train.dims() == {"l": 100, "a": 73, "v": 100}
    assert ds.task == REGRESSION_MOSI
    assert ds.aligned is True
    for split in ds.splits.values():
        for m in ("l", "a", "v"):
            assert (split.lengths[m] == 1).all()
        assert split.labels.abs().max().item() <= 3.0
    assert len(set(ds.train.ids) | set(ds.valid.ids) | set(ds.test.ids)) == 2199


# ---------------------------------------------------------------------------------------------------- MulT IEMOCAP


def _iemocap_data(with_ids: bool = True, seed: int = 1) -> tuple[dict, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    data, expected = {}, {}
    for split, n in SIZES.items():
        present = rng.integers(0, 2, size=(n, 4))
        onehot = np.zeros((n, 4, 2), dtype=np.float32)
        onehot[np.arange(n)[:, None], np.arange(4)[None, :], present] = 1.0
        d = {
            "text": rng.standard_normal((n, 20, 300)).astype(np.float32),
            "audio": rng.standard_normal((n, 20, 74)).astype(np.float32),
            "vision": rng.standard_normal((n, 20, 35)).astype(np.float32),
            "labels": onehot,
        }
        if with_ids:
            d["id"] = np.array([f"Ses0{i}F_{split}".encode() for i in range(n)])
        data[split] = d
        expected[split] = present
    return data, expected


def test_mult_iemocap(tmp_path):
    data, expected = _iemocap_data()
    data["train"]["audio"][0, 5, 7] = -np.inf
    data["test"]["audio"][3, 19, 73] = np.inf
    path = _dump(data, tmp_path / "iemocap_data.pkl")
    ds = MulTIEMOCAPPickle(path).load()
    assert ds.task == EMOTION_IEMOCAP
    assert ds.name == "iemocap_data"
    assert ds.aligned is True
    assert ds.info["format"] == "mult-iemocap"
    for split, n in SIZES.items():
        s = ds[split]
        assert s.dims() == {"l": 300, "a": 74, "v": 35}
        assert s.seq_lens() == {"l": 20, "a": 20, "v": 20}
        for m in ("l", "a", "v"):
            assert s.lengths[m].tolist() == [20] * n
        assert tuple(s.labels.shape) == (n, 4)
        assert s.labels.dtype == torch.float32
        np.testing.assert_array_equal(s.labels.numpy(), expected[split].astype(np.float32))
        assert s.ids == [f"Ses0{i}F_{split}" for i in range(n)]
    assert ds.train.features["a"][0, 5, 7].item() == 0.0
    assert ds.test.features["a"][3, 19, 73].item() == 0.0
    np.testing.assert_array_equal(ds.valid.features["l"].numpy(), data["valid"]["text"])


def test_mult_iemocap_without_ids(tmp_path):
    data, _ = _iemocap_data(with_ids=False)
    ds = MulTIEMOCAPPickle(_dump(data, tmp_path / "noid.pkl")).load()
    assert ds.valid.ids == ["valid_0", "valid_1", "valid_2"]


def test_mult_iemocap_two_column_ids(tmp_path):
    data, _ = _iemocap_data(with_ids=False)
    for split, n in SIZES.items():
        data[split]["id"] = np.array([[b"Ses01F", str(i).encode()] for i in range(n)])
    ds = MulTIEMOCAPPickle(_dump(data, tmp_path / "ids2.pkl")).load()
    assert ds.test.ids == ["Ses01F_0", "Ses01F_1", "Ses01F_2", "Ses01F_3"]


def _iemocap_broken(tmp_path, mutate) -> str:
    data, _ = _iemocap_data()
    mutate(data)
    path = _dump(data, tmp_path / "bad_iemocap.pkl")
    with pytest.raises(DataError) as info:
        MulTIEMOCAPPickle(path).load()
    assert "bad_iemocap.pkl" in str(info.value)
    return str(info.value)


def test_mult_iemocap_errors(tmp_path):
    msg = _iemocap_broken(tmp_path, lambda d: d.pop("test"))
    assert "missing split 'test'" in msg
    msg = _iemocap_broken(tmp_path, lambda d: d["valid"].pop("labels"))
    assert "'valid'" in msg and "missing key 'labels'" in msg

    def wrong_label_shape(d):
        d["train"]["labels"] = d["train"]["labels"][:, :3, :]

    msg = _iemocap_broken(tmp_path, wrong_label_shape)
    assert "'labels'" in msg and "(N, 4, 2)" in msg

    def not_one_hot(d):
        d["train"]["labels"][2, 1] = [1.0, 1.0]

    msg = _iemocap_broken(tmp_path, not_one_hot)
    assert "one-hot" in msg and "[2]" in msg

    def short_audio(d):
        d["test"]["audio"] = d["test"]["audio"][:3]

    msg = _iemocap_broken(tmp_path, short_audio)
    assert "'test'" in msg and "'audio'" in msg and "3 samples" in msg

    def rank2_text(d):
        d["train"]["text"] = d["train"]["text"][:, :, 0]

    msg = _iemocap_broken(tmp_path, rank2_text)
    assert "'text'" in msg and "rank-3" in msg

    def nan_vision(d):
        d["valid"]["vision"][2, 3, 4] = np.nan

    msg = _iemocap_broken(tmp_path, nan_vision)
    assert "'vision'" in msg and "1 NaN values" in msg and "[2]" in msg
