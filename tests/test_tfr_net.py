"""TFR-Net: the defining parts on hand-sized inputs, against values computed independently."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from msabench.data.base import REGRESSION_MOSI, REGRESSION_SIMS, MultimodalDataset, Split
from msabench.methods.tfr_net import CGate, TFRNet, cmd, largest_divisor, reconstruction_loss
from msabench.plugins import METHODS
from msabench.testing import check_method
from msabench.training import Batch


def numpy_cmd(x1: np.ndarray, x2: np.ndarray, k_max: int = 3) -> float:
    """Zellinger et al.'s CMD with MMSA's sqrt(sum + 1e-12) norms, written out in numpy."""
    x1, x2 = x1.reshape(-1, x1.shape[-1]), x2.reshape(-1, x2.shape[-1])
    m1, m2 = x1.mean(0), x2.mean(0)
    total = np.sqrt(np.sum((m1 - m2) ** 2) + 1e-12)
    for k in range(2, k_max + 1):
        c1, c2 = np.mean((x1 - m1) ** k, 0), np.mean((x2 - m2) ** k, 0)
        total += np.sqrt(np.sum((c1 - c2) ** 2) + 1e-12)
    return float(total)


def test_cmd_against_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 5, 3)), rng.gamma(2.0, size=(4, 5, 3))
    assert float(cmd(torch.tensor(a), torch.tensor(b))) == pytest.approx(numpy_cmd(a, b), rel=1e-9)
    assert float(cmd(torch.tensor(a), torch.tensor(a))) == pytest.approx(3e-6, abs=1e-9)  # three sqrt(1e-12)


def smooth_l1(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return np.where(ax < 1.0, 0.5 * x ** 2, ax - 0.5)


def test_reconstruction_loss_counts_only_missing_positions():
    rng = np.random.default_rng(2)
    pred, target = rng.normal(size=(2, 4, 3)) * 2, rng.normal(size=(2, 4, 3))
    missing = np.array([[1, 0, 0, 1], [0, 0, 1, 0]], dtype=bool)
    count = missing.sum() * 3 + 1e-4
    diff = (pred - target)[missing]  # (3 positions, 3 dims)
    expected_l1 = smooth_l1(diff).sum() / count
    w = missing[..., None].astype(float)
    expected = expected_l1 + 5.0 * numpy_cmd(pred * w, target * w) / count
    got = reconstruction_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(missing), sim_weight=5.0)
    assert float(got) == pytest.approx(expected, rel=1e-9)
    # changing predictions at present (not missing) positions changes nothing
    pred2 = pred.copy()
    pred2[~missing] += 100.0
    again = reconstruction_loss(torch.tensor(pred2), torch.tensor(target), torch.tensor(missing), sim_weight=5.0)
    assert float(again) == pytest.approx(float(got), rel=1e-12)
    assert float(reconstruction_loss(torch.tensor(pred), torch.tensor(target), torch.tensor(missing), 0.0)) == \
        pytest.approx(expected_l1, rel=1e-9)


def test_cgate_max_pool_and_gate_by_hand():
    torch.manual_seed(0)
    gate = CGate(d_in=2, hidden=3, layers=1, dropout=0.0).eval()
    x = torch.randn(2, 5, 2)
    lengths = torch.tensor([5, 3])
    out = gate(x, lengths)
    # sample 2 alone through an unpacked GRU over its 3 valid frames, zeros after them (pad_packed_sequence)
    h, _ = gate.gru(x[1:, :3])
    h = torch.cat([h, torch.zeros(1, 2, 6)], 1)
    g = torch.sigmoid(gate.gate(h.transpose(1, 2)).transpose(1, 2))
    rep = torch.tanh(gate.fc(torch.cat([x[1:], torch.tanh(h) * g], -1))).max(1).values
    assert torch.allclose(out[1:], rep, atol=1e-6)


def test_epoch_schedule_and_weights_in_the_loss():
    method = TFRNet(rec_weight_l=2.0, rec_weight_a=0.0, rec_weight_v=0.0, sim_weight=0.0)
    target = torch.zeros(3, 4, 2)
    method._complete_cache = (None, SimpleNamespace(features={"l": target}))
    rec = torch.ones(1, 4, 2)  # reconstruction of sample 2 (batch of one)
    mask = torch.tensor([[True, False, True, True]])  # frame 1 dropped; length 3, so frame 3 is padding
    batch = Batch({"l": torch.zeros(1, 4, 2)}, {"l": mask}, {"l": torch.tensor([3])}, torch.tensor([0.5]),
                  torch.tensor([2]))
    out = {"pred": torch.tensor([1.5]), "rec": {"l": rec}}
    method._epoch = 0
    assert float(method.loss(out, batch, REGRESSION_MOSI)) == pytest.approx(1.0)  # L1 only in the first epoch
    method._epoch = 1
    # one missing frame, 2 dims, each SmoothL1(1) = 0.5: 1.0 / (2 + 1e-4), times 2
    assert float(method.loss(out, batch, REGRESSION_MOSI)) == pytest.approx(1.0 + 2.0 * 1.0 / (2 + 1e-4))


def test_fixed_training_mask_option():
    g = torch.Generator().manual_seed(0)
    split = Split("train", {m: torch.randn(30, 400, 2, generator=g) for m in "lav"},
                  {m: torch.full((30,), 400) for m in "lav"}, torch.zeros(30), [str(i) for i in range(30)])
    from msabench.methods.tfr_net import _TrainingMasks
    from msabench.plugins import PROTOCOLS
    schedule = PROTOCOLS.get("random-missing")().training_schedule(split, 1, "fp")
    masks = _TrainingMasks(schedule, TFRNet(), rate=0.2, seed=1)
    m0, m5 = masks.mask(0), masks.mask(5)
    for m in "lav":
        assert torch.equal(m0[m], m5[m])  # one mask for the whole fit, as MMSA's loader
        assert abs(1 - m0[m].float().mean().item() - 0.2) < 0.01
    assert largest_divisor(50, 25) == 25 and largest_divisor(8, 25) == 8 and largest_divisor(49, 25) == 7


def test_dataset_defaults_per_dataset():
    def d(name, task):
        return MultimodalDataset(name, task, {}, fingerprint="fp")
    assert TFRNet.dataset_defaults(d("mmsa:mosi.pkl", REGRESSION_MOSI)) == {}
    assert TFRNet.dataset_defaults(d("mmsa:MOSEI.pkl", REGRESSION_MOSI))["rec_weight_v"] == 2e-5
    assert TFRNet.dataset_defaults(d("mmsa:sims.pkl", REGRESSION_SIMS))["rec_weight_l"] == 1.0
    p = TFRNet()
    assert (p.rec_weight_l, p.rec_weight_a, p.rec_weight_v, p.sim_weight, p.lr) == (5.0, 2.0, 20.0, 5.0, 1e-3)


def test_registered_and_check_method():
    assert METHODS.get("tfr-net") is TFRNet
    check_method(TFRNet, {"epochs": 2, "d": 12, "heads": 2, "layers": 1}, tasks=["regression"])


def test_reconstruction_branch_shapes_and_batch_independence_of_predictions():
    from msabench.methods.tfr_net import TFRNetModel
    dims, lens = {"l": 5, "a": 3, "v": 4}, {"l": 6, "a": 9, "v": 7}
    g = torch.Generator().manual_seed(0)
    feats = {m: torch.randn(4, lens[m], dims[m], generator=g) for m in dims}
    lengths = {m: torch.full((4,), lens[m]) for m in dims}
    batch = Batch(feats, {}, lengths, torch.zeros(4), torch.arange(4))
    for over in ("batch", "features"):
        torch.manual_seed(0)
        model = TFRNetModel(dims, lens, TFRNet(d=12, heads=2, layers=1, temporal_over=over), 1)
        out = model.train()(batch)
        assert {m: tuple(r.shape) for m, r in out["rec"].items()} == {m: (4, lens[m], dims[m]) for m in dims}
        model.eval()
        with torch.no_grad():  # predictions never go through the (batch-mixing) reconstruction branch
            whole = model(batch)["pred"]
            first = model(Batch({m: x[:2] for m, x in feats.items()}, {}, {m: x[:2] for m, x in lengths.items()},
                                torch.zeros(2), torch.arange(2)))["pred"]
        assert torch.allclose(whole[:2], first, atol=1e-6) and out["pred"].shape == (4,)
