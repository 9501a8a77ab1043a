"""DMD: the contract, graph distillation edge weights and losses, decoupling losses, against independent numbers."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from msabench.methods.dmd import (
    DMD,
    EDGES,
    GraphDistillationUnit,
    margin_loss,
    masked_cosine_penalty,
    masked_mse,
    softmax_prior,
)
from msabench.testing import check_method


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_check_method() -> None:
    check_method(DMD, quick_params={"epochs": 2, "d": 8, "heads": 2, "layers": 1, "gd_size_homo": 8,
                                    "gd_size_hetero": 8})


def test_edge_order() -> None:
    assert EDGES == ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))


def test_priors_by_hand() -> None:
    e4 = math.exp(4.0)
    per_target = softmax_prior((0, 0, 1, 0, 1, 0), 0.25, per_target=True).numpy()
    np.testing.assert_allclose(per_target, [0.5, 0.5, e4 / (e4 + 1), 1 / (e4 + 1), e4 / (e4 + 1), 1 / (e4 + 1)],
                               rtol=1e-6)
    joint = softmax_prior((0, 0, 1, 0, 1, 0), 0.25, per_target=False).numpy()
    z = 4 + 2 * e4
    np.testing.assert_allclose(joint, [1 / z, 1 / z, e4 / z, 1 / z, e4 / z, 1 / z], rtol=1e-6)


def _unit(per_target: bool) -> GraphDistillationUnit:
    torch.manual_seed(0)
    return GraphDistillationUnit(n_out=2, repr_dim=3, gd_size=4, prior_logits=(0, 0, 1, 0, 1, 1),
                                 per_target=per_target)


def _numpy_scores(unit: GraphDistillationUnit, logits: np.ndarray, reprs: np.ndarray) -> np.ndarray:
    """scores[b, (j, i)] = W_edge [z_j, z_i] with z_m = [W_logit logit_m, W_repr repr_m]."""
    p = {k: v.detach().numpy().astype(np.float64) for k, v in unit.state_dict().items()}
    z = np.concatenate([logits @ p["w_logit.weight"].T + p["w_logit.bias"],
                        reprs @ p["w_repr.weight"].T + p["w_repr.bias"]], axis=-1)  # (3, B, 8)
    out = np.zeros((logits.shape[1], 6))
    for e, (j, i) in enumerate([(j, i) for j in range(3) for i in range(3) if i != j]):
        out[:, e] = np.concatenate([z[j], z[i]], axis=-1) @ p["w_edge.weight"][0] + p["w_edge.bias"][0]
    return out


@pytest.mark.parametrize("per_target", [True, False])
def test_edge_weights_are_softmax_over_sources(per_target: bool) -> None:
    unit = _unit(per_target)
    rng = np.random.default_rng(0)
    logits, reprs = rng.normal(size=(3, 5, 2)) * 4, rng.normal(size=(3, 5, 3)) * 4
    edges = unit(torch.tensor(logits, dtype=torch.float32), torch.tensor(reprs, dtype=torch.float32)).detach()
    s = _numpy_scores(unit, logits, reprs) / 8  # alpha = 1/8
    if per_target:
        want = np.zeros_like(s)
        for j in range(3):  # each target's two incoming edges sum to one
            block = np.exp(s[:, 2 * j:2 * j + 2])
            want[:, 2 * j:2 * j + 2] = block / block.sum(1, keepdims=True)
        np.testing.assert_allclose(edges.sum(1).numpy(), 3.0, rtol=1e-5)
    else:
        want = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    np.testing.assert_allclose(edges.numpy(), want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(want[0], want[1])  # weights are dynamic: they differ between samples


def test_distillation_losses_match_independent_computation() -> None:
    unit = _unit(True)
    rng = np.random.default_rng(1)
    logits, reprs = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 3))
    edges = rng.dirichlet([1, 1], size=(4, 3)).reshape(4, 6)
    prior = unit.prior.numpy().astype(np.float64)
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    want_logit = want_repr = 0.0
    for e, (j, i) in enumerate(EDGES):
        w = edges[:, e] + prior[e]
        want_logit += np.mean(w * np.abs(logits[j] - logits[i]).sum(1))
        cos = (reprs[j] * reprs[i]).sum(1) / np.linalg.norm(reprs[j], axis=1) / np.linalg.norm(reprs[i], axis=1)
        want_repr += np.maximum(cos, 0).mean() * w.mean()
    want_reg = 10.0 * ((edges.mean(0) - prior) ** 2).sum()
    assert unit.logit_loss(t(logits), t(edges)).item() == pytest.approx(want_logit, rel=1e-5)
    assert unit.repr_loss(t(reprs), t(edges)).item() == pytest.approx(want_repr, rel=1e-5)
    assert unit.regularizer(t(edges)).item() == pytest.approx(want_reg, rel=1e-5)


def test_distillation_teaches_the_target_only() -> None:
    """Gradients of the logit loss come only through each edge's target (the source is detached)."""
    unit = _unit(True)
    prior = unit.prior
    logits = torch.zeros(3, 2, 1)
    logits[1] = 1.0  # only vision differs
    logits.requires_grad_(True)
    edges = torch.zeros(2, 6)
    edges[:, EDGES.index((0, 1))] = 1.0  # l <- v with weight 1 (+ prior)
    unit.logit_loss(logits, edges).backward()
    g = logits.grad[:, 0, 0]
    p = {e: prior[EDGES.index(e)].item() for e in EDGES}
    # d/dl |l - v| = -1 (weight 1 + prior), |l - a| has zero slope; mean over 2 samples gives 1/2 per sample
    assert g[0].item() == pytest.approx(-(1 + p[(0, 1)]) / 2)
    # vision only as a target: |v - l| and |v - a| both slope +1 with their priors
    assert g[1].item() == pytest.approx((p[(1, 0)] + p[(1, 2)]) / 2)
    assert g[2].item() == pytest.approx(-p[(2, 1)] / 2)


