"""The built-in synthetic datasets: shapes, determinism, padding, and a signal that behaves like MSA data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import f1_score

from msabench.data.base import DataError
from msabench.plugins import load_dataset


@pytest.fixture(scope="module")
def mosi():
    return load_dataset("synthetic-mosi")


def test_mosi_shapes_and_labels(mosi):
    assert [len(mosi[s]) for s in ("train", "valid", "test")] == [1284, 229, 686]
    assert mosi.train.dims() == {"l": 300, "a": 5, "v": 20}
    assert mosi.train.seq_lens() == {"l": 50, "a": 50, "v": 50}
    labels = torch.cat([mosi[s].labels for s in ("train", "valid", "test")]).numpy()
    assert labels.min() >= -3 and labels.max() <= 3
    assert np.allclose(labels * 3, np.round(labels * 3), atol=1e-5)  # annotator-average grid
    assert 0.01 < np.mean(labels == 0) < 0.2  # some neutral labels, so Has0 and Non0 differ
    assert mosi.task.metric_set == "mosi" and mosi.aligned


def test_unaligned_and_iemocap_shapes():
    unaligned = load_dataset("synthetic-mosi", aligned="false")
    assert unaligned.train.seq_lens() == {"l": 50, "a": 375, "v": 500}
    assert not unaligned.aligned
    iemocap = load_dataset("synthetic-iemocap")
    assert [len(iemocap[s]) for s in ("train", "valid", "test")] == [2717, 798, 938]
    assert iemocap.train.dims() == {"l": 300, "a": 74, "v": 35}
    assert iemocap.task.label_names == ("Neutral", "Happy", "Sad", "Angry")
    labels = iemocap.train.labels
    assert labels.shape == (2717, 4) and torch.all(labels.sum(dim=1) == 1)


def test_deterministic_by_seed():
    a, b = load_dataset("synthetic-small"), load_dataset("synthetic-small")
    assert a.fingerprint == b.fingerprint
    assert torch.equal(a.train.features["a"], b.train.features["a"])
    c = load_dataset("synthetic-small", seed=1)
    assert c.fingerprint != a.fingerprint


def test_variable_lengths_with_zero_padding(mosi):
    for m in "lav":
        lengths = mosi.train.lengths[m]
        assert lengths.min() < lengths.max()  # variable
        x = mosi.train.features[m]
        pad = ~mosi.train.padding_mask()[m]
        assert torch.count_nonzero(x[pad]) == 0
        assert torch.count_nonzero(x[~pad]) > 0


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="takes options seed, aligned, scale, text_dim and text"):
        load_dataset("synthetic-small", colour="red")
    with pytest.raises(DataError, match="takes no path"):
        load_dataset("synthetic-small:/tmp/x.pkl")


def _pooled(split, mods):
    cols = []
    for m in mods:
        x, lengths = split.features[m].numpy(), split.lengths[m].numpy()
        cols.append(x.sum(axis=1) / np.maximum(lengths, 1)[:, None])
    return np.hstack(cols)


def test_signal_text_strongest_and_modalities_complement(mosi):
    """Independent check with scikit-learn ridge on pooled features (like the mosi-utterance reference)."""
    y_train, y_test = mosi.train.labels.numpy(), mosi.test.labels.numpy()
    nonzero = y_test != 0
    f1 = {}
    for mods in ("l", "a", "v", "lav"):
        ridge = RidgeCV(alphas=np.logspace(-2, 3, 12)).fit(_pooled(mosi.train, mods), y_train)
        pred = ridge.predict(_pooled(mosi.test, mods))
        f1[mods] = f1_score(y_test[nonzero] > 0, pred[nonzero] > 0, average="weighted")
    assert f1["l"] > f1["a"] + 0.05 and f1["l"] > f1["v"] + 0.05
    assert f1["lav"] > f1["l"] + 0.03
    assert min(f1["a"], f1["v"]) > 0.58  # weaker, but real signal


@pytest.mark.slow
def test_late_fusion_scores_text_above_audio_vision_and_all_above_text(tmp_path):
    from msabench.cli import main
    from msabench.store import read_rows

    assert main(["run", "--method", "late-fusion", "--protocol", "modality-missing", "--dataset", "synthetic-mosi",
                 "--seeds", "1111", "--epochs", "12", "--out", str(tmp_path), "--quiet"]) == 0
    rows = read_rows([tmp_path])
    f1 = rows[(rows.split == "test") & (rows.metric == "Non0_F1")].set_index("condition")["value"]
    assert f1["{l}"] > f1["{a}"] + 0.05 and f1["{l}"] > f1["{v}"] + 0.05
    assert f1["{l,a,v}"] > f1["{l}"] + 0.02
