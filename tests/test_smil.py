"""SMIL: contract, k-means priors, prior-based reconstruction, the meta-learning inner/outer step."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from msabench.data.base import REGRESSION_MOSI
from msabench.methods.smil import (
    SMIL,
    SMILModel,
    SMILNet,
    inner_names,
    inner_update,
    kmeans,
    reconstruct_from_priors,
)
from msabench.testing import check_method

DIMS = {"l": 4, "a": 3, "v": 2}


def test_check_method() -> None:
    check_method(SMIL, quick_params={"hidden": 8, "n_priors": 4, "epochs": 2})


def test_kmeans_matches_scikit_learn_from_the_same_start() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.3, (40, 2)) for c in ([0, 0], [3, 0], [0, 3])]).astype(np.float64)
    init = x[[0, 50, 100, 5]]
    ours = kmeans(torch.from_numpy(x), 4, torch.Generator(), iters=300, init=torch.from_numpy(init)).numpy()
    ref = KMeans(4, init=init, n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(x).cluster_centers_
    assert np.allclose(np.sort(ours, axis=0), np.sort(ref, axis=0), atol=1e-6)


def test_reconstruction_is_the_softmax_weighted_prior_sum() -> None:
    logits, centres = torch.randn(5, 3), torch.randn(3, 4)
    w = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(axis=1, keepdims=True)
    assert np.allclose(reconstruct_from_priors(logits, centres).numpy(), w @ centres.numpy(), atol=1e-6)


def _inputs(b: int = 6, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    pooled = {m: torch.randn(b, d, generator=g, dtype=dtype) for m, d in DIMS.items()}
    present = {m: torch.rand(b, generator=g) > 0.3 for m in DIMS}
    present["l"][0] = False
    present["l"][1] = True
    return pooled, present, torch.randn(b, generator=g, dtype=dtype)


def _net(dtype=torch.float32) -> SMILNet:
    torch.manual_seed(0)
    net = SMILNet(DIMS, hidden=8, n_priors=3, dropout=0.0, n_out=1).to(dtype)
    for m in DIMS:
        net.priors(m).copy_(torch.randn(3, DIMS[m], dtype=dtype))
    return net


def test_complete_replaces_only_missing_modalities_by_prior_mixtures() -> None:
    net = _net()
    pooled, present, _ = _inputs()
    filled = net.complete(pooled, present)
    flags = torch.stack([present[m] for m in net.modalities], -1).float()
    others = torch.cat([pooled[o] * present[o].float()[:, None] for o in net.modalities if o != "l"] + [flags], -1)
    logits = net.reconstruct["l"](others).detach().numpy()
    w = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = np.where(present["l"].numpy()[:, None], pooled["l"].numpy(), w @ net.priors("l").numpy())
    assert np.allclose(filled["l"].detach().numpy(), expected, atol=1e-6)
    assert np.array_equal(filled["l"][1].detach().numpy(), pooled["l"][1].numpy())


def test_inner_update_changes_only_the_inner_parameters() -> None:
    net = _net()
    pooled, present, labels = _inputs()
    loss = torch.nn.functional.mse_loss(net(pooled, present)["pred"], labels)
    updated = inner_update(net, loss, lr=0.1)
    inner = set(inner_names(net))
    assert inner and all(n.startswith(("encoders.", "head.")) for n in inner)
    for name, p in net.named_parameters():
        if name in inner:
            assert not torch.equal(updated[name], p), name
        else:
            assert updated[name] is p, name  # reconstruction / regularisation nets untouched


def _meta_loss(net: SMILNet, pooled, present, labels, lr: float, create_graph: bool = True) -> torch.Tensor:
    model = SMILModel(net, REGRESSION_MOSI, inner_lr=lr, kl_weight=0.0)
    half = labels.shape[0] // 2
    out_s = net({m: v[:half] for m, v in pooled.items()}, {m: v[:half] for m, v in present.items()})
    adapted = inner_update(net, model.episode_loss(out_s, labels[:half]), lr, create_graph=create_graph)
    out_q = torch.func.functional_call(net, {**dict(net.named_buffers()), **adapted},
                                       ({m: v[half:] for m, v in pooled.items()},
                                        {m: v[half:] for m, v in present.items()}))
    return torch.nn.functional.mse_loss(out_q["pred"], labels[half:])


def test_outer_gradient_differentiates_through_the_inner_step() -> None:
    """The meta-gradient equals central finite differences of L_query(theta - lr * grad L_support(theta))."""
    net = _net(torch.float64)
    net.stochastic = False
    pooled, present, labels = _inputs(dtype=torch.float64)
    lr = 0.5
    # smooth surrogate: MSE support loss so the second-order term is well defined
    model = SMILModel(net, REGRESSION_MOSI, inner_lr=lr, kl_weight=0.0)
    model.episode_loss = lambda out, y: torch.nn.functional.mse_loss(out["pred"], y)  # type: ignore[method-assign]

    def objective() -> torch.Tensor:
        half = labels.shape[0] // 2
        out_s = net({m: v[:half] for m, v in pooled.items()}, {m: v[:half] for m, v in present.items()})
        adapted = inner_update(net, model.episode_loss(out_s, labels[:half]), lr)
        out_q = torch.func.functional_call(net, {**dict(net.named_buffers()), **adapted},
                                           ({m: v[half:] for m, v in pooled.items()},
                                            {m: v[half:] for m, v in present.items()}))
        return torch.nn.functional.mse_loss(out_q["pred"], labels[half:])

    for name in ("head.3.weight", "encoders.a.0.weight", "reconstruct.l.0.weight"):
        param = dict(net.named_parameters())[name]
        net.zero_grad()
        objective().backward()
        grad = param.grad[0, 0].item()
        eps = 1e-6
        param.data[0, 0] += eps
        up = objective().item()
        param.data[0, 0] -= 2 * eps
        down = objective().item()
        param.data[0, 0] += eps
        assert grad == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9), name
    # the first-order shortcut (no graph through the inner gradient) gives a different theta gradient
    theta = dict(net.named_parameters())["head.0.weight"]
    net.zero_grad()
    objective().backward()
    second = theta.grad.clone()
    net.zero_grad()
    _meta_loss(net, pooled, present, labels, lr, create_graph=False).backward()
    assert not torch.allclose(second, theta.grad)


def test_training_forward_runs_one_episode_on_the_query_half() -> None:
    from msabench.training import Batch

    net = _net()
    model = SMILModel(net, REGRESSION_MOSI, inner_lr=0.1, kl_weight=1e-3).train()
    b, t = 6, 4
    feats = {m: torch.randn(b, t, d) for m, d in DIMS.items()}
    mask = {m: torch.ones(b, t, dtype=torch.bool) for m in DIMS}
    batch = Batch(feats, mask, {m: torch.full((b,), t) for m in DIMS}, torch.randn(b), torch.arange(b))
    out = model(batch)
    assert out["pred"].shape == (3,) and torch.equal(out["labels"], batch.labels[3:])
    loss = SMIL(kl_weight=1e-3).loss(out, batch, REGRESSION_MOSI)
    loss.backward()
    assert net.reconstruct["l"][0].weight.grad is not None
    with torch.no_grad():
        assert model.eval()(batch)["pred"].shape == (6,)
