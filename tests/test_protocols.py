"""Missingness protocols: drop ratios, determinism, padding, named conditions, BERT ids, plugins."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from msabench.data.synthetic import SMALL_UNALIGNED, make_sentiment
from msabench.masks import BERT_UNK_ID, apply_mask, apply_mask_bert, mask_hash
from msabench.plugins import PROTOCOLS, load_dataset


@pytest.fixture(scope="module")
def dataset():
    # unaligned, variable lengths: padding differs per modality
    return make_sentiment("proto-test", SMALL_UNALIGNED, seed=3, aligned=False)


def protocol(name, **params):
    return PROTOCOLS.get(name)(**params)


def existing(split):
    return split.padding_mask()


@pytest.mark.parametrize("name", ["random-missing", "block-missing"])
def test_drop_ratio_within_binomial_tolerance(dataset, name):
    split = dataset.test
    pad = existing(split)
    proto = protocol(name)
    for cond in proto.conditions():
        r = float(cond)
        mask = proto.mask(split, cond, dataset.fingerprint)
        for m in mask:
            n = int(pad[m].sum())
            dropped = n - int((mask[m] & pad[m]).sum())
            sd = np.sqrt(n * r * (1 - r))
            # independent frames: 4 sd; bursty frames are correlated (runs of ~5), so allow 4 sd of runs
            tol = 4 * sd * (1 if name == "random-missing" else np.sqrt(10)) + 1e-9
            assert abs(dropped - n * r) <= tol, (name, cond, m, dropped, n * r)


def test_r0_unchanged_r1_everything_dropped_padding_untouched(dataset):
    split = dataset.test
    proto = protocol("random-missing")
    pad = existing(split)
    m0 = proto.mask(split, "0.0", dataset.fingerprint)
    out0 = apply_mask(split.features, m0)
    for m in split.features:
        assert torch.equal(out0[m], split.features[m])  # bit-for-bit
        assert torch.equal(m0[m], pad[m])
    m1 = proto.mask(split, "1.0", dataset.fingerprint)
    out1 = apply_mask(split.features, m1)
    for m in split.features:
        assert not m1[m].any()
        assert torch.count_nonzero(out1[m]) == 0
    for name in PROTOCOLS.names():
        if name.startswith("test-"):
            continue
        p = protocol(name)
        for cond in p.conditions():
            mask = p.mask(split, cond, dataset.fingerprint)
            for m in mask:
                assert not (mask[m] & ~pad[m]).any(), (name, cond, m)  # padding never present


def test_per_modality_rates(dataset):
    split = dataset.test
    proto = protocol("random-missing", rates="l=0.0,a=1.0,v=0.5")
    assert proto.conditions() == ["l=0.0,a=1.0,v=0.5"]
    mask = proto.mask(split, proto.conditions()[0], dataset.fingerprint)
    pad = existing(split)
    assert torch.equal(mask["l"], pad["l"])
    assert not mask["a"].any()
    share = 1 - (mask["v"] & pad["v"]).sum().item() / pad["v"].sum().item()
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError, match="rates must look like"):
        protocol("random-missing", rates="text=0.3")


HASH_SCRIPT = """
import json, sys
from msabench.data.synthetic import SMALL_UNALIGNED, make_sentiment
from msabench.plugins import PROTOCOLS
ds = make_sentiment("proto-test", SMALL_UNALIGNED, seed=3, aligned=False)
out = {}
for name in ["random-missing", "block-missing", "modality-missing", "uncertain-missing"]:
    p = PROTOCOLS.get(name)()
    out[name] = p.mask_hashes(ds.test, ds.fingerprint)
