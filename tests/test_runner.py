"""The runner's guarantees: no test data in training, resume after kill -9, determinism, identical masks,
errors before training, Dask gives the same rows, stored predictions reproduce the metrics."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score

from msabench import cli
from msabench.data.base import MultimodalDataset
from msabench.masks import mask_hash
from msabench.runner import (
    ExecOptions,
    RunError,
    RunRequest,
    RunSpec,
    fit_method,
    load_dataset_cached,
    make_protocol,
    parse_scheduler,
    plan,
    resolve_method_params,
    run_grid,
)
from msabench.store import ResultsStore, read_rows_csv

REPO = Path(__file__).resolve().parents[1]
N_CONDITIONS = 11  # random-missing: r = 0.0, 0.1, ..., 1.0
N_MOSI_METRICS = 8  # Has0_acc_2, Has0_F1, Non0_acc_2, Non0_F1, Mult_acc_5, Mult_acc_7, MAE, Corr
GRID_ARGS = ["run", "--method", "late-fusion,test-spy", "--dataset", "synthetic-small", "--protocol",
             "random-missing", "--seeds", "1,2", "--epochs", "2", "--save-predictions", "--quiet"]
VALUE_COLUMNS = ["run_id", "method", "seed", "split", "condition", "mask_hash", "metric", "value"]


def run_cli(args: list[str]) -> int:
    return cli.main(args)


def one_thread_main(args: list[str]) -> int:
    """``msabench`` in this process with one torch thread (what Dask and pool workers use)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_cli(args)
    finally:
        torch.set_num_threads(before)


