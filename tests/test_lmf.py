"""LMF: the low-rank fusion equals the full tensor fusion with the rank-r weight tensor its factors define."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msabench.data.base import EMOTION_IEMOCAP, REGRESSION_MOSI
from msabench.methods.lmf import LMF, LowRankFusion
from msabench.testing import check_method

QUICK = dict(text_hidden=8, audio_hidden=4, video_hidden=5, text_out=3, rank=2, batch_size=16, epochs=2)


def test_check_method():
    check_method(LMF, quick_params=QUICK)


@pytest.mark.parametrize("rank,n_out", [(1, 1), (3, 2)])
def test_low_rank_fusion_equals_full_tensor_contraction(rank, n_out):
    rng = np.random.default_rng(1)
    sizes = [2, 3, 4]  # audio, video, text
    fusion = LowRankFusion(sizes, rank, n_out).double()
    fa, fv, fl = (rng.normal(size=(rank, d + 1, n_out)) for d in sizes)
    lam, bias = rng.normal(size=rank), rng.normal(size=n_out)
    with torch.no_grad():
        for param, value in zip(fusion.factors, (fa, fv, fl)):
            param.copy_(torch.tensor(value))
        fusion.fusion_weights.copy_(torch.tensor(lam[None, :]))
        fusion.fusion_bias.copy_(torch.tensor(bias[None, :]))
    # the full weight tensor W = sum_r lam_r w_a^r (x) w_v^r (x) w_l^r, one per output unit
    W = np.zeros((3, 4, 5, n_out))
    for r in range(rank):
        for o in range(n_out):
            W[..., o] += lam[r] * np.multiply.outer(np.multiply.outer(fa[r, :, o], fv[r, :, o]), fl[r, :, o])
    h = [rng.normal(size=(6, d)) for d in sizes]
    z = [np.concatenate([np.ones((6, 1)), x], axis=1) for x in h]
    outer = np.einsum("bi,bj,bk->bijk", *z)
    expected = np.einsum("bijk,ijko->bo", outer, W) + bias
    got = fusion([torch.tensor(x) for x in h]).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_factor_shapes_and_parameter_count():
    model = LMF().build({"l": 300, "a": 5, "v": 20}, {"l": 50, "a": 50, "v": 50}, REGRESSION_MOSI)
    shapes = [tuple(f.shape) for f in model.fusion.factors]
    # MMSA MOSI: rank 3; audio 16, video 128, text_out = 128 // 2 = 64; one output
    assert shapes == [(3, 17, 1), (3, 129, 1), (3, 65, 1)]
    assert sum(f.numel() for f in model.fusion.factors) == 3 * (17 + 129 + 65)


def test_factor_learning_rate_group():
    method = LMF(lr=1e-3, factor_lr=5e-4, weight_decay=0.01)
    method.model_ = method.build({"l": 6, "a": 3, "v": 4}, {"l": 5, "a": 5, "v": 5}, EMOTION_IEMOCAP)
    opt = method.make_optimizer(list(method.model_.parameters()))
    by_lr = {g["lr"]: sum(p.numel() for p in g["params"]) for g in opt.param_groups}
    n_factor = sum(f.numel() for f in method.model_.fusion.factors)
    n_all = sum(p.numel() for p in method.model_.parameters())
    assert by_lr == {5e-4: n_factor, 1e-3: n_all - n_factor}
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)


def test_all_absent_modalities_give_finite_output():
    torch.manual_seed(0)
    from msabench.training import Batch

    model = LMF(**QUICK).build({"l": 6, "a": 3, "v": 4}, {"l": 5, "a": 5, "v": 5}, EMOTION_IEMOCAP).eval()
    mask = {m: torch.zeros(3, 5, dtype=torch.bool) for m in ("l", "a", "v")}
    feats = {m: torch.zeros(3, 5, d) for m, d in {"l": 6, "a": 3, "v": 4}.items()}
    lengths = {m: torch.full((3,), 5) for m in mask}
    with torch.no_grad():
        out = model(Batch(feats, mask, lengths, torch.zeros(3, 4), torch.arange(3)))
    assert out.shape == (3, 4) and torch.isfinite(out).all()
