"""Hardware provenance and ``msabench reproduce``: a run reproduces bit for bit, a changed dataset file is refused
before training, a changed hyperparameter is reported as different (exit 1), a hyperparameter missing from an old
run.json is flagged."""
from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from msabench import cli
from msabench.hardware import hardware_id, hardware_info
from msabench.reproduce import Outcome, compare_rows, select_runs, verdict_of
from msabench.store import read_rows_csv

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # one clean commit for the original runs and the reproductions
RUN = ["run", "--method", "late-fusion", "--protocol", "modality-missing", "--seeds", "7", "--epochs", "2",
       "--threads", "1", "--quiet"]


@pytest.fixture(scope="module", autouse=True)
def clean_commit():
    """Same code for the original and the reproduction, whatever state the checkout is in."""
    import msabench.provenance
    import msabench.runner

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(msabench.provenance, "git_commit", lambda: COMMIT)  # what run.json records
        mp.setattr(msabench.runner, "git_commit", lambda: COMMIT)  # what reproduce compares it with
        yield


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """One late-fusion run on synthetic-small (2 epochs, 1 thread)."""
    out = tmp_path_factory.mktemp("study")
    assert cli.main(RUN + ["--dataset", "synthetic-small", "--out", str(out)]) == 0
    return out


def only_run(out: Path) -> Path:
    (run,) = [p for p in (out / "runs").iterdir() if not p.name.startswith(".")]
    return run


def copy_study(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src / "runs", dst / "runs")
    if edit is not None:
        path = only_run(dst) / "run.json"
        info = json.loads(path.read_text())
        edit(info)
        path.write_text(json.dumps(info))
    return dst


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# hardware provenance ---------------------------------------------------------------------------------------------
def test_run_json_and_rows_record_the_hardware(study):
    info = json.loads((only_run(study) / "run.json").read_text())
    hw = info["hardware"]
    assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert hw["cpu_count"] == __import__("os").cpu_count()
    config = torch.__config__.show()
    assert hw["blas"] == re.search(r"BLAS_INFO=([^,\s]+)", config).group(1)
    assert bool(hw["mkl"]) == torch.backends.mkl.is_available()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        if models:
            assert hw["cpu_model"] == models[0]
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
        assert ("avx2" in hw["cpu_simd_flags"]) == ("avx2" in flags)
    assert "gpu_name" not in hw  # a CPU run records no GPU
    rows = read_rows_csv(only_run(study) / "rows.csv")
    assert set(rows["hardware_id"]) == {info["hardware_id"]}
    assert re.fullmatch(r"[0-9a-f]{10}", info["hardware_id"])
    assert info["torch_threads"] == 1


def test_hardware_id_follows_the_numeric_fields_only():
    info = hardware_info("cpu")
    assert hardware_id(info) == hardware_id(dict(info))
    assert hardware_id({**info, "cpu_model": f"{info['cpu_model']} (another)"}) != hardware_id(info)
    other = "AVX2" if info.get("cpu_capability") == "AVX512" else "AVX512"
    assert hardware_id({**info, "cpu_capability": other}) != hardware_id(info)
    assert hardware_id({**info, "gpu_name": "NVIDIA H200"}) != hardware_id(info)
    assert hardware_id({**info, "cpu_count": 64}) == hardware_id(info)  # the thread count is recorded apart


def test_cuda_runs_record_gpu_driver_cuda_and_cudnn(monkeypatch):
    from types import SimpleNamespace

    import msabench.hardware as hw

    props = SimpleNamespace(name="NVIDIA H200", major=9, minor=0, total_memory=141 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91002)
    monkeypatch.setattr(hw, "_nvidia_driver", lambda: "570.124.06")
    hw.gpu_info.cache_clear()
    try:
        info = hw.hardware_info("cuda")
    finally:
        hw.gpu_info.cache_clear()
    assert (info["gpu_name"], info["gpu_capability"], info["gpu_driver"]) == ("NVIDIA H200", "9.0", "570.124.06")
    assert (info["cuda_version"], info["cudnn_version"]) == ("12.8", "91002")
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "NVIDIA H200, driver 570.124.06, CUDA 12.8, cuDNN 91002" in hw.hardware_summary(info)


