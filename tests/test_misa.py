"""MISA: CMD and the difference loss against numpy; the encoder against per-sample LSTM runs."""
from __future__ import annotations

import numpy as np
import torch

from msabench.data.base import EMOTION_IEMOCAP
from msabench.methods.misa import MISA, StackedBiLSTM, cmd, difference_loss
from msabench.testing import check_method
from msabench.training import Batch

QUICK = dict(hidden_size=8, text_rnn_hidden=4, lr=1e-3, batch_size=16, epochs=2)


def test_check_method():
    check_method(MISA, quick_params=QUICK)


def _np_cmd(x1: np.ndarray, x2: np.ndarray, k_max: int) -> float:
    total = np.linalg.norm(x1.mean(0) - x2.mean(0))
    for k in range(2, k_max + 1):
        total += np.linalg.norm(((x1 - x1.mean(0)) ** k).mean(0) - ((x2 - x2.mean(0)) ** k).mean(0))
    return total


def test_cmd_matches_numpy():
    rng = np.random.default_rng(0)
    x1, x2 = rng.random((7, 4)), rng.random((7, 4)) ** 2
    for k in (1, 3, 5):
        np.testing.assert_allclose(float(cmd(torch.tensor(x1), torch.tensor(x2), k)), _np_cmd(x1, x2, k), rtol=1e-9)


def test_cmd_hand_example_and_identity():
    # x1 = {0, 1}, x2 = {0.5, 0.5}: means equal, 2nd central moments 0.25 vs 0, 3rd 0 vs 0
    x1, x2 = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.5], [0.5]])
    assert abs(float(cmd(x1, x2, 3)) - 0.25) < 1e-5  # 1e-6 floor under each root
    x = torch.rand(5, 3, requires_grad=True)
    value = cmd(x, x.detach().clone(), 5)
    value.backward()
    assert float(value.detach()) < 1e-5 and torch.isfinite(x.grad).all()


def _np_diff(x1: np.ndarray, x2: np.ndarray) -> float:
    a, b = x1 - x1.mean(0), x2 - x2.mean(0)
    a = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-6)
    b = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-6)
    return float(np.mean((a.T @ b) ** 2))


def test_difference_loss_matches_numpy():
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(6, 3)), rng.normal(size=(6, 5))
    np.testing.assert_allclose(float(difference_loss(torch.tensor(x1), torch.tensor(x2))), _np_diff(x1, x2),
                               rtol=1e-9)


def test_difference_loss_orthogonal_codes_give_zero():
    # A^T B sums over the batch: codes whose (centred) columns are orthogonal sample vectors give 0
    x1 = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    x2 = torch.tensor([[3.0], [3.0], [1.0], [1.0]])  # centred: [1, 1, -1, -1]
    assert abs(float(difference_loss(x1, x2))) < 1e-10
    # identical one-dimensional codes: every unit-norm row contributes 1, (A^T A) = 4, squared = 16
    assert abs(float(difference_loss(x1, x1)) - 16.0) < 1e-3


def test_stacked_bilstm_reads_present_frames_only():
    torch.manual_seed(0)
    enc = StackedBiLSTM(3, 4)
    x = torch.randn(3, 6, 3)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [0] * 6, [1] * 6], dtype=torch.bool)
    got = enc(x, mask)
    assert got.shape == (3, 16)
    for i in range(3):
        frames = x[i][mask[i]].unsqueeze(0)
        if frames.shape[1] == 0:
            torch.testing.assert_close(got[i], torch.zeros(16))
            continue
        out1, (h1, _) = enc.rnn1(frames)
        _, (h2, _) = enc.rnn2(enc.norm(out1))
        expected = torch.cat([h1[0, 0], h1[1, 0], h2[0, 0], h2[1, 0]])
        torch.testing.assert_close(got[i], expected)


def test_loss_adds_weighted_regularisers():
    torch.manual_seed(0)
    dims = {"l": 6, "a": 3, "v": 4}
    method = MISA(hidden_size=8, text_rnn_hidden=4, diff_weight=0.0, sim_weight=0.0, recon_weight=0.0)
    model = method.build(dims, {m: 5 for m in dims}, EMOTION_IEMOCAP).eval()
    mask = {m: torch.ones(4, 5, dtype=torch.bool) for m in dims}
    mask["v"][:2] = False
    feats = {m: torch.randn(4, 5, d) * mask[m].unsqueeze(-1) for m, d in dims.items()}
    labels = torch.tensor([[1.0, 0, 0, 1]] * 4)
    batch = Batch(feats, mask, {m: torch.full((4,), 5) for m in dims}, labels, torch.arange(4))
    out = model(batch)
    base = torch.nn.functional.binary_cross_entropy_with_logits(out["pred"], labels)
    torch.testing.assert_close(method.loss(out, batch, EMOTION_IEMOCAP), base)
    method.set_params(sim_weight=2.0)
    sim = sum(cmd(out["shared"][x], out["shared"][y], 5) for x, y in [("l", "v"), ("l", "a"), ("a", "v")]) / 3
    torch.testing.assert_close(method.loss(out, batch, EMOTION_IEMOCAP), base + 2.0 * sim)
    assert torch.isfinite(out["pred"]).all()