def value_frame(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[VALUE_COLUMNS].sort_values(VALUE_COLUMNS[:-1]).reset_index(drop=True)


@pytest.fixture(scope="module")
def grid(test_plugin, tmp_path_factory) -> Path:
    """late-fusion and the spy, seeds 1 and 2, two epochs, with predictions: 4 runs."""
    out = tmp_path_factory.mktemp("grid")
    assert one_thread_main(GRID_ARGS + ["--out", str(out)]) == 0
    return out


def grid_rows(out: Path) -> pd.DataFrame:
    return read_rows_csv(out / "results.csv")


# no test data in training or model selection ----------------------------------------------------------------
def test_spy_sees_test_split_only_through_predict_after_fit(test_plugin, spy_log, tmp_path, monkeypatch):
    from msabench.plugins import METHODS

    spy = METHODS.get("test-spy")
    dataset = load_dataset_cached("synthetic-small")
    protocol = make_protocol("random-missing", {})
    expected_valid = {c: mask_hash(m) for c, m in
                      protocol.masks(dataset.valid, dataset.fingerprint, protocol.validation_conditions()).items()}
    seen_valid_masks: list[dict[str, tuple]] = []
    real_fit = spy.fit

    def recording_fit(self, train, valid, schedule, context):
        seen_valid_masks.append({c: (mask_hash(m), {k: tuple(v.shape) for k, v in m.items()})
                                 for c, m in context.valid_masks.items()})
        assert len(schedule.mask(0)["l"]) == len(train)  # the training schedule draws for the train split
        return real_fit(self, train, valid, schedule, context)

    monkeypatch.setattr(spy, "fit", recording_fit)
    request = RunRequest(methods=["test-spy"], datasets=["synthetic-small"], seeds=[1, 2])
    run_grid(request, out=tmp_path, options=ExecOptions(progress=False))

    events = [json.loads(line) for line in spy_log.read_text().splitlines()]
    fits = [i for i, e in enumerate(events) if e["event"] == "fit"]
    assert len(fits) == 2 and fits[0] == 0  # nothing is predicted before the first fit
    for i in fits:
        e = events[i]
        assert (e["train"], e["valid"]) == ("train", "valid")
        assert (e["n_train"], e["n_valid"]) == (len(dataset.train), len(dataset.valid))
    for start, end in zip(fits, fits[1:] + [len(events)]):
        predicts = events[start + 1:end]
        assert all(p["event"] == "predict" for p in predicts)
        assert sorted({p["split"] for p in predicts}) == ["test", "valid"]
        assert sum(p["split"] == "test" for p in predicts) == N_CONDITIONS
        assert all(p["n"] == len(dataset[p["split"]]) for p in predicts)
    n_valid = len(dataset.valid)
    for masks in seen_valid_masks:  # validation masks: drawn on the valid split, the protocol's fixed ones
        assert {c: h for c, (h, _) in masks.items()} == expected_valid
        assert all(shape[0] == n_valid for _, shapes in masks.values() for shape in shapes.values())


def test_test_split_content_cannot_change_the_fitted_model():
    """Replace every test feature and label by noise: the trained model must be exactly the same."""
    dataset = load_dataset_cached("synthetic-small")
    test = dataset.test
    gen = torch.Generator().manual_seed(0)
    noisy_test = type(test)(
        name="test",
        features={m: torch.randn(x.shape, generator=gen) * 5 for m, x in test.features.items()},
        lengths=dict(test.lengths),
        labels=(torch.rand(test.labels.shape, generator=gen) * 6 - 3).round(),
        ids=list(test.ids),
    )
    altered = MultimodalDataset(dataset.name, dataset.task, {**dataset.splits, "test": noisy_test},
                                aligned=dataset.aligned, fingerprint=dataset.fingerprint)
    params = resolve_method_params("late-fusion", dataset, {"epochs": 1, "hidden": 16})[1]
    spec = RunSpec("late-fusion", params, "synthetic-small", {}, dataset.fingerprint, "random-missing",
                   make_protocol("random-missing", {}).get_params(), 5)
    options = ExecOptions(progress=False)
    first, protocol, _ = fit_method(spec, dataset, options)
    second, _, _ = fit_method(spec, altered, options)
    mask = protocol.mask(dataset.valid, "0.3", dataset.fingerprint)
    np.testing.assert_array_equal(first.predict(dataset.valid, mask), second.predict(dataset.valid, mask))
    assert first.training_curve() == second.training_curve()


# resume after kill -9 ------------------------------------------------------------------------------------------
def test_resume_after_kill_minus_9(test_plugin, tmp_path):
    out = tmp_path / "out"
    seeds = list(range(1, 9))
    args = ["run", "--method", "test-spy", "--dataset", "synthetic-small", "--seeds", ",".join(map(str, seeds)),
            "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "msabench.cli", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = out / "runs"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if runs.exists() and any((p / "run.json").exists() for p in runs.iterdir() if not p.name.startswith(".")):
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = ResultsStore(out)
    first_keys = store.keys()
    assert 1 <= len(first_keys) < len(seeds), "the process must be killed mid-grid"
    first = sorted(first_keys)[0]
    first_json = (runs / first / "run.json").read_text()

    assert run_cli(args) == 0

    keys = store.keys()
    assert len(keys) == len(seeds) and first_keys <= keys
    assert (runs / first / "run.json").read_text() == first_json  # finished runs are skipped, not redone
    assert not list(runs.glob(".tmp-*"))
    assert sorted(p.name for p in runs.iterdir()) == sorted(keys)
    rows = read_rows_csv(out / "results.csv")
    per_run = rows.groupby("run_id").size()
    assert set(per_run.index) == keys
    assert (per_run == 2 * N_CONDITIONS * N_MOSI_METRICS).all()
    assert not rows.duplicated(["run_id", "split", "condition", "metric"]).any()
    assert sorted(rows.drop_duplicates("run_id")["seed"]) == seeds


# determinism and identical masks ---------------------------------------------------------------------------------
def test_same_seed_same_numbers_different_seed_different(grid, tmp_path):
    again = tmp_path / "again"
    assert one_thread_main(GRID_ARGS + ["--out", str(again)]) == 0
    a, b = value_frame(grid_rows(grid)), value_frame(grid_rows(again))
    pd.testing.assert_frame_equal(a, b)
    for method in ("late-fusion", "test-spy"):
        sel = a[(a["method"] == method) & (a["metric"] == "MAE")]
        seed1 = sel[sel["seed"] == 1]["value"].to_numpy()
        seed2 = sel[sel["seed"] == 2]["value"].to_numpy()
        assert len(seed1) == len(seed2) == 2 * N_CONDITIONS
        assert not np.allclose(seed1, seed2)


def test_every_method_and_seed_sees_identical_masks(grid):
    rows = grid_rows(grid)
    assert rows["run_id"].nunique() == 4
    per_condition = rows.groupby(["split", "condition"])["mask_hash"].nunique()
    assert (per_condition == 1).all()
    hashes = rows.drop_duplicates(["split", "condition"]).set_index(["split", "condition"])["mask_hash"]
    assert hashes.nunique() == 2 * N_CONDITIONS  # the conditions really differ
    dataset = load_dataset_cached("synthetic-small")
    protocol = make_protocol("random-missing", {})
    for (split, condition), h in hashes.items():  # and they are the protocol's masks
        assert h == mask_hash(protocol.mask(dataset[split], condition, dataset.fingerprint))


# predictions reproduce the stored metrics ------------------------------------------------------------------------
def mosi_reference(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    nz = y != 0
    constant = np.all(p == p[0]) or np.all(y == y[0])
    return {
        "Has0_acc_2": accuracy_score(y >= 0, p >= 0),
        "Has0_F1": f1_score(y >= 0, p >= 0, average="weighted"),
        "Non0_acc_2": accuracy_score(y[nz] > 0, p[nz] > 0),
        "Non0_F1": f1_score(y[nz] > 0, p[nz] > 0, average="weighted"),
        "Mult_acc_5": np.mean(np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2))),
        "Mult_acc_7": np.mean(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3))),
        "MAE": np.mean(np.abs(p.astype(np.float64) - y.astype(np.float64))),
        "Corr": float("nan") if constant else pearsonr(p.astype(np.float64), y.astype(np.float64))[0],
    }


