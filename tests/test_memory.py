"""Memory work (issue 21): the scaler folded into batches, the chunked scaler, the synthetic unaligned MOSEI shapes,
one loaded copy per grid, the host/device placement choice and its record in run.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from msabench import batches, runner, training
from msabench.data.base import Split
from msabench.data.synthetic import SyntheticMOSEI, SyntheticMOSI, SyntheticSmall
from msabench.placement import DEVICE_SHARE, choose_placement, dataset_bytes
from msabench.runner import ExecOptions, RunRequest, run_grid
from msabench.training import PreparedSplit, fit_scaler


def _split(n: int = 9, t: int = 6) -> Split:
    gen = torch.Generator().manual_seed(5)
    feats = {"l": torch.randn(n, t, 4, generator=gen) * 3 + 1, "a": torch.randn(n, t, 3, generator=gen) * 0.2 - 4}
    lengths = {"l": torch.randint(0, t + 1, (n,), generator=gen), "a": torch.randint(0, t + 1, (n,), generator=gen)}
    return Split("test", feats, lengths, torch.zeros(n), [str(i) for i in range(n)])


def _numpy_reference(split: Split, scaler, mask) -> dict[str, np.ndarray]:
    """The old two-step formula in numpy float32: standardise the whole split, zero padding, then apply the mask."""
    out = {}
    for m, x in split.features.items():
        mean, std = (v.numpy() for v in scaler[m])
        pad = (np.arange(x.shape[1])[None, :] < split.lengths[m].numpy()[:, None]).astype(np.float32)
        standardised = ((x.numpy() - mean) / std) * pad[:, :, None]
        out[m] = standardised * mask[m].numpy().astype(np.float32)[:, :, None]
    return out


@pytest.fixture
def masked():
    split = _split()
    scaler = fit_scaler(split)
    gen = torch.Generator().manual_seed(6)
    mask = {m: (torch.rand(x.shape[:2], generator=gen) > 0.3) & split.padding_mask()[m]
            for m, x in split.features.items()}
    return split, scaler, mask, _numpy_reference(split, scaler, mask)


def test_folded_scaler_batches_equal_the_old_formula_bit_for_bit(masked):
    split, scaler, mask, expected = masked
    prepared = PreparedSplit(split, split.features, scaler=scaler)
    gathered = torch.tensor([7, 0, 3, 3, 8])
    batch = prepared.masked_batch(mask, gathered)
    for m in split.features:
        assert np.array_equal(batch.features[m].numpy(), expected[m][gathered.numpy()])
    for reuse in (False, True):
        for sl in (slice(0, 4), slice(4, 9)):
            batch = prepared.masked_batch(mask, sl, reuse_buffers=reuse)
            for m in split.features:
                assert np.array_equal(batch.features[m].numpy(), expected[m][sl])
    # the raw features are untouched: no standardisation in place of the dataset's tensors
    assert torch.equal(split.features["l"], _split().features["l"])


def test_validation_copy_and_whole_standardised_modality_equal_the_old_formula(masked):
    split, scaler, mask, expected = masked
    prepared = PreparedSplit(split, split.features, scaler=scaler)
    applied = prepared.with_mask_applied(mask)
    batch = applied.masked_batch(None, torch.tensor([2, 5, 1]))
    for m in split.features:
        assert np.array_equal(applied.features[m].numpy(), expected[m])
        assert np.array_equal(batch.features[m].numpy(), expected[m][[2, 5, 1]])
    full = _numpy_reference(split, scaler, split.padding_mask())
    assert np.array_equal(prepared.standardised("a").numpy(), full["a"])


def test_chunked_scaler_equals_the_float64_formula(monkeypatch):
    split = _split(n=40, t=7)
    monkeypatch.setattr(batches, "SCALER_EXACT_BYTES", 0)
    monkeypatch.setattr(batches, "row_chunks", lambda x: [slice(s, min(s + 3, x.shape[0])) for s in range(0, x.shape[0], 3)])
    scaler = fit_scaler(split)
    for m, x in split.features.items():
        x = x.numpy().astype(np.float64)
        frames = np.concatenate([x[i, :int(length)] for i, length in enumerate(split.lengths[m])])
        np.testing.assert_allclose(scaler[m][0].numpy(), frames.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(scaler[m][1].numpy(), frames.std(axis=0), rtol=1e-6)


def test_synthetic_unaligned_mosei_shapes_and_one_array_per_modality():
    ds = SyntheticMOSEI(aligned="false", text_dim="768", scale="0.01").load()
    assert [len(ds[s]) for s in ("train", "valid", "test")] == [163, 19, 47]
    assert ds.train.seq_lens() == {"l": 50, "a": 500, "v": 500}
    assert ds.train.dims() == {"l": 768, "a": 74, "v": 35}
    assert not ds.aligned and "text_dim=768" in ds.name
    for m in ("l", "a", "v"):  # the splits are consecutive rows of one generated array, not copies
        train, valid = ds.train.features[m], ds.valid.features[m]
        assert valid.data_ptr() == train.data_ptr() + train.nbytes
        lengths = ds.test.lengths[m].numpy()
        x = ds.test.features[m].numpy()
        assert all(not x[i, lengths[i]:].any() for i in range(len(lengths)))


def test_synthetic_default_sets_are_unchanged_and_options_are_checked():
    # fingerprints of the published sets, computed before this change (generation without a second copy)
    assert SyntheticMOSI().load().fingerprint == "8a4e867c11d36266"
    with pytest.raises(ValueError, match="scale"):
        SyntheticSmall(scale="2").load()
    with pytest.raises(ValueError, match="text_dim"):
        SyntheticSmall(text_dim="zero").load()


def test_placement_choice_with_a_fake_device_memory():
    gb = 2**30
    cuda = torch.device("cuda")
    assert choose_placement("auto", cuda, 10 * gb, free_bytes=lambda d: 24 * gb) == "device"  # 10 <= 0.6 * 24
    assert choose_placement("auto", cuda, 15 * gb, free_bytes=lambda d: 24 * gb) == "host"  # 15 > 14.4
    assert choose_placement("auto", cuda, int(DEVICE_SHARE * 8 * gb), free_bytes=lambda d: 8 * gb) == "device"
    assert choose_placement("device", cuda, 99 * gb, free_bytes=lambda d: gb) == "device"  # asked for: obeyed
    assert choose_placement("host", cuda, 1, free_bytes=lambda d: 99 * gb) == "host"
    assert choose_placement("auto", torch.device("cpu"), 99 * gb, free_bytes=lambda d: gb) == "device"
    assert choose_placement("auto", torch.device("mps"), 99 * gb, free_bytes=lambda d: None) == "device"
    with pytest.raises(ValueError, match="placement"):
        choose_placement("gpu", cuda, 1)
    ds = SyntheticSmall().load()
    expected = sum(x.nbytes for s in ds.splits.values() for x in [*s.features.values(), *s.lengths.values(), s.labels])
    assert dataset_bytes(ds) == expected


def _request(**kw) -> RunRequest:
    return RunRequest(methods=["late-fusion"], datasets=["synthetic-small"], protocol="modality-missing",
                      seeds=[1111], epochs=1, **kw)


def test_grid_loads_the_dataset_once_for_all_its_runs(tmp_path, monkeypatch):
    calls = []
    original = SyntheticSmall.load

    def counting(self):
        calls.append(self.name)
        return original(self)

    monkeypatch.setattr(SyntheticSmall, "load", counting)
    runner._load_cached.cache_clear()
    request = RunRequest(methods=["late-fusion"], datasets=["synthetic-small"], protocol="modality-missing",
                         seeds=[1111, 1112, 1113], epochs=1, dataset_options={"seed": 7})
    rows = run_grid(request, out=tmp_path, options=ExecOptions(progress=False, threads=1))
    assert rows["seed"].nunique() == 3
    assert calls == ["synthetic-small"]
    runner._load_cached.cache_clear()


def test_run_json_records_the_placement_and_host_gives_the_same_rows(tmp_path, monkeypatch):
    run_grid(_request(), out=tmp_path / "device", options=ExecOptions(progress=False, threads=1))
    chosen = []

    def forced_host(requested, device, data_bytes):
        chosen.append((requested, data_bytes))
        return "host"

    monkeypatch.setattr(runner, "choose_placement", forced_host)
    run_grid(_request(), out=tmp_path / "host", options=ExecOptions(progress=False, threads=1,
                                                                    data_placement="host"))
    ds = SyntheticSmall().load()
    fit_bytes = sum(x.element_size() * x.nelement() for s in (ds.train, ds.valid)  # the test split is never sized
                    for x in [*s.features.values(), *s.lengths.values(), s.labels])
    assert chosen and chosen[0][0] == "host" and chosen[0][1] == fit_bytes
    infos = {}
    for where in ("device", "host"):
        (run_json,) = (tmp_path / where / "runs").glob("*/run.json")
        infos[where] = json.loads(run_json.read_text())
        infos[where]["rows"] = (run_json.parent / "rows.csv").read_text()
    assert infos["device"]["data_placement"] == "device" and infos["host"]["data_placement"] == "host"
    assert infos["host"]["fitted"]["data_placement_"] == "host"
    assert infos["device"]["training_curve"] == infos["host"]["training_curve"]
    device_rows = [line.split(",")[-5:] for line in infos["device"]["rows"].splitlines()]
    host_rows = [line.split(",")[-5:] for line in infos["host"]["rows"].splitlines()]
    assert device_rows == host_rows


def test_unknown_placement_is_a_one_line_error(tmp_path):
    with pytest.raises(runner.RunError, match="--data-placement 'gpu'"):
        run_grid(_request(), out=tmp_path, options=ExecOptions(progress=False, data_placement="gpu"))


def test_shared_copy_round_trips_and_workers_map_it_instead_of_loading(tmp_path, monkeypatch):
    from msabench.data.base import fingerprint
    from msabench.data.shared import load_shared, save_shared

    ds = SyntheticSmall(seed=3).load()
    path = save_shared(ds, tmp_path / "shared")
    back = load_shared(path)
    assert fingerprint(back) == ds.fingerprint == back.fingerprint  # recomputed from the mapped arrays
    assert back.task == ds.task and back.aligned == ds.aligned and back.train.ids == ds.train.ids
    maps = Path("/proc/self/maps")
    if maps.exists():  # Linux: the features are pages of the file, not a private copy
        ptr = back.train.features["l"].data_ptr()
        mapped = [line for line in maps.read_text().splitlines() if line.endswith("train.features.l.npy")]
        spans = [tuple(int(v, 16) for v in line.split()[0].split("-")) for line in mapped]
        assert any(lo <= ptr < hi for lo, hi in spans)

    def no_load(self):
        raise AssertionError("the worker loaded the dataset again")

    monkeypatch.setattr(SyntheticSmall, "load", no_load)
    spec = runner.RunSpec("late-fusion", {"epochs": 1}, "synthetic-small", {"seed": 3}, ds.fingerprint,
                          "modality-missing", {}, 1111)
    record = runner._execute_in_worker(spec, ExecOptions(progress=False, threads=1), shared=path)
    assert record.info["dataset_fingerprint"] == ds.fingerprint and not record.rows.empty


def test_mmsa_audio_infs_are_zeroed_in_place_without_a_copy():
    from msabench.data.mmsa import infs_to_zero, last_nonzero_lengths

    x = np.ones((5, 4, 3), dtype=np.float32)
    x[1, 2, 0], x[4, 0, 2] = np.inf, -np.inf
    expected = np.where(np.isinf(x), 0.0, x)
    copy = infs_to_zero(x)
    assert copy is not x and np.isinf(x).sum() == 2 and np.array_equal(copy, expected)
    same = infs_to_zero(x, in_place=True)
    assert same is x and np.array_equal(x, expected)
    x[2, 1:] = 0.0
    x[3] = 0.0
    assert last_nonzero_lengths(x).tolist() == [4, 4, 1, 0, 4]


def test_evaluation_copy_below_the_budget_and_folded_above_give_the_same_predictions(monkeypatch):
    from msabench.data.base import Task
    from msabench.methods.late_fusion import LateFusion

    ds = SyntheticSmall().load()
    method = LateFusion(hidden=8)
    method.device_, method.task_, method.amp_ = torch.device("cpu"), Task("regression", "mosi"), False
    method.scaler_ = fit_scaler(ds.train)
    torch.manual_seed(0)
    method.model_ = method.build(ds.train.dims(), ds.train.seq_lens(), method.task_)
    mask = {m: x & (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) > 0.5)
            for m, x in ds.test.padding_mask().items()}
    copied = method.predict(ds.test, mask)
    assert method._prepared_cache[1].scaler is None  # standardised once into a copy
    monkeypatch.setattr(training, "EVAL_COPY_BYTES", 0)
    method._prepared_cache = None
    folded = method.predict(ds.test, mask)
    assert method._prepared_cache[1].scaler is not None  # folded into each batch
    assert np.array_equal(copied, folded)


def test_validation_without_copies_scores_the_same_batches(masked):
    split, scaler, mask, expected = masked
    prepared = PreparedSplit(split, split.features, scaler=scaler)
    lazy = prepared.with_mask_applied(mask, copy=False)
    assert lazy.features["l"] is split.features["l"]  # no copy made
    for idx in (slice(0, 5), torch.tensor([8, 1, 1])):
        batch = lazy.masked_batch(None, idx, reuse_buffers=isinstance(idx, slice))
        for m in split.features:
            assert np.array_equal(batch.features[m].numpy(), expected[m][idx.numpy() if not isinstance(idx, slice) else idx])
            assert torch.equal(batch.mask[m], mask[m][idx])


def test_validation_copies_only_below_the_budget(monkeypatch):
    ds = SyntheticSmall().load()
    made = []
    original = PreparedSplit.with_mask_applied

    def spy(self, mask, copy=True):
        made.append(copy)
        return original(self, mask, copy)

    monkeypatch.setattr(PreparedSplit, "with_mask_applied", spy)
    scores = {}
    for budget in (2**40, 0):
        monkeypatch.setattr(training, "VALID_COPY_BYTES", budget)
        monkeypatch.setattr(training, "VALID_COPY_FLOOR", budget)
        from msabench.methods.late_fusion import LateFusion
        from msabench.method import FitContext
        from msabench.plugins import PROTOCOLS

        proto = PROTOCOLS.get("modality-missing")()
        context = FitContext(task=ds.task, seed=1, epochs=1,
                             valid_masks=proto.masks(ds.valid, ds.fingerprint, proto.validation_conditions()))
        method = LateFusion(hidden=8).fit(ds.train, ds.valid, proto.training_schedule(ds.train, 1, ds.fingerprint),
                                          context)
        scores[budget] = method.training_curve()
    assert made == [True] * 7 + [False] * 7
    assert scores[2**40] == scores[0]  # the same validation scores either way


def test_validation_copy_budget_by_hand():
    from msabench.training import copy_validation

    mib = 2**20
    # small sets always copy (7 x 14 MiB = 98 MiB <= the 128 MiB floor), whatever the share says
    assert copy_validation(7, 14 * mib, 90 * mib)
    # MOSEI unaligned at 10 %: 7 x 69 MiB = 483 MiB > max(128, 0.25 x (650 + 69) = 179.75) MiB -> masked per batch
    assert not copy_validation(7, 69 * mib, 650 * mib)
    # a large train split lifts the share, but never above 512 MiB in all
    assert copy_validation(7, 69 * mib, 2000 * mib)  # 483 <= min(512, 517.25)
    assert not copy_validation(8, 69 * mib, 4000 * mib)  # 552 > 512


def test_evaluation_batches_shrink_for_long_sequences():
    from msabench.training import eval_batch_size

    assert eval_batch_size(128, 50) == 256  # MOSI-like: 16384 // 50 = 327, capped at 256 as before
    assert eval_batch_size(16, 500) == 32  # unaligned MOSEI: 16384 // 500 = 32
    assert eval_batch_size(64, 500) == 64  # never below the training batch
    assert eval_batch_size(8, 20000) == 8
    assert eval_batch_size(16, 1) == 256
