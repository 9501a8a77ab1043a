"""LNLN: the defining parts on hand-sized inputs, against values computed independently."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msabench.data.base import REGRESSION_MOSI, REGRESSION_SIMS, MultimodalDataset, Split
from msabench.methods.lnln import LNLN, HyperLayer, LNLNModel, effectiveness_labels, grad_reverse, warmup_cosine
from msabench.plugins import METHODS, PROTOCOLS
from msabench.testing import check_method
from msabench.training import Batch


def _split(n: int, t: int, dims=(3, 2, 4), seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(n, t, d, generator=g) for m, d in zip("lav", dims)}
    lengths = {m: torch.full((n,), t) for m in "lav"}
    return Split("train", feats, lengths, torch.randn(n, generator=g), [str(i) for i in range(n)])


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    c = torch.tensor([0.5, 4.0, -1.0])
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * c).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.25, -2.0, 0.5]))


def test_completeness_target_and_loss_against_numpy():
    method = LNLN(alpha=0.9, beta=0.8, gamma=0.1, sigma=1.0)
    rates = np.array([0.0, 0.3, 0.8, 0.5])
    method._rates = torch.tensor(rates, dtype=torch.float32)
    w = np.array([0.9, 0.6, 0.1, 0.7])
    pred, y = np.array([0.5, -1.0, 2.0, 0.0]), np.array([1.0, -1.5, 2.5, 0.2])
    batch = Batch({}, {}, {}, torch.tensor(y[[2, 0]], dtype=torch.float32), torch.tensor([2, 0]))
    out = {"w": torch.tensor(w[[2, 0]]), "pred": torch.tensor(pred[[2, 0]])}
    expected = 0.9 * np.mean((w[[2, 0]] - (1 - rates[[2, 0]])) ** 2) + np.mean((pred[[2, 0]] - y[[2, 0]]) ** 2)
    assert float(method.loss(out, batch, REGRESSION_MOSI)) == pytest.approx(expected, rel=1e-6)


def test_effectiveness_and_reconstruction_terms_against_numpy():
    method = LNLN(alpha=0.0, beta=0.8, gamma=0.1, sigma=0.0, n_tokens=2)
    method._rates = torch.zeros(2)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 2))  # B=2, k=2: 4 dominant rows then 4 complete-language rows
    rec = {m: rng.normal(size=(2, 2, 3)) for m in "lav"}
    target = {m: rng.normal(size=(2, 2, 3)) for m in "lav"}
    out = {"w": torch.zeros(2), "pred": torch.zeros(2), "effectiveness": torch.tensor(logits),
           "rec": {m: torch.tensor(v) for m, v in rec.items()}, "target": {m: torch.tensor(v) for m, v in target.items()}}
    batch = Batch({}, {}, {}, torch.zeros(2), torch.tensor([0, 1]))
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -np.mean(logp[np.arange(8), labels])
    mse = np.mean([(rec[m] - target[m]) ** 2 for m in "lav"])
    assert float(method.loss(out, batch, REGRESSION_MOSI)) == pytest.approx(0.8 * ce + 0.1 * mse, rel=1e-6)
    assert effectiveness_labels(2, 2).tolist() == labels.tolist()


def test_warmup_then_cosine_by_hand():
    # 20 epochs: warm-up over 2 (lr 0, 1/2, 1), then cosine over 18 epochs starting at epoch 3
    assert [warmup_cosine(e, 20) for e in range(4)] == [0.0, 0.5, 1.0, 1.0]
    assert warmup_cosine(4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi / 18)))
    assert warmup_cosine(12, 20) == pytest.approx(0.5)


def test_hyper_layer_without_shift_is_the_normalised_input():
    layer = HyperLayer(4, heads=2, dim_head=2)
    torch.nn.init.zeros_(layer.out.weight)
    torch.nn.init.zeros_(layer.out.bias)
    h = torch.randn(2, 3, 4)
    out = layer(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 6, 4), h)
    mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    assert torch.allclose(out, (h - mean) / torch.sqrt(var + 1e-5), atol=1e-5)


def test_proxy_generator_receives_reversed_discriminator_gradient():
    torch.manual_seed(0)
    model = LNLNModel({"l": 3, "a": 2, "v": 4}, {"l": 5, "a": 5, "v": 5}, d=8, n_tokens=2, heads=2, dim_head=4,
                      n_out=1)
    split = _split(3, 5)
    batch = Batch(split.features, {}, {}, split.labels, torch.arange(3))

    def proxy_grad(sign_of_loss: float) -> torch.Tensor:
        model.zero_grad()
        out = model(batch, split.features)
        (sign_of_loss * out["effectiveness"].sum()).backward()
        return model.h_p.grad.clone()

    g = proxy_grad(1.0)
    # the same graph without the reversal layer: replace it by the identity and compare
    import msabench.methods.lnln as lnln
    original = lnln.grad_reverse
    lnln.grad_reverse = lambda x, alpha=1.0: x
    try:
        g_plain = proxy_grad(1.0)
    finally:
        lnln.grad_reverse = original
    assert g.abs().sum() > 0
    assert torch.allclose(g, -g_plain, atol=1e-6)


def test_schedule_rates_match_the_drawn_masks():
    split = _split(40, 3000)
    protocol = PROTOCOLS.get("random-missing")()
    schedule = protocol.training_schedule(split, seed=3, dataset_fingerprint="fp")
    mask, rates = schedule.mask(2), schedule.rates(2)
    for m in "lav":
        dropped = 1 - mask[m].float().mean(1).numpy()
        assert np.all(dropped[rates[m] == 0] == 0)
        assert np.allclose(dropped, rates[m], atol=0.04)  # 3000 frames: binomial sd <= 0.01
    assert 0.3 < (rates["l"] == 0).mean() < 0.7
    assert schedule.complete().rates(0)["l"].tolist() == [0.0] * 40


def test_authors_masks_draw_each_modalitys_complete_half_on_its_own():
    # the authors' core/dataset.py: per modality, random.sample(range(N), N // 2) samples get rate 0
    n = 801
    split = _split(n, 200)
    protocol = PROTOCOLS.get("random-missing")()
    base = protocol.training_schedule(split, seed=5, dataset_fingerprint="fp")
    assert base.recipe == "frame"
    schedule = LNLN().training_schedule(base)
    assert schedule.recipe == "frame-per-modality"
    assert LNLN(train_masks="protocol").training_schedule(base) is base
    mask, rates = schedule.mask(1), schedule.rates(1)
    complete = {}
    for m in "lav":
        complete[m] = rates[m] == 0
        assert complete[m].sum() == n // 2  # exactly floor(N/2), per modality
        dropped = 1 - mask[m].float().mean(1).numpy()
        assert np.all(dropped[complete[m]] == 0)
        assert np.allclose(dropped, rates[m], atol=0.12)  # 200 frames: binomial sd <= 0.036
    # drawn independently per modality: complete in all three for about 1/8 of the samples (binomial sd 0.012),
    # where the shared half of the protocol's own recipe gives 1/2
    all_three = (complete["l"] & complete["a"] & complete["v"]).mean()
    assert abs(all_three - 0.125) < 0.05
    shared = base.rates(1)
    assert abs(((shared["l"] == 0) & (shared["a"] == 0) & (shared["v"] == 0)).mean() - 0.5) < 0.06
    # a fresh draw every epoch
    assert not np.array_equal(schedule.rates(2)["l"], rates["l"])
    with pytest.raises(ValueError, match="train_masks"):
        LNLN(train_masks="theirs").training_schedule(base)


def test_dataset_defaults_per_dataset():
    def d(task):
        return MultimodalDataset("x", task, {}, fingerprint="fp")
    assert LNLN.dataset_defaults(d(REGRESSION_SIMS)) == {"beta": 0.6}
    assert LNLN.dataset_defaults(d(REGRESSION_MOSI)) == {}
    assert (LNLN().alpha, LNLN().beta, LNLN().gamma, LNLN().sigma, LNLN().lr) == (0.9, 0.8, 0.1, 1.0, 1e-4)


def test_registered_and_check_method():
    assert METHODS.get("lnln") is LNLN
    check_method(LNLN, {"epochs": 2, "d": 16, "heads": 2, "dim_head": 8, "n_tokens": 2})


def test_complete_rows_are_the_unmasked_train_rows_and_skip_other_widths():
    split = _split(5, 4)
    method = LNLN(standardize=False)
    method.device_, method.scaler_ = torch.device("cpu"), None
    method.begin_complete(split)
    assert method.prepare(split) is method.prepare(split)  # the training loop shares the one prepared split
    idx = torch.tensor([3, 1])
    # text as a 7-wide encoder state (another width than the 3-wide features): left out
    batch = Batch({"l": torch.zeros(2, 4, 7), "a": torch.zeros(2, 4, 2), "v": torch.zeros(2, 4, 4)}, {}, {},
                  torch.zeros(2), idx)
    rows = method.complete_rows(batch)
    assert sorted(rows) == ["a", "v"]
    assert torch.equal(rows["a"], split.features["a"][[3, 1]]) and torch.equal(rows["v"], split.features["v"][[3, 1]])
    method.end_complete()
    assert method.prepare(split) is not method.prepare(split)
