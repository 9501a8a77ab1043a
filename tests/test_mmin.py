"""MMIN: the autoencoder cascade and losses by hand, the six training patterns, the pretrained stage, check_method."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msabench.method import FitContext
from msabench.methods.mmin import MMIN, LSTMMaxPool, ResidualAE, imagination_losses
from msabench.plugins import PROTOCOLS
from msabench.protocol import TRAINING_RECIPES
from msabench.testing import check_method, tiny_datasets

QUICK = dict(embd_size=8, ae_layers="16,8", n_blocks=2, cls_layers="8", epochs=1, batch_size=16, patience=0)


def test_residual_ae_cascade_by_hand():
    torch.manual_seed(0)
    ae = ResidualAE(6, [5, 4], n_blocks=2)
    x = torch.randn(3, 6)
    # block 1 reads x; block 2 reads x + block 1's output; the transition reads x + out1 + out2
    out1 = ae.decoders[0](ae.encoders[0](x))
    l2 = ae.encoders[1](x + out1)
    out2 = ae.decoders[1](l2)
    recon, latents = ae(x)
    assert torch.allclose(recon, ae.transition(x + out1 + out2))
    assert torch.allclose(latents, torch.cat([ae.encoders[0](x), l2], dim=-1))
    assert [m.out_features for m in ae.encoders[0] if hasattr(m, "out_features")] == [5, 4]
    assert [m.out_features for m in ae.decoders[0] if hasattr(m, "out_features")] == [5, 6]


def test_imagination_losses_by_hand():
    out = {"embd": torch.tensor([[1.0, 2.0]]), "recon": torch.tensor([[0.0, 0.0]]),
           "cycle": torch.tensor([[1.0, 4.0]])}
    forward, backward = imagination_losses(out, torch.tensor([[3.0, 1.0]]))
    assert forward.item() == pytest.approx((9 + 1) / 2)
    assert backward.item() == pytest.approx((0 + 4) / 2)


def test_modality_proper_recipe_draws_the_six_missing_patterns():
    split = tiny_datasets()["regression"].train
    keep = TRAINING_RECIPES["modality-proper"](split, lambda k: np.random.default_rng(abs(hash(k)) % 2 ** 32))
    codes = {tuple(bool(keep[m][i].any()) for m in sorted(keep)) for i in range(len(split))}
    assert (True, True, True) not in codes and (False, False, False) not in codes
    assert len(codes) == 6


def test_lstm_maxpool_ignores_padding():
    torch.manual_seed(0)
    enc = LSTMMaxPool(3, 4)
    x = torch.randn(1, 5, 3)
    out = enc(x, torch.tensor([3]))
    prefix, _ = enc.rnn(x[:, :3])
    assert torch.allclose(out, prefix.amax(dim=1))


class _Recording(MMIN):
    def train_model(self, model, train, valid, schedule, context, stage="", **kw):
        self.log_ = getattr(self, "log_", []) + [(stage, schedule.recipe, model)]
        if stage == "student":
            self.teacher_before_ = {k: v.clone() for k, v in self.log_[0][2].state_dict().items()}
            self.student_init_ = {k: v.clone() for k, v in model.encoders.state_dict().items()}
        return super().train_model(model, train, valid, schedule, context, stage=stage, **kw)


def test_pretrained_stage_frozen_and_initialises_the_student_encoders():
    dataset = tiny_datasets()["regression"]
    protocol = PROTOCOLS.get("random-missing")()
    context = FitContext(task=dataset.task, seed=3, valid_masks=protocol.masks(dataset.valid, dataset.fingerprint,
                                                                               ["0.5"]))
    schedule = protocol.training_schedule(dataset.train, 3, dataset.fingerprint)
    method = _Recording(**QUICK).fit(dataset.train, dataset.valid, schedule, context)
    assert [(s, r) for s, r, _ in method.log_] == [("teacher", "complete"), ("student", "modality-proper")]
    teacher = method.log_[0][2]
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, method.teacher_before_[k]), k
    for k, v in teacher.encoders.state_dict().items():
        assert torch.equal(v, method.student_init_[k]), k
    assert method.model_ is method.log_[1][2]


def test_bad_widths_are_refused():
    with pytest.raises(ValueError, match="ae_layers"):
        MMIN(ae_layers="256,x").build({"l": 4, "a": 4, "v": 4}, {}, tiny_datasets()["regression"].task)


def test_check_method():
    check_method(MMIN, quick_params=dict(QUICK, epochs=2, batch_size=32))