def test_saved_predictions_reproduce_the_metrics(grid):
    rows = grid_rows(grid)
    dataset = load_dataset_cached("synthetic-small")
    store = ResultsStore(grid)
    checked = 0
    for key in sorted(store.keys()):
        preds = store.predictions(key)
        assert set(preds.columns) >= {"run_id", "split", "condition", "sample_id", "label", "prediction"}
        assert (preds["run_id"] == key).all()
        for (split, condition), group in preds.groupby(["split", "condition"]):
            truth = dataset[split]
            assert group["sample_id"].tolist() == truth.ids
            np.testing.assert_array_equal(group["label"].to_numpy(np.float32), truth.labels.numpy())
            p = group["prediction"].to_numpy(np.float32)
            y = truth.labels.numpy()
            stored = rows[(rows["run_id"] == key) & (rows["split"] == split) & (rows["condition"] == condition)]
            stored = dict(zip(stored["metric"], stored["value"]))
            ref = mosi_reference(y, p)
            assert set(stored) == set(ref)
            for metric, value in ref.items():
                assert stored[metric] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (key, metric)
            checked += 1
    assert checked == 4 * 2 * N_CONDITIONS


# Dask ----------------------------------------------------------------------------------------------------------
def test_dask_local_cluster_gives_the_rows_of_the_sequential_run(grid, tmp_path):
    out = tmp_path / "dask"
    assert run_cli(GRID_ARGS + ["--out", str(out), "--scheduler", "local:2"]) == 0
    pd.testing.assert_frame_equal(value_frame(grid_rows(out)), value_frame(grid_rows(grid)))
    infos = [ResultsStore(out).run_info(k) for k in ResultsStore(out).keys()]
    assert all(info["torch_threads"] == 1 for info in infos)


def test_worker_processes_give_the_rows_of_the_sequential_run(grid, tmp_path):
    out = tmp_path / "pool"
    assert run_cli(GRID_ARGS + ["--out", str(out), "--workers", "2"]) == 0
    pd.testing.assert_frame_equal(value_frame(grid_rows(out)), value_frame(grid_rows(grid)))


