"""The shared teacher/student stage and the JSD MI estimator, against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msabench.method import FitContext
from msabench.methods import _distill
from msabench.methods._mi import StatisticsNet, derangement, jsd_mi
from msabench.methods.hrlf import HRLF
from msabench.plugins import PROTOCOLS
from msabench.testing import tiny_datasets


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_jsd_mi_by_hand_and_its_sign():
    # T(x, y) = x * y (one score per row): joint pairs score high, shuffled pairs low
    stat = lambda x, y: (x * y).sum(-1)  # noqa: E731
    x = torch.tensor([[2.0], [-2.0], [2.0], [-1.0]])
    perm = torch.tensor([1, 2, 3, 0])
    joint = [4.0, 4.0, 4.0, 1.0]
    shuffled = [2.0 * -2.0, -2.0 * 2.0, 2.0 * -1.0, -1.0 * 2.0]
    expected = np.mean([-softplus(-t) for t in joint]) - np.mean([softplus(t) for t in shuffled])
    assert jsd_mi(stat, x, x.clone(), perm).item() == pytest.approx(expected, rel=1e-6)
    # the estimate is larger for dependent pairs than for independent ones: a loss maximising MI subtracts it
    y_indep = torch.full((4, 1), 0.5)
    assert jsd_mi(stat, x, x.clone(), perm).item() > jsd_mi(stat, x, y_indep, perm).item()
    # the JSD bound lies in (-inf, log 4 - ... ]: with a constant critic T = c it equals -softplus(-c) - softplus(c)
    const = lambda a, b: torch.full((a.shape[0],), 0.3)  # noqa: E731
    assert abs(jsd_mi(const, x, x, perm).item() - (-softplus(-0.3) - softplus(0.3))) < 1e-6


def test_derangement_and_statistics_net_shapes():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 9):
        perm = derangement(n, gen)
        assert sorted(perm.tolist()) == list(range(n)) and all(perm[i] != i for i in range(n))
    assert StatisticsNet(4, 8)(torch.randn(5, 4), torch.randn(5, 4)).shape == (5,)


def _setup(**params):
    dataset = tiny_datasets()["regression"]
    protocol = PROTOCOLS.get("random-missing")()
    context = FitContext(task=dataset.task, seed=3, valid_masks=protocol.masks(dataset.valid, dataset.fingerprint,
                                                                               ["0.5"]))
    schedule = protocol.training_schedule(dataset.train, 3, dataset.fingerprint)
    method = HRLF(**{**dict(d=8, heads=2, layers=1, epochs=1, batch_size=16, patience=0), **params})
    return dataset, method, context, schedule


def test_teacher_stage_trains_on_complete_data_and_selects_on_complete_validation():
    dataset, method, context, schedule = _setup()
    seen = []

    class Spy(HRLF):
        def train_model(self, model, train, valid, sched, ctx, stage="", **kw):
            seen.append((stage, sched.recipe, sorted(ctx.valid_masks)))
            return super().train_model(model, train, valid, sched, ctx, stage=stage, **kw)

    spy = Spy(**method.get_params())
    spy._begin_fit(dataset.train, context)
    _distill.complete_data_teacher(spy, dataset.train, dataset.valid, schedule, context, ("d",))
    assert seen == [("teacher", "complete", ["complete"])]
    assert spy.teacher_source_ == "trained"


def test_freeze_and_teacher_outputs_match_a_direct_pass():
    dataset, method, context, schedule = _setup()
    method._begin_fit(dataset.train, context)
    teacher = method.build(dataset.train.dims(), dataset.train.seq_lens(), dataset.task)
    teacher.train()
    _distill.freeze(teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    outs = _distill.teacher_outputs(method, teacher, dataset.train, ("e3", "logits"))
    prepared = method.prepare(dataset.train)
    idx = torch.tensor([4, 0, 7])
    batch = prepared.masked_batch(prepared.split.padding_mask(), idx)
    with torch.no_grad():
        direct = teacher(batch)
    assert outs["e3"].shape == (len(dataset.train), 8)
    assert torch.allclose(outs["e3"][idx], direct["e3"], atol=1e-5)
    assert torch.allclose(outs["logits"][idx], direct["logits"], atol=1e-5)


def test_cache_path_follows_teacher_params_and_names_the_method(tmp_path):
    dataset, method, context, schedule = _setup()
    method._begin_fit(dataset.train, context)
    ctx = FitContext(task=dataset.task, seed=3, dataset_fingerprint="abc", cache_dir=str(tmp_path))
    a = _distill.teacher_cache_path(method, ctx, ("d", "lr"))
    assert a.parent == tmp_path / "hrlf-teacher"
    method.lr = 5e-3
    assert _distill.teacher_cache_path(method, ctx, ("d", "lr")) != a
    assert _distill.teacher_cache_path(method, ctx, ("d",)) == _distill.teacher_cache_path(method, ctx, ("d",))
    assert _distill.teacher_cache_path(method, FitContext(task=dataset.task), ("d",)) is None
