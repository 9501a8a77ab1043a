"""EF-LSTM: concatenated aligned frames through one LSTM; refuses unaligned data."""
from __future__ import annotations

import pytest
import torch

import msabench.testing

from msabench.data.base import EMOTION_IEMOCAP, REGRESSION_MOSI
from msabench.method import UnsupportedTaskError
from msabench.methods.ef_lstm import EFLSTM, early_fusion
from msabench.runner import RunError, RunRequest, plan
from msabench.testing import check_method
from msabench.training import Batch

QUICK = dict(hidden=8, num_layers=2, dropout=0.1, batch_size=16, epochs=2)


def test_check_method(monkeypatch):
    # msabench.testing asks tiny_datasets for aligned=not requires_aligned, i.e. unaligned data for a method that
    # needs aligned data (reported to the lead); pin the aligned sets until that line is fixed.
    original = msabench.testing.tiny_datasets
    monkeypatch.setattr(msabench.testing, "tiny_datasets", lambda aligned=True, **kw: original(aligned=True, **kw))
    check_method(EFLSTM, quick_params=QUICK)


def test_refuses_unaligned_data_in_plan():
    with pytest.raises(RunError, match="aligned"):
        plan(RunRequest(methods=["ef-lstm"], datasets=["synthetic-small"], dataset_options={"aligned": False},
                        seeds=[1]))
    specs, _ = plan(RunRequest(methods=["ef-lstm"], datasets=["synthetic-small"], seeds=[1]))
    assert len(specs) == 1


def test_refuses_unaligned_in_check_supported_and_build():
    with pytest.raises(UnsupportedTaskError, match="aligned"):
        EFLSTM.check_supported(REGRESSION_MOSI, aligned=False)
    with pytest.raises(UnsupportedTaskError, match="equal sequence lengths"):
        EFLSTM().build({"l": 3, "a": 2, "v": 2}, {"l": 5, "a": 7, "v": 5}, REGRESSION_MOSI)


def test_early_fusion_concatenates_and_unions_masks():
    feats = {"l": torch.ones(1, 3, 2), "a": 2 * torch.ones(1, 3, 1), "v": 3 * torch.ones(1, 3, 1)}
    mask = {"l": torch.tensor([[1, 0, 0]]).bool(), "a": torch.tensor([[0, 1, 0]]).bool(),
            "v": torch.tensor([[0, 0, 0]]).bool()}
    x, present = early_fusion(feats, mask)
    assert x[0, 0].tolist() == [1.0, 1.0, 2.0, 3.0]
    assert present.tolist() == [[True, True, False]]


def test_model_equals_lstm_over_present_steps_per_sample():
    torch.manual_seed(0)
    dims = {"l": 4, "a": 2, "v": 3}
    model = EFLSTM(hidden=6, num_layers=2).build(dims, {m: 6 for m in dims}, EMOTION_IEMOCAP).eval()
    gen = torch.Generator().manual_seed(1)
    mask = {m: torch.rand(5, 6, generator=gen) > 0.5 for m in dims}
    for m in dims:
        mask[m][4] = False  # nothing present at all
    feats = {m: torch.randn(5, 6, d, generator=gen) * mask[m].unsqueeze(-1) for m, d in dims.items()}
    batch = Batch(feats, mask, {m: torch.full((5,), 6) for m in dims}, torch.zeros(5, 4), torch.arange(5))
    with torch.no_grad():
        got = model(batch)
        for i in range(5):
            present = mask["l"][i] | mask["a"][i] | mask["v"][i]
            frames = torch.cat([feats[m][i] for m in ("l", "a", "v")], dim=-1)[present]
            h = torch.zeros(6) if len(frames) == 0 else model.lstm(frames.unsqueeze(0))[1][0][-1, 0]
            torch.testing.assert_close(got[i], model.head(h.unsqueeze(0))[0])
    assert torch.isfinite(got).all()
