"""Late fusion, and its evaluation path that encodes only the present frames, against numpy and the dense formula."""
from __future__ import annotations

import numpy as np
import torch

from msabench.methods._blocks import masked_mean, present_frames_only
from msabench.methods.late_fusion import LateFusionModel
from msabench.training import Batch

DIMS = {"l": 6, "a": 3, "v": 4}


def _batch(n: int = 9, t: int = 7, p_present: float = 0.4, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    mask = {m: torch.rand(n, t, generator=gen) < p_present for m in DIMS}
    mask["a"][2] = False  # one sample without any audio frame
    feats = {m: torch.randn(n, t, d, generator=gen) * mask[m].unsqueeze(-1) for m, d in DIMS.items()}
    return Batch(features=feats, mask=mask, lengths={m: torch.full((n,), t) for m in DIMS},
                 labels=torch.zeros(n), index=torch.arange(n))


def _model(dropout: float = 0.3) -> LateFusionModel:
    torch.manual_seed(5)
    return LateFusionModel(DIMS, hidden=8, dropout=dropout, n_out=1)


def _dense(model: LateFusionModel, batch: Batch) -> torch.Tensor:
    """The model's formula over every frame, present or not (what training computes)."""
    pooled = [masked_mean(torch.relu(model.encoders[m](batch.features[m])), batch.mask[m])
              for m in model.modalities]
    return model.head(model.dropout(torch.cat(pooled, dim=-1))).squeeze(-1)


def _numpy_linear(layer: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    return x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()


def test_evaluation_matches_numpy_mean_over_present_frames():
    model, batch = _model().eval(), _batch()
    with torch.inference_mode():
        pred = model(batch).numpy()
    expected = []
    for i in range(len(batch)):
        pooled = []
        for m in sorted(DIMS):
            frames = batch.features[m][i][batch.mask[m][i]].double().numpy()
            enc = model.encoders[m]
            h = np.maximum(_numpy_linear(enc[3], np.maximum(_numpy_linear(enc[0], frames), 0)), 0)
            pooled.append(h.mean(axis=0) if len(frames) else np.zeros(8))
        z = np.concatenate(pooled)
        expected.append(_numpy_linear(model.head[3], np.maximum(_numpy_linear(model.head[0], z), 0))[0])
    np.testing.assert_allclose(pred, expected, rtol=1e-5, atol=1e-6)


def test_evaluation_equals_the_dense_formula_bit_for_bit():
    model = _model().eval()
    for p_present in (0.0, 0.1, 0.5, 1.0):
        batch = _batch(p_present=p_present, seed=int(p_present * 10))
        with torch.inference_mode():
            assert torch.equal(model(batch), _dense(model, batch))


def test_training_stays_dense_so_the_dropout_stream_is_unchanged():
    model, batch = _model().train(), _batch()
    torch.manual_seed(11)
    out = model(batch)
    torch.manual_seed(11)
    assert torch.equal(out, _dense(model, batch))


def test_present_frames_only_computes_present_rows_and_zeroes_the_rest():
    x = torch.randn(3, 4, 2)
    present = torch.tensor([[True, False, True, False], [False] * 4, [True, True, True, True]])
    seen = []

    def framewise(rows: torch.Tensor) -> torch.Tensor:
        seen.append(rows.shape[0])
        return torch.stack([rows.sum(dim=1), rows.prod(dim=1), torch.ones(rows.shape[0])], dim=1)

    out = present_frames_only(framewise, x, present)
    assert seen == [6] and out.shape == (3, 4, 3)
    for b in range(3):
        for t in range(4):
            row = x[b, t]
            expected = [float(row.sum()), float(row.prod()), 1.0] if present[b, t] else [0.0, 0.0, 0.0]
            np.testing.assert_allclose(out[b, t].numpy(), expected, rtol=1e-6)


def test_present_frames_only_with_no_present_frame_and_under_autocast():
    linear = torch.nn.Linear(2, 5)
    out = present_frames_only(linear, torch.randn(2, 3, 2), torch.zeros(2, 3, dtype=torch.bool))
    assert out.shape == (2, 3, 5) and not out.any()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = present_frames_only(linear, torch.randn(2, 3, 2), torch.ones(2, 3, dtype=torch.bool))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 5)
