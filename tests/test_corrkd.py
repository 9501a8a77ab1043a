"""CorrKD: the distillation losses against hand / numpy computations, the teacher-student fit, check_method."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from msabench.data.base import EMOTION_IEMOCAP, REGRESSION_MOSI
from msabench.method import FitContext
from msabench.methods.corrkd import (
    CorrKD,
    CorrKDNet,
    RCDCritics,
    categories,
    cpd_loss,
    decouple,
    decoupled_kl,
    derangement,
    jsd_mi,
    scd_loss,
)
from msabench.plugins import PROTOCOLS
from msabench.training import Batch
from msabench.testing import check_method, tiny_datasets

QUICK = dict(d=8, heads=2, layers=1, epochs=1, batch_size=16, patience=0)


# independent numpy versions -------------------------------------------------------------------------------------
def np_scd(hs: np.ndarray, ht: np.ndarray, eta: float) -> float:
    b = len(hs)
    pos = np.mean([np.sum((hs[i] - ht[i]) ** 2) for i in range(b)])
    neg = [max(0.0, eta - np.linalg.norm(hs[i] - ht[j])) ** 2 for i in range(b) for j in range(b) if i != j]
    return float(pos + (np.mean(neg) if neg else 0.0))


def np_cpd(hs: np.ndarray, ht: np.ndarray, cats: np.ndarray) -> float:
    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    ks = sorted(set(cats.tolist()))
    if len(ks) < 2:
        return 0.0
    diffs = []
    for i in range(len(hs)):
        for k in ks:
            ct, cs = ht[cats == k].mean(axis=0), hs[cats == k].mean(axis=0)
            diffs.append((cos(ht[i], ct) - cos(hs[i], cs)) ** 2)
    return float(np.mean(diffs))


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_decoupled_kl(zt: np.ndarray, zs: np.ndarray, y: np.ndarray, tau: float) -> float:
    total = 0.0
    for i in range(len(zt)):
        pt, ps = np_softmax(zt[i] / tau), np_softmax(zs[i] / tau)
        bt = np.array([pt[y[i]], 1 - pt[y[i]]])
        bs = np.array([ps[y[i]], 1 - ps[y[i]]])
        others = [k for k in range(len(pt)) if k != y[i]]
        ht, hs = pt[others] / pt[others].sum(), ps[others] / ps[others].sum()
        total += np.sum(bt * np.log(bt / bs)) + np.sum(ht * np.log(ht / hs))
    return float(total / len(zt) * tau ** 2)


# SCD ------------------------------------------------------------------------------------------------------------
def test_scd_known_distances():
    h_s = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    h_t = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    # positives: 0 and ||(3, -4)||^2 = 25 -> 12.5; negatives: ||s0 - t1|| = 4, ||s1 - t0|| = 3
    assert scd_loss(h_s, h_t, eta=2.0).item() == pytest.approx(12.5)
    assert scd_loss(h_s, h_t, eta=5.0).item() == pytest.approx(12.5 + (1.0 + 4.0) / 2)


def test_scd_matches_numpy_and_detaches_teacher():
    rng = np.random.default_rng(0)
    hs, ht = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    h_s = torch.tensor(hs, requires_grad=True)
    h_t = torch.tensor(ht, requires_grad=True)
    loss = scd_loss(h_s, h_t, eta=3.0)
    assert loss.item() == pytest.approx(np_scd(hs, ht, 3.0), rel=1e-6)
    loss.backward()
    assert h_t.grad is None and h_s.grad is not None


# CPD ------------------------------------------------------------------------------------------------------------
def test_cpd_zero_when_equal_positive_when_different_and_matches_numpy():
    rng = np.random.default_rng(1)
    h = torch.tensor(rng.normal(size=(8, 4)))
    cats = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    assert cpd_loss(h, h.clone(), cats).item() == pytest.approx(0.0, abs=1e-12)
    other = torch.tensor(rng.normal(size=(8, 4)))
    value = cpd_loss(h, other, cats).item()
    assert value > 0
    assert value == pytest.approx(np_cpd(h.numpy(), other.numpy(), cats.numpy()), rel=1e-6)


def test_cpd_skips_absent_categories():
    rng = np.random.default_rng(2)
    hs, ht = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    cats = np.array([0, 3, 3, 0, 3])  # categories 1 and 2 absent
    value = cpd_loss(torch.tensor(hs), torch.tensor(ht), torch.tensor(cats)).item()
    assert value == pytest.approx(np_cpd(hs, ht, cats), rel=1e-6)


def test_cpd_single_category_is_zero_without_nan():
    h_s = torch.randn(4, 3, requires_grad=True)
    loss = cpd_loss(h_s, torch.randn(4, 3), torch.tensor([1, 1, 1, 1]))
    assert loss.item() == 0.0
    total = loss + h_s.sum()
    total.backward()
    assert torch.isfinite(h_s.grad).all()


def test_cpd_zero_vectors_give_no_nan():
    h_s = torch.zeros(4, 3, requires_grad=True)
    loss = cpd_loss(h_s, torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(h_s.grad).all()


# RCD ------------------------------------------------------------------------------------------------------------
def test_decouple_parts():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    b, p_hat = decouple(p, torch.tensor([0, 2]))
    assert torch.allclose(b, torch.tensor([[0.5, 0.5], [0.3, 0.7]]))
    assert torch.allclose(p_hat, torch.tensor([[0.6, 0.4], [0.1 / 0.7, 0.6 / 0.7]]))


def test_derangement_has_no_fixed_points():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 7, 32):
        perm = derangement(n, gen)
        assert sorted(perm.tolist()) == list(range(n))
        assert (perm != torch.arange(n)).all()


def test_jsd_mi_matches_formula_and_prefers_aligned_pairs():
    def stat(x, y):  # a fixed critic: high for close pairs
        return 4.0 - 20.0 * ((x - y) ** 2).sum(dim=-1)

    rng = np.random.default_rng(3)
    p = np_softmax(rng.normal(size=(16, 4)) * 2)
    x = torch.tensor(p)
    perm = derangement(16, torch.Generator().manual_seed(1))
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    t_joint = 4.0 - 20.0 * ((p - p) ** 2).sum(axis=1)
    t_marg = 4.0 - 20.0 * ((p - p[perm.numpy()]) ** 2).sum(axis=1)
    expected = np.mean(-softplus(-t_joint)) - np.mean(softplus(t_marg))
    aligned = jsd_mi(stat, x, x.clone(), perm).item()
    assert aligned == pytest.approx(expected, rel=1e-6)
    unrelated = torch.tensor(np_softmax(rng.normal(size=(16, 4)) * 2))
    assert aligned > jsd_mi(stat, x, unrelated, perm).item()


def test_rcd_two_classes_has_no_non_target_term():
    critics = RCDCritics(2, 8)
    assert critics.non_target is None
    p = torch.softmax(torch.randn(6, 2), dim=-1)
    mi = critics.mi(p, p, torch.tensor([0, 1, 0, 1, 1, 0]), derangement(6, torch.Generator().manual_seed(0)))
    assert torch.isfinite(mi)


def test_decoupled_kl_matches_numpy():
    rng = np.random.default_rng(4)
    zt, zs = rng.normal(size=(5, 4)) * 2, rng.normal(size=(5, 4)) * 2
    y = np.array([0, 3, 1, 1, 2])
    value = decoupled_kl(torch.tensor(zt), torch.tensor(zs), torch.tensor(y), tau=2.0).item()
    assert value == pytest.approx(np_decoupled_kl(zt, zs, y, 2.0), rel=1e-5)
    assert decoupled_kl(torch.tensor(zt), torch.tensor(zt), torch.tensor(y), 2.0).item() == pytest.approx(0, abs=1e-9)


def test_decoupled_kl_two_classes_is_target_part_only():
    zt, zs = np.array([[1.0, -1.0]]), np.array([[0.0, 0.5]])
    pt, ps = np_softmax(zt[0]), np_softmax(zs[0])
    expected = np.sum(pt * np.log(pt / ps))  # with y = 0, b = p itself
    value = decoupled_kl(torch.tensor(zt), torch.tensor(zs), torch.tensor([0]), tau=1.0).item()
    assert value == pytest.approx(expected, rel=1e-6)


# categories -----------------------------------------------------------------------------------------------------
def test_categories():
    y = torch.tensor([-2.0, -0.2, 0.0, 0.4, 3.0])
    assert categories(y, REGRESSION_MOSI, 2).tolist() == [0, 0, 1, 1, 1]
    assert categories(y, REGRESSION_MOSI, 3).tolist() == [0, 0, 1, 2, 2]
    emo = torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    assert categories(emo, EMOTION_IEMOCAP).tolist() == [1, 3, 0]


def test_ablation_switches_turn_distillation_off():
    method = CorrKD(scd=False, cpd=False, rcd="off")
    out = {"h": torch.randn(4, 3), "logits": torch.randn(4, 2)}
    other = {"h": torch.randn(4, 3), "logits": torch.randn(4, 2)}
    assert method.distillation_loss(out, other, torch.tensor([0, 1, 0, 1]), None, None).item() == 0.0


@pytest.mark.parametrize("scale", [1.0, 10.0, 300.0])
def test_normalized_distillation_ignores_the_magnitude_of_h_and_matches_numpy(scale):
    rng = np.random.default_rng(2)
    hs, ht = np.abs(rng.normal(size=(6, 5))), np.abs(rng.normal(size=(6, 5)))
    cats = np.array([0, 1, 0, 1, 1, 0])
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = np_scd(unit(hs), unit(ht), 0.5) + np_cpd(unit(hs), unit(ht), cats)
    method = CorrKD(eta=0.5, rcd="off")  # distill_scale="normalized" is the default
    out = {"h": torch.tensor(hs * scale), "logits": torch.zeros(6, 2)}
    teacher = {"h": torch.tensor(ht * scale), "logits": torch.zeros(6, 2)}
    loss = method.distillation_loss(out, teacher, torch.tensor(cats), None, None).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert loss <= 4.0 + 1.0  # bounded: squared distances of unit vectors <= 4, CPD <= 4 (cosines in [-1, 1])
    legacy = CorrKD(eta=0.5, rcd="off", distill_scale="legacy")
    raw = legacy.distillation_loss(out, teacher, torch.tensor(cats), None, None).item()
    assert raw == pytest.approx(np_scd(hs * scale, ht * scale, 0.5) + np_cpd(hs, ht, cats), rel=1e-5)
    with pytest.raises(ValueError, match="distill_scale"):
        CorrKD(distill_scale="bogus").build({"l": 4, "a": 4, "v": 4}, {}, REGRESSION_MOSI)


# the teacher-student fit ----------------------------------------------------------------------------------------
def _setup(kind: str, cls: type = CorrKD, **params):
    dataset = tiny_datasets()[kind]
    protocol = PROTOCOLS.get("random-missing")()
    context = FitContext(task=dataset.task, seed=3, valid_masks=protocol.masks(dataset.valid, dataset.fingerprint,
                                                                               ["0.5"]))
    schedule = protocol.training_schedule(dataset.train, 3, dataset.fingerprint)
    return dataset, cls(**{**QUICK, **params}), context, schedule


@pytest.mark.parametrize("kind", ["regression", "multilabel"])
def test_gradients_reach_every_student_parameter_and_critic(kind):
    dataset, method, context, schedule = _setup(kind)
    method._begin_fit(dataset.train, context)
    dims, lens = dataset.train.dims(), dataset.train.seq_lens()
    teacher = method.build(dims, lens, dataset.task).eval().requires_grad_(False)
    student = method.build(dims, lens, dataset.task)
    n_cls = 2 if kind == "regression" else 4
    critics = RCDCritics(n_cls, 8)
    loss_fn = method._student_loss_fn(teacher, critics, dataset.train, seed=0)
    prepared = method.prepare(dataset.train)
    mask = schedule.mask(0)
    batch = prepared.masked_batch(mask, torch.arange(16))
    loss = loss_fn(student(batch), batch, dataset.task)
    loss.backward()
    for name, p in [*student.named_parameters(), *(("critic." + n, p) for n, p in critics.named_parameters())]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    if kind == "multilabel":
        assert critics.non_target is not None


class _Recording(CorrKD):
    """Records the stages, their schedules, and the teacher handed to the student's loss."""

    def train_model(self, model, train, valid, schedule, context, stage="", **kw):
        self.log_ = getattr(self, "log_", []) + [(stage, schedule.recipe, model)]
        return super().train_model(model, train, valid, schedule, context, stage=stage, **kw)

    def _student_loss_fn(self, teacher, critics, train, seed):
        self.teacher_seen_ = teacher
        self.teacher_before_ = {k: v.clone() for k, v in teacher.state_dict().items()}
        return super()._student_loss_fn(teacher, critics, train, seed)


