"""HRLF: each loss on hand-sized inputs, the discriminator's direction, the frozen teacher, check_method."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from msabench.method import FitContext
from msabench.methods.hrlf import HRLF, HRLFCritics, frf_loss, hal_loss, kl_loss, last_present
from msabench.plugins import PROTOCOLS
from msabench.testing import check_method, tiny_datasets

QUICK = dict(d=8, heads=2, layers=1, epochs=1, batch_size=16, patience=0)


def test_last_present_token():
    h = torch.arange(12.0).reshape(1, 4, 3).repeat(3, 1, 1)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = last_present(h, mask)
    assert out.tolist() == [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0], [0.0, 0.0, 0.0]]


def test_frf_loss_by_hand():
    # decoder: sum of the two halves, so D([q; u]) = q + u (1-d halves)
    decoder = lambda x: x[:, :1] + x[:, 1:]  # noqa: E731
    z = {"a": torch.tensor([[1.0]]), "l": torch.tensor([[2.0]])}
    q = {"a": torch.tensor([[0.5]]), "l": torch.tensor([[1.0]])}
    u = {"a": torch.tensor([[0.0]]), "l": torch.tensor([[2.0]])}
    recon = np.mean([(0.5 + 0.0 - 1.0) ** 2, (1.0 + 2.0 - 2.0) ** 2])
    trans = np.mean([(0.5 + 2.0 - 2.0) ** 2, (1.0 + 0.0 - 1.0) ** 2])  # (a -> l), (l -> a)
    assert frf_loss(z, q, u, decoder).item() == pytest.approx(recon + trans)


def test_kl_loss_matches_numpy():
    zt, zs = np.array([[2.0, -1.0], [0.0, 1.0]]), np.array([[0.5, 0.5], [1.0, -1.0]])
    tau = 2.0

    def sm(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    pt, ps = sm(zt / tau), sm(zs / tau)
    expected = np.mean((pt * np.log(pt / ps)).sum(-1)) * tau ** 2
    assert kl_loss(torch.tensor(zt), torch.tensor(zs), tau).item() == pytest.approx(expected, rel=1e-5)
    assert kl_loss(torch.tensor(zt), torch.tensor(zt), tau).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("student", ["reversal", "non-saturating"])
def test_hal_discriminator_direction_and_student_gradient(student):
    disc = nn.Linear(2, 1)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([[1.0, -2.0]]))
        disc.bias.fill_(0.5)
    e_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e_s = torch.tensor([[0.5, 0.5], [2.0, 1.0]], requires_grad=True)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    w, b = np.array([1.0, -2.0]), 0.5
    st, ss = e_t.numpy() @ w + b, e_s.detach().numpy() @ w + b
    disc_loss = -np.mean(np.log(sig(st))) - np.mean(np.log(1 - sig(ss)))
    expected = disc_loss if student == "reversal" else disc_loss - np.mean(np.log(sig(ss)))
    loss = hal_loss(nn.ModuleList([disc]), [e_t], [e_s], student)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    if student == "reversal":  # the negated gradient of -log(1 - D(e_s)): d/de = sigma(s) w / B, reversed
        assert np.allclose(e_s.grad.numpy(), -(sig(ss)[:, None] * w[None, :]) / 2, atol=1e-6)
    else:  # the gradient of -log D(e_s) with D fixed: -(1 - sigma(s)) w / B, fading as D is fooled
        assert np.allclose(e_s.grad.numpy(), -((1 - sig(ss))[:, None] * w[None, :]) / 2, atol=1e-6)
    # the discriminator gets only the gradient of its own cross-entropy: by hand, for a linear D
    grad_w = (-(1 - sig(st))[:, None] * e_t.numpy()).mean(0) + (sig(ss)[:, None] * e_s.detach().numpy()).mean(0)
    assert np.allclose(disc.weight.grad.numpy()[0], grad_w, atol=1e-6)
    # and descends it: one SGD step lowers it
    with torch.no_grad():
        for p in disc.parameters():
            p -= 0.1 * p.grad
    assert hal_loss(nn.ModuleList([disc]), [e_t], [e_s.detach()], "reversal").item() < disc_loss


def test_switches_turn_distillation_off():
    method = HRLF(hmi=False, hal=False, kl=False)
    critics = HRLFCritics([6, 4, 2], 8, 8)
    out = {"e1": torch.randn(4, 6), "e2": torch.randn(4, 4), "e3": torch.randn(4, 2), "logits": torch.randn(4, 2)}
    other = {k: torch.randn_like(v) for k, v in out.items()}
    assert method.distillation_loss(out, other, critics, torch.tensor([1, 2, 3, 0])).item() == 0.0
    assert HRLF().distillation_loss(out, other, critics, torch.tensor([1, 2, 3, 0])).item() != 0.0


@pytest.mark.parametrize("scale", [1.0, 10.0, 300.0])
def test_normalized_distillation_sees_unit_features_whatever_their_magnitude(scale):
    rng = np.random.default_rng(4)
    widths = [6, 4, 2]
    e_s = [np.abs(rng.normal(size=(5, w))) for w in widths]
    e_t = [np.abs(rng.normal(size=(5, w))) for w in widths]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    torch.manual_seed(0)
    critics = HRLFCritics(widths, 8, 8)
    perm = torch.tensor([1, 2, 3, 4, 0])
    logits = torch.zeros(5, 2)

    def feats(arrays, factor):
        return {**{f"e{i + 1}": torch.tensor(a * factor, dtype=torch.float32) for i, a in enumerate(arrays)},
                "logits": logits}

    legacy = HRLF(kl=False, distill_scale="legacy")
    on_unit = legacy.distillation_loss(feats([unit(a) for a in e_s], 1.0), feats([unit(a) for a in e_t], 1.0),
                                       critics, perm).item()
    normalized = HRLF(kl=False, distill_scale="normalized")
    loss = normalized.distillation_loss(feats(e_s, scale), feats(e_t, scale), critics, perm).item()
    assert loss == pytest.approx(on_unit, rel=1e-5)
    raw = legacy.distillation_loss(feats(e_s, scale), feats(e_t, scale), critics, perm).item()
    assert raw != pytest.approx(on_unit, rel=1e-3)  # the legacy scale sees the magnitude
    with pytest.raises(ValueError, match="distill_scale"):
        HRLF(distill_scale="bogus").build({"l": 4, "a": 4, "v": 4}, {}, tiny_datasets()["regression"].task)
    with pytest.raises(ValueError, match="hal_student"):
        HRLF(hal_student="bogus").build({"l": 4, "a": 4, "v": 4}, {}, tiny_datasets()["regression"].task)


class _Recording(HRLF):
    def train_model(self, model, train, valid, schedule, context, stage="", **kw):
        self.log_ = getattr(self, "log_", []) + [(stage, schedule.recipe)]
        return super().train_model(model, train, valid, schedule, context, stage=stage, **kw)

    def _student_loss_fn(self, teacher, critics, train, seed):
        self.teacher_seen_ = teacher
        self.teacher_before_ = {k: v.clone() for k, v in teacher.state_dict().items()}
        return super()._student_loss_fn(teacher, critics, train, seed)


def test_teacher_frozen_during_student_training():
    dataset = tiny_datasets()["regression"]
    protocol = PROTOCOLS.get("random-missing")()
    context = FitContext(task=dataset.task, seed=3, valid_masks=protocol.masks(dataset.valid, dataset.fingerprint,
                                                                               ["0.5"]))
    schedule = protocol.training_schedule(dataset.train, 3, dataset.fingerprint)
    method = _Recording(**QUICK).fit(dataset.train, dataset.valid, schedule, context)
    teacher = method.teacher_seen_
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, method.teacher_before_[k]), k
    assert method.log_ == [("teacher", "complete"), ("student", "frame+modality")]
    assert method.model_ is not teacher


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="even"):
        HRLF(d=9, heads=3).build({"l": 4, "a": 4, "v": 4}, {}, tiny_datasets()["regression"].task)
    with pytest.raises(ValueError, match="student_recipe"):
        HRLF(student_recipe="bogus").build({"l": 4, "a": 4, "v": 4}, {}, tiny_datasets()["regression"].task)


def test_check_method():
    check_method(HRLF, quick_params=dict(d=8, heads=2, layers=1, epochs=2, batch_size=32))