# provenance of every row and run ---------------------------------------------------------------------------------
def test_rows_and_run_json_say_what_produced_them(grid):
    import hashlib
    import inspect

    import msabench
    from msabench.methods.late_fusion import LateFusion

    rows = grid_rows(grid)
    dataset = load_dataset_cached("synthetic-small")
    assert rows[["run_id", "split", "condition", "metric"]].notna().all().all()
    lf = rows[rows["method"] == "late-fusion"]
    defaults = {name: p.default for name, p in inspect.signature(LateFusion.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for params in lf["params"].unique():
        resolved = json.loads(params)
        assert resolved == {**defaults, **{k: resolved[k] for k in ("standardize", "grad_clip")}, "epochs": 2}
        expected_hash = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:12]
        assert set(lf[lf["params"] == params]["params_hash"]) == {expected_hash}
    assert set(lf["method_package"]) == {"msabench"} and set(lf["method_package_version"]) == {msabench.__version__}
    assert set(rows["dataset_fingerprint"]) == {dataset.fingerprint}
    assert set(rows["protocol"]) == {"random-missing"} and set(rows["protocol_version"].astype(str)) == {"1"}
    assert set(rows["torch_version"]) == {torch.__version__} and set(rows["device"]) == {"cpu"}
    assert set(rows["msabench_version"]) == {msabench.__version__}
    assert rows["git_commit"].fillna("").str.fullmatch(r"([0-9a-f]{40}(-dirty)?)?").all()
    assert (pd.to_datetime(rows["started"]) <= pd.to_datetime(rows["finished"])).all()
    assert (rows["train_seconds"] > 0).all() and rows["mask_hash"].str.fullmatch(r"[0-9a-f]{12}").all()
    for run_id in rows["run_id"].unique():
        info = json.loads((grid / "runs" / run_id / "run.json").read_text())
        first = rows[rows["run_id"] == run_id].iloc[0]
        assert info["seed"] == first["seed"] and info["params_hash"] == first["params_hash"]
        curve = info["training_curve"]
        if info["method"] == "late-fusion":
            assert [e["epoch"] for e in curve] == [0, 1]
            assert all(np.isfinite(e["train_loss"]) and np.isfinite(e["valid_score"]) for e in curve)


def test_durations_keep_microseconds(test_plugin, monkeypatch):
    """A fit and an evaluation of a few microseconds are stored as such, not rounded to 0 (the clock is faked, so
    nothing here depends on the machine's speed)."""
    from msabench import runner

    ticks = iter([100.0, 100.000004, 200.0, 200.000003])  # fit start, fit end, eval start, eval end
    monkeypatch.setattr(runner.time, "perf_counter", lambda: next(ticks))
    specs, datasets = plan(RunRequest(methods=["test-spy"], protocol="none", seeds=[1], epochs=1))
    record = runner.execute_run(specs[0], ExecOptions(device="cpu"), datasets["synthetic-small"])
    assert record.info["train_seconds"] == pytest.approx(4e-6, abs=1e-9)
    assert record.info["eval_seconds"] == pytest.approx(3e-6, abs=1e-9)
    assert (record.rows["train_seconds"] > 0).all()


# device, determinism switches, progress ----------------------------------------------------------------------------
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    from msabench.runner import resolve_device

    for cuda, mps, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        assert resolve_device("auto").type == expected
    with pytest.raises(RunError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(RunError, match="unknown device"):
        resolve_device("tpu-ish")


def test_deterministic_switches_are_set_before_any_training(test_plugin, tmp_path, monkeypatch):
    from msabench import runner

    events: list[str] = []
    monkeypatch.setattr(runner, "set_deterministic", lambda: events.append("switches"))
    fit = runner.fit_method
    monkeypatch.setattr(runner, "fit_method", lambda *a, **k: (events.append("fit"), fit(*a, **k))[1])
    assert run_cli(["run", "--method", "test-spy", "--dataset", "synthetic-small", "--seeds", "1", "--epochs", "1",
                    "--deterministic", "--device", "cpu", "--out", str(tmp_path), "--quiet"]) == 0
    assert events and events[0] == "switches" and "fit" in events


def test_set_deterministic_sets_the_cuda_switches(monkeypatch):
    from msabench.runner import set_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        set_deterministic()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def test_progress_bars_unless_quiet(tmp_path, capsys):
    args = ["run", "--method", "late-fusion", "--dataset", "synthetic-small", "--seeds", "1", "--epochs", "2",
            "--device", "cpu"]
    assert run_cli(args + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "runs:" in err and "valid=" in err and "epoch" in err  # the grid's bar and the run's epoch bar
    assert run_cli(args + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


# bad input: one line, exit 2, nothing trained ------------------------------------------------------------------
BAD_INPUTS = {
    "unknown method": (["--method", "no-such-method"], "unknown method"),
    "unknown protocol": (["--method", "test-spy", "--protocol", "no-such-protocol"], "unknown protocol"),
    "unknown dataset": (["--method", "test-spy", "--dataset", "no-such-dataset"], "unknown dataset"),
    "unknown hyperparameter": (["--method", "test-spy", "--set", "alpah=2"], "Did you mean 'alpha'"),
    "wrong type": (["--method", "test-spy", "--set", "alpha=big"], "should be a number"),
    "bad scheduler": (["--method", "test-spy", "--scheduler", "nowhere"], "tcp://HOST:8786"),
    "zero epochs": (["--method", "test-spy", "--epochs", "0"], "--epochs"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_before_training(case, test_plugin, spy_log, tmp_path, capsys):
    extra, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    code = run_cli(["run", "--seeds", "1", "--out", str(out), "--quiet"] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("msabench: error:") and message in err[0], err
    assert not spy_log.exists()
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


def test_unwritable_output_is_one_line_before_training(test_plugin, spy_log, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = run_cli(["run", "--method", "test-spy", "--seeds", "1", "--out", str(blocker / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--out" in err[0]
    assert not spy_log.exists()


# planning ------------------------------------------------------------------------------------------------------
def test_plan_keys_are_stable_and_unique(test_plugin):
    by_flag = plan(RunRequest(methods=["late-fusion"], seeds=[1, 2, 1], epochs=3))[0]
    by_set = plan(RunRequest(methods=["late-fusion"], seeds=[1, 2], params={"epochs": "3"}))[0]
    assert [s.seed for s in by_flag] == [1, 2]  # a repeated seed is one run
    assert [s.key for s in by_flag] == [s.key for s in by_set]  # --epochs 3 is --set epochs=3
    other = plan(RunRequest(methods=["late-fusion"], seeds=[1], params={"hidden": 32}, epochs=3))[0]
    assert other[0].key not in {s.key for s in by_flag}
    tagged = plan(RunRequest(methods=["late-fusion"], seeds=[1], epochs=3, tag="study"))[0]
    assert tagged[0].key != by_flag[0].key


@pytest.mark.parametrize("text, expected", [("local", ("local", 2)), ("local:3", ("local", 3)),
                                            ("tcp://10.0.0.5:8786", ("address", "tcp://10.0.0.5:8786")),
                                            ("node7:8786", ("address", "node7:8786"))])
def test_parse_scheduler(text, expected):
    assert parse_scheduler(text) == expected


@pytest.mark.parametrize("text", ["local:0", "local:x", "somewhere"])
def test_parse_scheduler_rejects(text):
    with pytest.raises(RunError):
        parse_scheduler(text)


# the benchmark scripts run end to end on CPU ---------------------------------------------------------------------
def load_script(name: str):
    import importlib.util

    module_name = f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_gpu_check_runs_on_cpu(capsys):
    gpu_check = load_script("gpu_check")
    code = gpu_check.main(["--device", "cpu", "--dataset", "synthetic-small", "--epochs", "1",
                           "--methods", "late-fusion"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and out[-1] == "PASS", out


def test_throughput_accounts_for_the_whole_run(capsys):
    throughput = load_script("throughput")
    from msabench.runner import ExecOptions as Options

    r = throughput.benchmark_method("late-fusion", "synthetic-small", 1, Options(progress=False), 3)
    assert r["epochs_trained"] == 1 and r["forward_s"] > 0 and r["backward_s"] > 0
    parts = r["model_s"] + sum(r["pieces_s"].values())
    assert 0 < parts <= r["total_s"] and r["untimed_s"] >= 0
    assert r["pieces_s"]["metrics (evaluation)"] > 0 and r["pieces_s"]["write run"] > 0
    # the timers are removed afterwards
    from msabench.store import ResultsStore as Store
    from msabench.training import TorchMethod as TM

    assert not hasattr(Store.save, "__wrapped__") and not hasattr(TM.prepare, "__wrapped__")
    assert not hasattr(torch.Tensor.backward, "__wrapped__")


def test_mmsa_speed_report_arithmetic():
    mmsa_speed = load_script("mmsa_speed")
    # MMSA 100 samples/s at 2 GFLOP/sample; msabench 150 samples/s at 3 GFLOP/sample (hand-computed below)
    rows = [{"model": "tfn", "method": "tfn",
             "mmsa": {"samples": 1000, "seconds": 10.0, "peak_rss_mb": 900.0, "flops_per_sample": 2e9},
             "msabench": {"samples": 1500, "seconds": 10.0, "peak_rss_mb": 300.0, "flops_per_sample": 3e9}}]
    text = mmsa_speed.report(rows, gemm=50.0)
    assert "| tfn / tfn | 100 | 150 | 1.5x | 900 | 300 | 0.33 | 10.0 | 10.0 |" in text
    # achieved: 100 * 2 = 200 and 150 * 3 = 450 GFLOP/s; 3x MMSA = 300 samples/s * 3 GFLOP = 900 GFLOP/s
    assert "| tfn / tfn | 2.0000 | 3.0000 | 200.0 | 450.0 | 900.0 |" in text
    assert "50.0 GFLOP/s" in text


def test_source_commit_is_dirty_only_for_code_changes(tmp_path):
    from msabench.runner import source_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "pkg").mkdir()
    (tmp_path / "results").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "results" / "results.csv").write_text("a\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert source_commit([tmp_path / "pkg"]) == head
    (tmp_path / "results" / "results.csv").write_text("a\nb\n")  # a run rewrote the results: still clean
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert source_commit([tmp_path / "pkg"]) == head
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert source_commit([tmp_path / "pkg"]) == head + "-dirty"
    assert source_commit([tmp_path.parent / "not-a-checkout-anywhere"]) == ""


def test_evaluation_batches_reuse_buffers_without_changing_predictions():
    """raw_outputs masks evaluation chunks into reused buffers; an output that is a view of its batch (here the
    first feature of the first text frame) must still come out per sample, as computed by hand."""
    from msabench.data.base import Split, Task
    from msabench.training import TorchMethod

    class FirstFeature(torch.nn.Module):
        def forward(self, batch):
            return batch.features["l"][:, 0, 0]  # a view of the (reused) batch tensor

    class Probe(TorchMethod):
        def eval_batches(self, split):
            return [slice(s, min(s + 3, len(split))) for s in range(0, len(split), 3)]  # 4 chunks, last short

    gen = torch.Generator().manual_seed(0)
    n, t = 10, 4
    feats = {m: torch.randn(n, t, d, generator=gen) for m, d in (("l", 5), ("a", 2), ("v", 3))}
    split = Split("test", feats, {m: torch.full((n,), t) for m in feats}, torch.zeros(n), [str(i) for i in range(n)])
    mask = {m: torch.rand(n, t, generator=gen) > 0.5 for m in feats}
    method = Probe(standardize=False)
    method.device_, method.task_, method.amp_, method.scaler_ = torch.device("cpu"), Task("regression", "mosi"), False, None
    prepared = method.prepare(split)
    first = method.raw_outputs(FirstFeature(), prepared, mask).numpy()
    again = method.raw_outputs(FirstFeature(), prepared, {m: ~x for m, x in mask.items()}).numpy()
    expected = (feats["l"][:, 0, 0] * mask["l"][:, 0]).numpy()
    expected_again = (feats["l"][:, 0, 0] * ~mask["l"][:, 0]).numpy()
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(again, expected_again)
    assert prepared.eval_buffers["l"].shape == (3, t, 5)  # one chunk-sized buffer, reused


def test_throughput_median_of_repeats():
    throughput = load_script("throughput")
    runs = [{"method": "m", "epochs_trained": 2, "fit_s": 1.0, "samples_per_s": sps, "eval_test_per_epoch": ev,
             "eval_all_per_epoch": ev + 0.5, "outside_model_share": share}
            for sps, ev, share in ((100.0, 0.9, 0.12), (300.0, 1.1, 0.08), (200.0, 1.3, 0.10))]
    r = throughput.median_run(runs)
    # medians by hand: samples/s 200, eval 1.1 / 1.6, share 0.10 (the third run's breakdown is kept)
    assert (r["samples_per_s"], r["eval_test_per_epoch"], r["eval_all_per_epoch"], r["outside_model_share"]) == \
        (200.0, 1.1, 1.6, 0.10)
    assert r["ranges"]["samples_per_s"] == (100.0, 300.0) and len(r["runs"]) == 3
    assert "| m, median of 3 | 2 | 1.0 | 200 (100–300) | 1.10 (0.90–1.30) | 1.60 (1.40–1.80) | 10.0% (8.0–12.0) |" \
        in throughput.markdown([r])
    assert throughput.median_run(runs[:1]) is runs[0]


def test_mmsa_speed_overrides_are_per_model_and_checked():
    mmsa_speed = load_script("mmsa_speed")
    got = mmsa_speed.parse_overrides(["tfn:post_fusion_dropout=0", "tfn:text_dropout=0.1", "mult:attn_dropout=0"])
    assert got == {"tfn": {"post_fusion_dropout": 0, "text_dropout": 0.1}, "mult": {"attn_dropout": 0}}
    for bad in ("post_fusion_dropout=0", "nope:dropout=0", "tfn:dropout"):
        with pytest.raises(ValueError, match="MODEL:key=value"):
            mmsa_speed.parse_overrides([bad])