def test_cosine_penalty_by_hand() -> None:
    c = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]])
    s = torch.tensor([[[0.0, 3.0], [2.0, 0.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    # present frames: cos 0 (orthogonal) and 1 (parallel); the absent frame is ignored
    assert masked_cosine_penalty(s, c, mask).item() == pytest.approx(0.5)
    assert masked_cosine_penalty(-c, c, torch.ones(1, 3, dtype=torch.bool)).item() == pytest.approx(0.0)
    assert masked_cosine_penalty(s, c, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_masked_mse_by_hand() -> None:
    pred = torch.tensor([[[1.0, 2.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    assert masked_mse(pred, target, torch.tensor([[True, False]])).item() == pytest.approx((1 + 4) / 2)


def test_margin_loss_against_loop() -> None:
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(9, 4))
    ids = np.repeat([0.4, -1.2, 0.4], 3)  # samples 0 and 2 share a label; each sample has three modalities

    def cos(a, b):
        return a @ b / (np.sqrt((a ** 2).sum() + 1e-8) * np.sqrt((b ** 2).sum() + 1e-8))

    per_anchor = []
    for i in range(9):
        pos = [p for p in range(9) if p != i and ids[p] == ids[i]]
        neg = [q for q in range(9) if ids[q] != ids[i]]
        terms = [max(0.0, 0.15 * abs(ids[i] - ids[q]) - cos(feats[i], feats[p]) + cos(feats[i], feats[q]))
                 for p, q in itertools.product(pos, neg)]
        per_anchor.append(np.mean(terms))
    got = margin_loss(torch.tensor(feats, dtype=torch.float32), torch.tensor(ids, dtype=torch.float32))
    assert got.item() == pytest.approx(np.mean(per_anchor), rel=1e-5)


def test_margin_loss_without_negatives_is_zero() -> None:
    feats = torch.randn(6, 3, requires_grad=True)
    loss = margin_loss(feats, torch.ones(6))
    assert loss.item() == 0.0
    loss.backward()