def test_teacher_frozen_student_recipe_and_no_teacher_after_fit():
    dataset, method, context, schedule = _setup("regression", _Recording, student_recipe="frame+modality")
    method.fit(dataset.train, dataset.valid, schedule, context)
    teacher = method.teacher_seen_
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, method.teacher_before_[k]), k
    stages = [(s, r) for s, r, _ in method.log_]
    assert stages == [("teacher", "complete"), ("student", "frame+modality")]
    student = method.log_[1][2]
    assert method.model_ is student and method.model_ is not teacher
    # the fitted object holds the student only
    del method.teacher_seen_, method.teacher_before_, method.log_
    modules = [v for v in vars(method).values() if isinstance(v, nn.Module)]
    assert modules == [method.model_]
    state = method.inference_state()["model"]
    fresh = CorrKDNet(dataset.train.dims(), 8, 2, 1, 0.1, 2, True).state_dict()
    assert set(state) == set(fresh)
    assert sum(v.numel() for v in state.values()) == sum(v.numel() for v in fresh.values())
    assert all(not any(v.data_ptr() == t.data_ptr() for t in teacher.state_dict().values()) for v in state.values())


def test_protocol_recipe_by_default_and_teacher_only_mode():
    dataset, method, context, schedule = _setup("regression", _Recording, predict_with="teacher")
    method.fit(dataset.train, dataset.valid, schedule, context)
    assert [(s, r) for s, r, _ in method.log_] == [("teacher", "complete")]
    assert {row["stage"] for row in method.training_curve()} == {"teacher"}
    assert schedule.recipe != "complete"
    dataset, method, context, schedule = _setup("regression", _Recording)
    method.fit(dataset.train, dataset.valid, schedule, context)
    assert [r for _, r, _ in method.log_] == ["complete", schedule.recipe]


