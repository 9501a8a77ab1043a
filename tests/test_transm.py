"""TransModality: contract, teacher forcing without look-ahead, translation loss on present frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msabench.data.base import REGRESSION_MOSI
from msabench.methods.transm import PAIRS, TransM, TransMModel, Translator, shift_right
from msabench.testing import check_method
from msabench.training import Batch


def test_check_method() -> None:
    check_method(TransM, quick_params={"d_model": 8, "heads": 2, "epochs": 2})


def test_shift_right() -> None:
    x = torch.arange(12.0).reshape(1, 4, 3)
    expected = np.concatenate([np.zeros((1, 1, 3)), x.numpy()[:, :3]], axis=1)
    assert np.array_equal(shift_right(x).numpy(), expected)


def test_decoder_does_not_look_ahead() -> None:
    """Frame t of the translation depends on target frames < t only (teacher forcing, causal mask)."""
    torch.manual_seed(0)
    tr = Translator(src_dim=5, tgt_dim=3, d=8, heads=2, layers=1, dropout=0.0).eval()
    src, present = torch.randn(2, 7, 5), torch.ones(2, 7, dtype=torch.bool)
    tgt = torch.randn(2, 6, 3)
    memory = tr(src, present)
    base = tr.translate(memory, present, tgt)
    changed = tgt.clone()
    changed[:, 3:] = torch.randn(2, 3, 3)
    after = tr.translate(memory, present, changed)
    assert torch.allclose(base[:, :4], after[:, :4], atol=1e-6)  # frames 0..3 read targets 0..2 only
    assert not torch.allclose(base[:, 4:], after[:, 4:])


def _batch(b: int = 3, t: int = 5) -> Batch:
    dims = {"l": 4, "a": 3, "v": 2}
    feats = {m: torch.randn(b, t, d) for m, d in dims.items()}
    mask = {m: torch.rand(b, t) > 0.3 for m in dims}
    mask["a"][0] = False  # one sample without audio at all
    feats = {m: x * mask[m].unsqueeze(-1) for m, x in feats.items()}
    return Batch(features=feats, mask=mask, lengths={m: torch.full((b,), t) for m in dims},
                 labels=torch.randn(b), index=torch.arange(b))


def test_loss_is_task_plus_mean_translation_error_on_present_frames() -> None:
    torch.manual_seed(1)
    batch = _batch()
    model = TransMModel({"l": 4, "a": 3, "v": 2}, d=8, heads=2, layers=1, dropout=0.0, n_out=1).train()
    with torch.no_grad():
        out = model(batch)
    assert set(out) == {"pred"} | {f"{s}2{t}" for s, t in PAIRS}
    method = TransM(translation_weight=0.5)
    trans = []
    for s, t in PAIRS:
        p, x, m = out[f"{s}2{t}"].numpy(), batch.features[t].numpy(), batch.mask[t].numpy()
        trans.append(((p - x) ** 2)[m].mean())
    expected = np.abs(out["pred"].numpy() - batch.labels.numpy()).mean() + 0.5 * np.mean(trans)
    assert float(method.loss(out, batch, REGRESSION_MOSI)) == pytest.approx(expected, rel=1e-5)


def test_eval_output_has_no_translations_and_is_finite_without_a_modality() -> None:
    batch = _batch()
    for m in batch.mask:
        batch.mask[m][1] = False
        batch.features[m][1] = 0.0
    model = TransMModel({"l": 4, "a": 3, "v": 2}, d=8, heads=2, layers=1, dropout=0.1, n_out=4).eval()
    with torch.no_grad():
        out = model(batch)
    assert set(out) == {"pred"} and out["pred"].shape == (3, 4) and torch.isfinite(out["pred"]).all()
