"""Self-MM: the contract, and the unimodal label generation module against an independent numpy version."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msabench.data.base import EMOTION_IEMOCAP
from msabench.method import UnsupportedTaskError
from msabench.methods.self_mm import ULGM, SelfMM
from msabench.testing import check_method


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_check_method() -> None:
    check_method(SelfMM, quick_params={"epochs": 2, "text_hidden": 8, "text_out": 8, "audio_hidden": 4,
                                       "audio_out": 4, "video_hidden": 4, "video_out": 4, "post_fusion_dim": 8,
                                       "post_text_dim": 4, "post_audio_dim": 4, "post_video_dim": 4})


def test_refuses_emotions() -> None:
    with pytest.raises(UnsupportedTaskError, match="regression"):
        SelfMM.check_supported(EMOTION_IEMOCAP, aligned=True)


class NumpyULGM:
    """An independent transcription of the paper's update rule (Eqs. 5-10) and MMSA's per-batch bookkeeping."""

    def __init__(self, y, dims, bound):
        self.y = {k: np.array(y, dtype=np.float64) for k in dims}
        self.f = {k: np.zeros((len(y), d)) for k, d in dims.items()}
        self.c = {k: [np.zeros(d), np.zeros(d)] for k, d in dims.items()}
        self.bound = bound

    def step(self, feats, idx, n):
        if n > 1:
            def delta(k, x):
                dp = np.sqrt(((x - self.c[k][0]) ** 2).sum(1))
                dn = np.sqrt(((x - self.c[k][1]) ** 2).sum(1))
                return (dn - dp) / (dp + 1e-8)
            dm = delta("m", feats["m"])
            ym = self.y["m"][idx]
            for k in ("l", "a", "v"):
                ds = delta(k, feats[k])
                new = np.clip(ds / (dm + 1e-8) * ym / 2 + (ym + ds - dm) / 2, -self.bound, self.bound)
                self.y[k][idx] = (n - 1) / (n + 1) * self.y[k][idx] + 2 / (n + 1) * new
        for k in feats:
            self.f[k][idx] = feats[k]
        for k in self.f:
            pos, neg = self.y[k] > 0, self.y[k] < 0
            if pos.any():
                self.c[k][0] = self.f[k][pos].mean(0)
            if neg.any():
                self.c[k][1] = self.f[k][neg].mean(0)


def test_ulgm_follows_update_rule() -> None:
    rng = np.random.default_rng(3)
    y = np.array([2.0, -1.5, 0.0, 0.6, -0.4, 2.8])
    dims = {"m": 3, "l": 2, "a": 2, "v": 4}
    ref = NumpyULGM(y, dims, bound=3.0)
    ulgm = ULGM(torch.tensor(y, dtype=torch.float32), dims, bound=3.0)
    schedule = [(1, [0, 1, 2]), (1, [3, 4, 5]), (2, [5, 0, 2]), (2, [1, 3, 4]), (3, [0, 1, 2, 3, 4, 5])]
    for epoch, idx in schedule:
        feats = {k: rng.normal(size=(len(idx), d)) for k, d in dims.items()}
        ref.step(feats, np.array(idx), epoch)
        ulgm.step({k: torch.tensor(v, dtype=torch.float32) for k, v in feats.items()}, torch.tensor(idx), epoch)
        for k in dims:
            np.testing.assert_allclose(ulgm.labels[k].numpy(), ref.y[k], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ulgm.centers[k][0].numpy(), ref.c[k][0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ulgm.centers[k][1].numpy(), ref.c[k][1], rtol=1e-5, atol=1e-6)
    # the fusion labels stay the ground truth; the unimodal ones moved
    np.testing.assert_allclose(ulgm.labels["m"].numpy(), y, rtol=1e-6)
    assert not np.allclose(ulgm.labels["l"].numpy(), y)


def test_ulgm_hand_computed_label() -> None:
    """One sample by hand: centres pos=(1,0), neg=(-1,0) in both spaces, epoch 2."""
    ulgm = ULGM(torch.tensor([1.0, -1.0, 2.0]), {"m": 2, "l": 2, "a": 2, "v": 2}, bound=3.0)
    for k in ulgm.centers:
        ulgm.centers[k] = (torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0]))
    f_m = torch.tensor([[0.0, 1.0]])  # d_p = d_n = sqrt(2): delta_m = 0
    f_l = torch.tensor([[1.0, 0.0]])  # d_p = 0, d_n = 2: delta_s = 2 / 1e-8, alpha huge -> clamp to 3
    f_a = torch.tensor([[-1.0, 0.0]])  # d_p = 2, d_n = 0: delta_s = -1
    ulgm.update_labels({"m": f_m, "l": f_l, "a": f_a, "v": f_m}, torch.tensor([2]), epoch=2)
    # y_m = 2; new_a = 0.5 * (-1 / 1e-8) * 2 + 0.5 * (2 - 1 - 0) -> clamp -3; label = 1/3 * 2 + 2/3 * (-3)
    assert ulgm.labels["l"][2].item() == pytest.approx(1 / 3 * 2 + 2 / 3 * 3)
    assert ulgm.labels["a"][2].item() == pytest.approx(1 / 3 * 2 + 2 / 3 * -3)
    # vision: delta_s = delta_m = 0, alpha = 0: new = 0.5 * 2 = 1; label = 2/3 + 2/3
    assert ulgm.labels["v"][2].item() == pytest.approx(1 / 3 * 2 + 2 / 3 * 1.0)
    w = ulgm.loss_weights(torch.tensor([2]))
    assert w["v"].item() == pytest.approx(np.tanh(abs(4 / 3 - 2)))