def test_bad_settings_are_refused():
    dataset, method, context, schedule = _setup("regression", d=8, heads=3)
    with pytest.raises(ValueError, match="divide"):
        method.fit(dataset.train, dataset.valid, schedule, context)
    with pytest.raises(ValueError, match="rcd"):
        CorrKD(rcd="bogus").build({"l": 4, "a": 4, "v": 4}, {}, REGRESSION_MOSI)


def test_dataset_defaults():
    class D:
        def __init__(self, name, task):
            self.name, self.task = name, task

    assert CorrKD.dataset_defaults(D("synthetic-mosi", REGRESSION_MOSI))["batch_size"] == 128
    assert CorrKD.dataset_defaults(D("mmsa:MOSEI", REGRESSION_MOSI)) == {"lr": 2e-3, "batch_size": 16,
                                                                         "epochs": 20, "heads": 8}
    assert CorrKD.dataset_defaults(D("x", EMOTION_IEMOCAP))["lr"] == 4e-3


def test_check_method():
    check_method(CorrKD, quick_params=dict(d=8, heads=2, layers=1, epochs=2, batch_size=32))


def test_teacher_sees_the_same_samples_complete():
    dataset, method, context, schedule = _setup("regression")
    method._begin_fit(dataset.train, context)
    dims, lens = dataset.train.dims(), dataset.train.seq_lens()
    teacher = method.build(dims, lens, dataset.task).eval().requires_grad_(False)
    train = dataset.train
    mean_std = {m: (x[train.padding_mask()[m]].mean(0), x[train.padding_mask()[m]].std(0, unbiased=False))
                for m, x in train.features.items()}
    idx = torch.tensor([5, 2, 9])
    pad = {m: v[idx] for m, v in train.padding_mask().items()}
    feats = {m: (train.features[m][idx] - mean_std[m][0]) / mean_std[m][1] * pad[m].unsqueeze(-1).float()
             for m in train.features}
    complete = Batch(feats, pad, {m: v[idx] for m, v in train.lengths.items()}, train.labels[idx], idx)
    with torch.no_grad():
        direct = teacher(complete)
    h, z = method._teacher_outputs(teacher, train)
    assert torch.allclose(h[idx], direct["h"], atol=1e-5)
    assert torch.allclose(z[idx], direct["logits"], atol=1e-5)