print(json.dumps(out))
"""


def test_same_masks_in_another_process_and_different_for_another_seed(dataset):
    here = {n: protocol(n).mask_hashes(dataset.test, dataset.fingerprint)
            for n in ["random-missing", "block-missing", "modality-missing", "uncertain-missing"]}
    there = json.loads(subprocess.run([sys.executable, "-c", HASH_SCRIPT], capture_output=True, text=True,
                                      check=True).stdout)
    assert here == there
    other = protocol("random-missing", mask_seed=1).mask_hashes(dataset.test, dataset.fingerprint)
    assert other["0.5"] != here["random-missing"]["0.5"]
    assert other["0.0"] == here["random-missing"]["0.0"]  # nothing dropped either way


def test_masks_do_not_depend_on_batch_size(dataset):
    """A trained model evaluated with different batch sizes sees the same masks and gives the same numbers."""
    from msabench.runner import evaluate
    from msabench.testing import _fit  # noqa: PLC2701 (a small fit helper)
    from msabench.plugins import METHODS

    cls = METHODS.get("late-fusion")
    method = _fit(cls, {"epochs": 1, "batch_size": 16}, dataset, seed=1)
    proto = protocol("random-missing")
    rows_a, _ = evaluate(method, dataset, proto, ["test"])
    method.batch_size = 7  # changes the evaluation batches
    rows_b, _ = evaluate(method, dataset, proto, ["test"])
    assert [r["mask_hash"] for r in rows_a] == [r["mask_hash"] for r in rows_b]
    np.testing.assert_allclose([r["value"] for r in rows_a], [r["value"] for r in rows_b], rtol=1e-5, atol=1e-6)


def test_modality_missing_conditions_exactly_as_named(dataset):
    split = dataset.test
    proto = protocol("modality-missing")
    assert proto.conditions() == ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}", "{l,a,v}"]
    assert proto.summaries() == {"Avg": ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}"]}
    pad = existing(split)
    for cond in proto.conditions():
        present = set(cond.strip("{}").split(","))
        mask = proto.mask(split, cond, dataset.fingerprint)
        for m in "lav":
            expected = pad[m] if m in present else torch.zeros_like(pad[m])
            assert torch.equal(mask[m], expected), (cond, m)


def test_uncertain_missing_never_empties_a_sample(dataset):
    split = dataset.train
    proto = protocol("uncertain-missing")
    assert proto.conditions() == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"]
    for cond in proto.conditions():
        mask = proto.mask(split, cond, dataset.fingerprint)
        kept = torch.stack([mask[m].any(dim=1) for m in "lav"], dim=1)  # (N, 3)
        assert kept.any(dim=1).all(), cond
        # whole modalities only: a kept modality keeps all its frames
        for m in "lav":
            rows = mask[m].any(dim=1)
            assert torch.equal(mask[m][rows], existing(split)[m][rows])
        p = float(cond)
        rate = 1 - kept.float().mean().item()
        # drops with prob p, minus rescued all-empty samples (p^3 of samples get one back: rate = p - p^3/3)
        expected = p - p ** 3 / 3
        n = kept.numel()
        assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 0.01


def test_block_missing_is_bursty(dataset):
    split = dataset.test
    block = protocol("block-missing").mask(split, "0.3", dataset.fingerprint)["v"].numpy()
    rand = protocol("random-missing").mask(split, "0.3", dataset.fingerprint)["v"].numpy()
    pad = existing(split)["v"].numpy()

    def mean_drop_run(mask):
        runs = []
        for row, valid in zip(mask, pad):
            dropped = ~row[valid]
            edges = np.diff(np.concatenate([[0], dropped.astype(int), [0]]))
            runs += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
        return np.mean(runs)

    assert mean_drop_run(block) > 2 * mean_drop_run(rand)


def test_bert_id_masking_keeps_cls_sep_and_uses_unk():
    ids = torch.tensor([[101, 2023, 2003, 1037, 102, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 0]])
    text_bert = torch.stack([ids, attn, torch.zeros_like(ids)], dim=1)  # (1, 3, 6)
    dropped_all = torch.zeros(1, 6, dtype=torch.bool)
    out = apply_mask_bert(text_bert, dropped_all)
    assert out[0, 0].tolist() == [101, BERT_UNK_ID, BERT_UNK_ID, BERT_UNK_ID, 102, 0]
    assert BERT_UNK_ID == 100
    assert torch.equal(out[:, 1:], text_bert[:, 1:])
    keep_second = torch.tensor([[True, False, True, False, True, True]])
    out = apply_mask_bert(text_bert, keep_second)
    assert out[0, 0].tolist() == [101, 100, 2003, 100, 102, 0]


def test_training_schedule_is_seeded_per_epoch(dataset):
    proto = protocol("random-missing")
    sched = proto.training_schedule(dataset.train, 1111, dataset.fingerprint)
    a0, a0_again, a1 = sched.mask(0), sched.mask(0), sched.mask(1)
    other = proto.training_schedule(dataset.train, 1112, dataset.fingerprint).mask(0)
    assert mask_hash(a0) == mask_hash(a0_again)
    assert mask_hash(a0) != mask_hash(a1) and mask_hash(a0) != mask_hash(other)
    # LNLN recipe: about half the samples complete
    pad = existing(dataset.train)
    complete = (a0["l"] == pad["l"]).all(dim=1) & (a0["a"] == pad["a"]).all(dim=1) & (a0["v"] == pad["v"]).all(dim=1)
    assert 0.4 < complete.float().mean().item() < 0.75  # half complete by design, plus some with r ~ 0
    assert sched.complete().mask(3)["l"].equal(pad["l"])


def test_modality_recipe_never_empty(dataset):
    sched = protocol("modality-missing").training_schedule(dataset.train, 5, dataset.fingerprint)
    assert sched.recipe == "modality"
    mask = sched.mask(0)
    kept = torch.stack([mask[m].any(dim=1) for m in "lav"], dim=1)
    assert kept.any(dim=1).all()
    patterns = {tuple(r) for r in kept.int().tolist()}
    assert len(patterns) == 7  # all non-empty subsets occur
    combo = protocol("random-missing", train_recipe="frame+modality").training_schedule(
        dataset.train, 5, dataset.fingerprint)
    assert combo.recipe == "frame+modality"


@pytest.mark.parametrize("name", ["random-missing", "modality-missing"])
def test_evaluation_masks_do_not_depend_on_the_training_recipe(dataset, name):
    default = protocol(name)
    # the default recipe's masks are drawn from the protocol's identity, as every published run's were
    assert default.mask_identity() == default.identity()
    for recipe in ("frame", "frame+modality", "frame-per-modality", "modality-proper"):
        other = protocol(name, train_recipe=recipe)
        assert other.mask_hashes(dataset.test, dataset.fingerprint) == default.mask_hashes(dataset.test,
                                                                                             dataset.fingerprint)
        assert other.identity() != default.identity()  # the protocol variant is still told apart in the rows
    # while the training masks do follow the recipe
    a = default.training_schedule(dataset.train, 5, dataset.fingerprint).mask(0)
    b = protocol(name, train_recipe="frame+modality").training_schedule(dataset.train, 5, dataset.fingerprint).mask(0)
    assert any(not torch.equal(a[m], b[m]) for m in a)


def test_plugin_protocol_end_to_end(test_plugin, tmp_path):
    from msabench.cli import main
    from msabench.store import read_rows

    code = main(["run", "--method", "late-fusion", "--protocol", "test-half", "--dataset", "synthetic-small",
                 "--seeds", "1", "--epochs", "1", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    rows = read_rows([tmp_path])
    assert set(rows["condition"]) == {"first-half", "second-half"}
    assert set(rows["protocol_package"]) == {"msabench-testplugin"}
    assert set(rows["protocol_version"]) == {"2"}


def test_masks_command_prints_statistics_and_hashes(capsys):
    from msabench.cli import main

    assert main(["masks", "--protocol", "modality-missing", "--dataset", "synthetic-small"]) == 0
    out = capsys.readouterr().out
    ds = load_dataset("synthetic-small")
    hashes = protocol("modality-missing").mask_hashes(ds.test, ds.fingerprint)
    for cond, h in hashes.items():
        assert cond in out and h in out
    assert "whole_missing_l" in out and "dropped_a" in out
