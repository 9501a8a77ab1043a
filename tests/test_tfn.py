"""TFN: the tensor fusion against numpy outer products, the present-frame LSTM against per-sample runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msabench.data.base import EMOTION_IEMOCAP, REGRESSION_MOSI, REGRESSION_SIMS
from msabench.methods._blocks import compact_present, last_present_output
from msabench.methods.tfn import TFN, tensor_fusion
from msabench.testing import check_method
from msabench.training import Batch

QUICK = dict(text_hidden=8, audio_hidden=4, video_hidden=5, text_out=3, post_fusion_dim=8, batch_size=16, epochs=2)


def test_check_method():
    check_method(TFN, quick_params=QUICK)


def test_tensor_fusion_equals_numpy_outer_product():
    rng = np.random.default_rng(0)
    a, v, l = rng.normal(size=(3, 2)), rng.normal(size=(3, 4)), rng.normal(size=(3, 3))
    got = tensor_fusion([torch.tensor(a), torch.tensor(v), torch.tensor(l)]).numpy()
    assert got.shape == (3, 3 * 5 * 4)
    for i in range(3):
        za, zv, zl = (np.concatenate([[1.0], x[i]]) for x in (a, v, l))
        expected = np.multiply.outer(np.multiply.outer(za, zv), zl).reshape(-1)
        np.testing.assert_allclose(got[i], expected, rtol=1e-12)
    # the constant 1 keeps the unimodal vectors and bimodal products inside the fused tensor
    full = got.reshape(3, 3, 5, 4)
    np.testing.assert_allclose(full[:, 1:, 0, 0], a)
    np.testing.assert_allclose(full[:, 0, 1:, 1:], np.einsum("bi,bj->bij", v, l))


def test_tensor_fusion_hand_example():
    got = tensor_fusion([torch.tensor([[2.0]]), torch.tensor([[3.0]]), torch.tensor([[5.0]])])
    # [1,2] x [1,3] x [1,5] flattened with the first index slowest
    assert got.tolist() == [[1, 5, 3, 15, 2, 10, 6, 30]]


def test_compact_present_keeps_order():
    x = torch.arange(1.0, 6.0).view(1, 5, 1).repeat(2, 1, 1)
    mask = torch.tensor([[False, True, False, True, True], [False] * 5])
    out, counts = compact_present(x, mask)
    assert counts.tolist() == [3, 0]
    assert out[0, :, 0].tolist() == [2.0, 4.0, 5.0]
    assert out[1].abs().sum() == 0


def test_last_present_output_equals_lstm_on_present_frames_only():
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    x = torch.randn(4, 7, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0],
                         [0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    got = last_present_output(rnn, x, mask)
    for i in range(4):
        frames = x[i][mask[i]]
        if len(frames) == 0:
            expected = torch.zeros(4)
        else:
            _, (h, _) = rnn(frames.unsqueeze(0))
            expected = h[-1, 0]
        torch.testing.assert_close(got[i], expected)


def _batch(n: int = 6, t: int = 5, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    dims = {"l": 6, "a": 3, "v": 4}
    mask = {m: torch.rand(n, t, generator=gen) > 0.4 for m in dims}
    mask["a"][0] = False  # a whole modality absent
    feats = {m: torch.randn(n, t, d, generator=gen) * mask[m].unsqueeze(-1) for m, d in dims.items()}
    lengths = {m: torch.full((n,), t) for m in dims}
    return Batch(feats, mask, lengths, torch.zeros(n), torch.arange(n))


@pytest.mark.parametrize("task", [REGRESSION_MOSI, EMOTION_IEMOCAP])
def test_output_ignores_absent_frames(task):
    torch.manual_seed(0)
    model = TFN(**QUICK).build({"l": 6, "a": 3, "v": 4}, {"l": 5, "a": 5, "v": 5}, task).eval()
    batch = _batch()
    noisy = Batch({m: x + 100.0 * (~batch.mask[m]).unsqueeze(-1) for m, x in batch.features.items()},
                  batch.mask, batch.lengths, batch.labels, batch.index)
    with torch.no_grad():
        clean, dirty = model(batch), model(noisy)
    assert torch.isfinite(clean).all()
    torch.testing.assert_close(clean, dirty)
    assert clean.shape == ((6,) if task.kind == "regression" else (6, 4))


@pytest.mark.parametrize("task,limit", [(REGRESSION_MOSI, 3.0), (REGRESSION_SIMS, 1.0)])
def test_regression_output_is_scaled_sigmoid(task, limit):
    torch.manual_seed(0)
    model = TFN(**QUICK).build({"l": 6, "a": 3, "v": 4}, {"l": 5, "a": 5, "v": 5}, task).eval()
    last = model.post_fusion[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(0.7)
        out = model(_batch())
    expected = (1 / (1 + np.exp(-0.7))) * 2 * limit - limit
    np.testing.assert_allclose(out.numpy(), np.full(6, expected), rtol=1e-6)


def test_post_fusion_input_size_matches_mmsa_formula():
    model = TFN().build({"l": 300, "a": 5, "v": 20}, {"l": 50, "a": 50, "v": 50}, REGRESSION_MOSI)
    # MMSA MOSI defaults: audio 32, video 128, text_out 32 -> (32+1)(128+1)(32+1) inputs, 64 units
    assert model.post_fusion[1].in_features == 33 * 129 * 33
    assert model.post_fusion[1].out_features == 64


def test_refuses_multiclass():
    from msabench.data.base import Task
    from msabench.method import UnsupportedTaskError

    with pytest.raises(UnsupportedTaskError):
        TFN.check_supported(Task("multiclass", "multiclass", ("a", "b")), aligned=True)