# the teacher cache shared by the runs of a grid ------------------------------------------------------------------
def _fit_cached(cache_dir, protocol: str = "random-missing", **params) -> CorrKD:
    dataset = tiny_datasets()["regression"]
    proto = PROTOCOLS.get(protocol)()
    conditions = proto.validation_conditions()
    context = FitContext(task=dataset.task, seed=3, valid_masks=proto.masks(dataset.valid, dataset.fingerprint,
                                                                            conditions),
                         dataset_fingerprint=dataset.fingerprint, cache_dir=None if cache_dir is None else str(cache_dir))
    schedule = proto.training_schedule(dataset.train, 3, dataset.fingerprint)
    method = CorrKD(**{**QUICK, "epochs": 2, **params}).fit(dataset.train, dataset.valid, schedule, context)
    mask = proto.mask(dataset.test, proto.conditions()[3], dataset.fingerprint)
    method.test_prediction_ = method.predict(dataset.test, mask)
    return method


def test_cached_teacher_gives_exactly_the_numbers_of_a_fresh_one(tmp_path):
    first = _fit_cached(tmp_path, scd=True)
    assert first.teacher_source_ == "trained"
    assert len(list((tmp_path / "corrkd-teacher").glob("*.pt"))) == 1
    # another distillation variant under another protocol reuses the teacher ...
    reused = _fit_cached(tmp_path, protocol="modality-missing", scd=False, rcd="kl")
    assert reused.teacher_source_.startswith("cache:")
    # ... and predicts exactly what the same variant predicts with a teacher trained from scratch
    fresh = _fit_cached(None, protocol="modality-missing", scd=False, rcd="kl")
    assert fresh.teacher_source_ == "trained"
    np.testing.assert_array_equal(reused.test_prediction_, fresh.test_prediction_)
    assert reused.training_curve() == fresh.training_curve()