# reproduce --------------------------------------------------------------------------------------------------------
def test_run_reproduces_bit_for_bit_into_another_directory(study, tmp_path, capsys):
    before = snapshot(study)
    assert cli.main(["reproduce", str(study), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    run = only_run(study)
    assert f"{run.name}  late-fusion seed 7: bit-identical" in out
    assert "code: same commit" in out and "hardware: same" in out
    assert snapshot(study) == before  # the original is never written
    original = read_rows_csv(run / "rows.csv").set_index(["split", "condition", "metric"])["value"]
    again = read_rows_csv(tmp_path / "again" / "runs" / run.name / "rows.csv")
    again = again.set_index(["split", "condition", "metric"])["value"].reindex(original.index)
    assert len(original) == 2 * 7 * 8  # test + valid × 7 conditions × 8 MOSI metrics
    np.testing.assert_array_equal(original.to_numpy(), again.to_numpy())
    curve = json.loads((run / "run.json").read_text())["training_curve"]
    curve_again = json.loads((tmp_path / "again" / "runs" / run.name / "run.json").read_text())["training_curve"]
    assert [c["train_loss"] for c in curve] == [c["train_loss"] for c in curve_again] and len(curve) == 2


def test_changed_hyperparameter_is_reported_different_and_fails(study, tmp_path, capsys):
    def edit(info):
        info["params"]["lr"] = 0.05

    copy = copy_study(study, tmp_path / "copy", edit)
    assert cli.main(["reproduce", str(copy), "--tolerance", "1e-9"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"late-fusion seed 7: different \(largest \|Δ\| [0-9.e-]+ > tolerance 1e-09\)", out)
    assert "NOT REPRODUCED" in out and "another id" in out
    assert "largest |Δ| per metric: " in out and "Non0_F1" in out
    assert not (tmp_path / "copy" / "results.csv").exists()  # nothing written into the reproduced directory


def test_hyperparameter_absent_from_an_old_run_json_is_flagged(study, tmp_path, capsys):
    def edit(info):
        del info["params"]["dropout"]  # as if the method gained dropout after the run

    copy = copy_study(study, tmp_path / "old", edit)
    assert cli.main(["reproduce", str(copy)]) == 0  # today's default equals the value the run used
    out = capsys.readouterr().out
    assert "bit-identical" in out
    assert "new since the run (absent from its run.json, today's defaults used): dropout=0.2" in out


def test_old_run_json_without_hardware_is_unknown_and_not_strict(study, tmp_path, capsys):
    def edit(info):
        info.pop("hardware")
        info.pop("hardware_id")
        info["params"]["lr"] = 0.05

    copy = copy_study(study, tmp_path / "nohw", edit)
    assert cli.main(["reproduce", str(copy)]) == 0  # different, but nobody can say it ran on the same hardware
    out = capsys.readouterr().out
    assert ": different" in out and "hardware: unknown for the original" in out


def _write_mmsa(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", 24), ("valid", 8), ("test", 8)):
        labels = np.linspace(-3, 3, n).astype(np.float32)
        data[split] = {"id": [f"{split}_{i}" for i in range(n)], "regression_labels": labels,
                       "text": rng.random((n, 6, 5), dtype=np.float32),
                       "audio": rng.random((n, 6, 4), dtype=np.float32),
                       "vision": rng.random((n, 6, 3), dtype=np.float32)}
    path.write_bytes(pickle.dumps(data))


def test_changed_dataset_file_is_refused_before_training(tmp_path, capsys):
    data = tmp_path / "mosi.pkl"
    _write_mmsa(data, seed=0)
    study = tmp_path / "study"
    assert cli.main(RUN + ["--dataset", f"mmsa:{data}", "--out", str(study)]) == 0
    recorded = json.loads((only_run(study) / "run.json").read_text())["dataset_fingerprint"]
    capsys.readouterr()
    from msabench.runner import _load_cached

    _write_mmsa(data, seed=1)  # same shape, other values
    _load_cached.cache_clear()
    assert cli.main(["reproduce", str(study), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    from msabench.plugins import dataset_source

    now = dataset_source(f"mmsa:{data}").load().fingerprint
    assert now != recorded and f"has fingerprint {now}" in err and f"made on {recorded}" in err, err
    assert "--dataset" in err
    assert not (tmp_path / "again" / "runs").exists() or not any((tmp_path / "again" / "runs").iterdir())


# pieces -----------------------------------------------------------------------------------------------------------
def _rows(values: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"split": "test", "condition": ["a", "b", "c"], "metric": "MAE", "mask_hash": "m",
                         "value": values})


def test_compare_and_verdict_against_hand_values():
    cells, notes = compare_rows(_rows([0.5, float("nan"), 1.0]), _rows([0.5, float("nan"), 1.0]))
    assert verdict_of(cells, 0.0, 1e-6, False)[0] == "bit-identical" and not notes
    cells, _ = compare_rows(_rows([0.5, 0.25, 1.0]), _rows([0.5, 0.25, 1.0 + 4e-7]))
    verdict, worst = verdict_of(cells, 0.0, 1e-6, False)
    assert verdict == "within tolerance" and worst == pytest.approx(4e-7)
    assert verdict_of(cells, 0.0, 1e-7, False)[0] == "different"
    assert verdict_of(_rows_identical(), 2e-9, 1e-6, False)[0] == "within tolerance"  # the curve decides identity
    cells, _ = compare_rows(_rows([0.5, 0.25, 1.0]), _rows([0.5, float("nan"), 1.0]))
    assert verdict_of(cells, 0.0, 1e-6, False)[0] == "different"
    cells, notes = compare_rows(_rows([0.5, 0.25, 1.0]), _rows([0.5, 0.25, 1.0]).iloc[:2])
    assert len(cells) == 2 and notes and "1 values exist on one side only" in notes[0]


def _rows_identical() -> pd.DataFrame:
    return compare_rows(_rows([1.0, 2.0, 3.0]), _rows([1.0, 2.0, 3.0]))[0]


def test_curve_difference_is_relative_and_epoch_sensitive():
    from msabench.reproduce import curve_difference

    a = [{"train_loss": 1000.0, "valid_score": 0.5}, {"train_loss": 800.0, "valid_score": 0.25}]
    b = [{"train_loss": 1000.1, "valid_score": 0.5}, {"train_loss": 800.0, "valid_score": 0.25}]
    assert curve_difference(a, a) == 0.0
    assert curve_difference(a, b) == pytest.approx(0.1 / 1000.0)
    assert curve_difference(a, a[:1]) == float("inf")


def test_strict_only_on_same_hardware_code_torch_and_threads():
    o = Outcome("r", "m", "", 1, "within tolerance", 1e-6, same_hardware=True, same_code=True)
    assert o.strict and o.failed
    assert not Outcome("r", "m", "", 1, "different", 1e-6, same_hardware=None, same_code=True).failed
    assert not Outcome("r", "m", "", 1, "different", 1e-6, same_hardware=True, same_code=False).failed
    assert Outcome("r", "m", "", 1, "error", 1e-6).failed


def test_selection_sample_and_errors(study, tmp_path):
    from msabench.reproduce import ReproduceError

    run = only_run(study).name
    assert select_runs(study) == [run] and select_runs(study, max_runs=1, sample_seed=3) == [run]
    with pytest.raises(ReproduceError, match="not in"):
        select_runs(study, run_ids=["nope"])
    with pytest.raises(ReproduceError, match="no finished runs"):
        select_runs(tmp_path)
    assert cli.main(["reproduce", str(study), "--out", str(study)]) == 2


def test_max_draws_a_seeded_sample_and_method_filters(tmp_path):
    ids = [f"{i:016x}" for i in range(6)]
    for i, run_id in enumerate(ids):
        (tmp_path / "runs" / run_id).mkdir(parents=True)
        (tmp_path / "runs" / run_id / "run.json").write_text(json.dumps({"method": "tfn" if i % 2 else "lmf"}))
    samples = {tuple(select_runs(tmp_path, max_runs=2, sample_seed=s)) for s in range(10)}
    assert all(len(s) == 2 and set(s) <= set(ids) for s in samples) and len(samples) > 1
    assert select_runs(tmp_path, max_runs=2, sample_seed=4) == select_runs(tmp_path, max_runs=2, sample_seed=4)
    assert select_runs(tmp_path, methods=["tfn"]) == ids[1::2]
    assert select_runs(tmp_path, run_ids=[ids[3], ids[0]], max_runs=5) == [ids[3], ids[0]]


def test_code_counts_as_same_when_commits_differ_only_outside_the_code(tmp_path, monkeypatch):
    import subprocess

    import msabench.reproduce as rp

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "pkg").mkdir()
    commits = []
    for path, text in (("pkg/a.py", "x = 1\n"), ("README.md", "notes\n"), ("pkg/a.py", "x = 2\n")):
        (tmp_path / path).write_text(text)
        git("add", path)
        git("commit", "-qm", path)
        commits.append(git("rev-parse", "HEAD"))
    monkeypatch.setattr(rp, "_code_dirs", lambda: [tmp_path / "pkg"])
    assert rp.code_changed(commits[0], commits[1]) is False
    assert rp.code_changed(commits[1], commits[2]) is True
    assert rp.code_changed(commits[0], "0" * 40) is None
    assert rp._commit_state(commits[0], commits[1])[0] is True
    assert rp._commit_state(commits[0], commits[2])[0] is False
    assert rp._commit_state(commits[0] + "-dirty", commits[0])[0] is None