def test_unreadable_or_unwritable_cache_means_training_not_failing(tmp_path, caplog):
    first = _fit_cached(tmp_path)
    (cached,) = (tmp_path / "corrkd-teacher").glob("*.pt")
    cached.write_bytes(b"not a checkpoint")
    again = _fit_cached(tmp_path)
    assert again.teacher_source_ == "trained" and "unreadable cached teacher" in caplog.text
    np.testing.assert_array_equal(again.test_prediction_, first.test_prediction_)
    blocker = tmp_path / "file"
    blocker.write_text("")  # the cache directory cannot be created below a file
    assert _fit_cached(blocker).teacher_source_ == "trained" and "cannot cache the teacher" in caplog.text


def test_teacher_cache_key_follows_the_teacher_settings(tmp_path):
    _fit_cached(tmp_path)
    assert _fit_cached(tmp_path, lr=2e-3).teacher_source_ == "trained"  # a teacher hyperparameter: new teacher
    assert _fit_cached(tmp_path, eta=2.0).teacher_source_.startswith("cache:")  # a distillation one: same teacher
    assert len(list((tmp_path / "corrkd-teacher").glob("*.pt"))) == 2
    # the teacher-only variant predicts with the very teacher the students distil from
    teacher_only = _fit_cached(tmp_path, predict_with="teacher")
    assert teacher_only.teacher_source_.startswith("cache:")
    saved = torch.load(tmp_path / "corrkd-teacher" / f"{teacher_only.teacher_source_[6:]}.pt", weights_only=True)
    for k, v in teacher_only.model_.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
    assert len(list((tmp_path / "corrkd-teacher").glob("*.pt"))) == 2


def test_run_grid_shares_teachers_through_out_cache_unless_no_cache(tmp_path):
    import json

    from msabench import cli

    base = ["run", "--method", "corrkd", "--dataset", "synthetic-small", "--protocol", "modality-missing",
            "--seeds", "5", "--epochs", "1", "--set", "d=8", "--set", "heads=2", "--set", "layers=1", "--quiet"]

    def fitted(out):
        (run,) = (out / "runs").glob("*/run.json")
        return json.loads(run.read_text())["fitted"]["teacher_source_"]

    assert cli.main(base + ["--out", str(tmp_path / "a")]) == 0
    assert fitted(tmp_path / "a") == "trained"
    assert len(list((tmp_path / "a" / "cache" / "corrkd-teacher").glob("*.pt"))) == 1
    assert cli.main(base + ["--out", str(tmp_path / "a"), "--tag", "no-scd", "--set", "scd=false"]) == 0
    sources = sorted(json.loads(p.read_text())["fitted"]["teacher_source_"]
                     for p in (tmp_path / "a" / "runs").glob("*/run.json"))
    assert sources[0].startswith("cache:") and sources[1] == "trained"
    assert cli.main(base + ["--out", str(tmp_path / "b"), "--no-cache"]) == 0
    assert fitted(tmp_path / "b") == "trained" and not (tmp_path / "b" / "cache").exists()
