"""msabench tune: resumable studies, validation-only tuning, an exact global budget across workers, retries.

Tiny everything: dataset synthetic-small, late-fusion, 1-2 epochs, 2-4 trials.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from msabench import tune as tune_mod
from msabench import tune_storage
from msabench.cli import load_config, main
from msabench.data.base import DatasetSource, MultimodalDataset
from msabench.methods.late_fusion import LateFusion
from msabench.metrics import compute_metrics, selection_score
from msabench.plugins import DATASETS, METHODS
from msabench.runner import ExecOptions, RunSpec, fit_method, load_dataset_cached, make_protocol
from msabench.tune import TuneRequest, budget_lock, claim_trial, make_storage, tune

REPO = Path(__file__).resolve().parents[1]
BASE_ARGS = ["tune", "--method", "late-fusion", "--protocol", "random-missing", "--dataset", "synthetic-small",
             "--pruner", "none", "--threads", "1", "--quiet"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared machine: one intra-op thread is many times faster than spinning several."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=make_storage(url)).get_trials()


def _worker_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _check_exact_budget(trials: list[optuna.trial.FrozenTrial], budget: int) -> None:
    assert sorted(t.number for t in trials) == list(range(budget)), [t.number for t in trials]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * budget, [(t.number, t.state) for t in trials]


# a study: runs, resumes, its value is the selected model's validation score, its config runs -------------------
def test_study_resumes_and_its_config_runs(tmp_path, capsys):
    out = tmp_path / "tune"
    study = "st-late-fusion"
    args = BASE_ARGS + ["--epochs", "2", "--out", str(out), "--study", "st"]
    assert main(args + ["--trials", "2"]) == 0
    printed = capsys.readouterr().out
    assert "equal budget" in printed and "2 trials" in printed and "epoch cap 2" in printed
    url = f"sqlite:///{out / 'optuna.db'}"
    first = _trials(url, study)
    assert [t.state for t in first] == [TrialState.COMPLETE] * 2

    assert main(args + ["--trials", "4", "--final-seeds", "1111"]) == 0
    trials = _trials(url, study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for before, after in zip(first, trials[:2]):  # not repeated: the same records, untouched
        assert (after.number, after.params, after.value, after.datetime_complete) == \
               (before.number, before.params, before.value, before.datetime_complete)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4

    # the value of a trial is the validation score of the model that model selection keeps: retrain the best
    # trial's config and score the restored model by hand on the validation conditions
    best = max(trials, key=lambda t: t.value)
    config = yaml.safe_load((out / "late-fusion.best.yaml").read_text())
    assert set(config) == {"method", "params", "dataset", "protocol", "epochs", "study"}
    assert config["study"] == study and config["epochs"] == 2 and config["method"] == "late-fusion"
    assert {k: config["params"][k] for k in best.params} == pytest.approx(best.params)
    load_config(str(out / "late-fusion.best.yaml"))  # the keys msabench run accepts
    dataset = load_dataset_cached("synthetic-small")
    protocol = make_protocol("random-missing", {})
    spec = RunSpec("late-fusion", config["params"], "synthetic-small", {}, dataset.fingerprint, "random-missing",
                   protocol.get_params(), 1111, 2)
    model, _, _ = fit_method(spec, dataset, ExecOptions(progress=False))
    labels = dataset.valid.labels.numpy()
    scores = [selection_score(dataset.task, compute_metrics(dataset.task, model.predict(dataset.valid, mask), labels))
              for mask in protocol.masks(dataset.valid, dataset.fingerprint,
                                         protocol.validation_conditions()).values()]
    assert best.value == pytest.approx(float(np.mean(scores)), rel=1e-5, abs=1e-6)
    assert best.value == pytest.approx(max(best.intermediate_values.values()))

    # --final-seeds: the best config retrained through the runner, test rows tagged with the study name
    rows = pd.read_csv(out / "results.csv")
    assert set(rows["tag"]) == {study} and set(rows["seed"]) == {1111} and "test" in set(rows["split"])

    # msabench run --config accepts the written file
    run_out = tmp_path / "run"
    assert main(["run", "--config", str(out / "late-fusion.best.yaml"), "--seeds", "1111", "--epochs", "1",
                 "--out", str(run_out), "--quiet"]) == 0
    ran = pd.read_csv(run_out / "results.csv")
    assert set(ran["tag"]) == {study} and set(ran["method"]) == {"late-fusion"} and set(ran["epochs"]) == {1}


# the test split is never read while tuning ----------------------------------------------------------------------
class SplitReadError(AssertionError):
    pass


class _GuardedSplits(dict):
    """Splits whose ``test`` entry raises on every read (and logs the attempt)."""

    reads: list[str] = []

    def _guard(self, key):
        if key == "test":
            self.reads.append("test")
            raise SplitReadError("the test split was read")

    def __getitem__(self, key):
        self._guard(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._guard(key)
        return super().get(key, default)

    def values(self):
        self._guard("test")

    def items(self):
        self._guard("test")


class NoTestSource(DatasetSource):
    name = "test-tune-no-test"

    def load(self) -> MultimodalDataset:
        real = load_dataset_cached("synthetic-small")
        return MultimodalDataset(real.name, real.task, _GuardedSplits(real.splits), real.aligned, dict(real.info),
                                 fingerprint=real.fingerprint)


class SpyLateFusion(LateFusion):
    name = "test-tune-spy"
    calls: list[tuple[str, ...]] = []

    def fit(self, train, valid, schedule, context):
        SpyLateFusion.calls.append(("fit", train.name, valid.name))
        return super().fit(train, valid, schedule, context)

    def predict(self, split, mask):
        SpyLateFusion.calls.append(("predict", split.name))
        return super().predict(split, mask)


def test_tuning_never_reads_the_test_split(tmp_path):
    METHODS.register("test-tune-spy", SpyLateFusion)
    DATASETS.register("test-tune-no-test", NoTestSource)
    SpyLateFusion.calls.clear()
    _GuardedSplits.reads.clear()
    request = TuneRequest(methods=["test-tune-spy"], dataset="test-tune-no-test", protocol="random-missing",
                          trials=2, epochs=1, pruner="none", out=str(tmp_path))
    [result] = tune(request, progress=False)
    assert (result.complete, result.failed) == (2, 0)
    assert SpyLateFusion.calls == [("fit", "train", "valid")] * 2
    assert _GuardedSplits.reads == []
    # the guard does fire: the final evaluation (which must read the test split) trips it
    config = yaml.safe_load((tmp_path / "test-tune-spy.best.yaml").read_text())
    with pytest.raises(Exception, match="the test split was read"):  # the runner may wrap the error
        tune_mod.final_evaluation(config, [1111], str(tmp_path / "final"), ExecOptions(progress=False))
    assert _GuardedSplits.reads == ["test"]


# failures are recorded and retried once; a dead worker's trial is failed and retried --------------------------------
class FailOnce(LateFusion):
    name = "test-tune-fail-once"
    failures = 0

    def fit(self, train, valid, schedule, context):
        if FailOnce.failures == 0:
            FailOnce.failures += 1
            raise RuntimeError("boom")
        return super().fit(train, valid, schedule, context)


class AlwaysFail(LateFusion):
    name = "test-tune-always-fail"

    def fit(self, train, valid, schedule, context):
        raise RuntimeError("always")


def test_failed_trials_are_recorded_and_retried_once(tmp_path):
    METHODS.register("test-tune-fail-once", FailOnce)
    METHODS.register("test-tune-always-fail", AlwaysFail)
    FailOnce.failures = 0
    request = TuneRequest(methods=["test-tune-fail-once", "test-tune-always-fail"], dataset="synthetic-small",
                          protocol="random-missing", trials=2, epochs=1, pruner="none", out=str(tmp_path))
    once, always = tune(request, progress=False)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    t = _trials(url, once.study)
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert t[0].user_attrs["error"] == "RuntimeError: boom"
    assert t[1].system_attrs["failed_trial"] == 0 and t[1].params == t[0].params  # the retry: same config
    assert (once.complete, once.failed) == (2, 1)
    t = _trials(url, always.study)  # budget 2: two trials, each retried once, then given up
    assert [x.state for x in t] == [TrialState.FAIL] * 4
    assert [x.system_attrs.get("failed_trial") for x in t] == [None, 0, None, 2]
    assert all(x.user_attrs["error"] == "RuntimeError: always" for x in t)
    assert always.best_value is None and not (tmp_path / "test-tune-always-fail.best.yaml").exists()


class InterruptOnce(LateFusion):
    name = "test-tune-interrupt-once"
    interrupted = False

    def fit(self, train, valid, schedule, context):
        if not InterruptOnce.interrupted:
            InterruptOnce.interrupted = True
            raise KeyboardInterrupt
        return super().fit(train, valid, schedule, context)


def test_an_interrupted_trial_runs_again_on_resume(tmp_path):
    METHODS.register("test-tune-interrupt-once", InterruptOnce)
    InterruptOnce.interrupted = False
    request = TuneRequest(methods=["test-tune-interrupt-once"], dataset="synthetic-small", protocol="random-missing",
                          trials=2, epochs=1, pruner="none", study="ki", out=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        tune(request, progress=False)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    t = _trials(url, "ki-test-tune-interrupt-once")
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.WAITING]
    assert t[0].user_attrs["error"] == "interrupted" and t[1].params == t[0].params
    [result] = tune(request, progress=False)  # the same command again
    t = _trials(url, "ki-test-tune-interrupt-once")
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert t[1].params == t[0].params and result.complete == 2


def test_a_trial_of_a_dead_worker_is_failed_and_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(tune_storage, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(tune_storage, "GRACE_PERIOD", 1)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="dead-late-fusion", storage=make_storage(url), direction="maximize")
    with pytest.warns(UserWarning, match="Heartbeat"):
        orphan = study.ask()  # a worker that asked a trial, beat once, then was killed
    study._storage.record_heartbeat(orphan._trial_id)
    time.sleep(2.5)
    request = TuneRequest(methods=["late-fusion"], dataset="synthetic-small", protocol="random-missing", trials=1,
                          epochs=1, pruner="none", study="dead", out=str(tmp_path))
    [result] = tune(request, progress=False)
    t = _trials(url, "dead-late-fusion")
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.COMPLETE]
    assert t[1].system_attrs["failed_trial"] == 0 and "heartbeat" in t[1].user_attrs["retry_reason"]
    assert result.complete == 1


def test_journal_trial_of_a_killed_worker_process_is_failed_and_retried(tmp_path):
    import socket

    url = f"journal:///{tmp_path / 'journal.log'}"
    study = optuna.create_study(study_name="gone-late-fusion", storage=make_storage(url), direction="maximize")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid no longer exists
    orphan = claim_trial(study, 5, contextlib.nullcontext())
    alive = claim_trial(study, 5, contextlib.nullcontext())  # claimed by this (living) process
    other_host = claim_trial(study, 5, contextlib.nullcontext())
    study._storage.set_trial_system_attr(orphan._trial_id, "worker", {"host": socket.gethostname(), "pid": dead.pid})
    study._storage.set_trial_system_attr(other_host._trial_id, "worker", {"host": "elsewhere", "pid": dead.pid})
    tune_mod.fail_stale(study)
    t = _trials(url, "gone-late-fusion")
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING, TrialState.WAITING]
    assert t[3].system_attrs["failed_trial"] == orphan.number and str(dead.pid) in t[3].user_attrs["retry_reason"]
    assert t[1].number == alive.number
    tune_mod.fail_stale(study)  # nothing more to do
    assert len(_trials(url, "gone-late-fusion")) == 4


# the global budget is exact under contention ----------------------------------------------------------------------
def _race(url: str, study_name: str, budget: int, n_workers: int, locked: bool) -> list[optuna.trial.FrozenTrial]:
    """``n_workers`` threads, each with its own storage connection, claim trials until the budget is used; every
    ask is slowed down (or, without the lock, held until every worker has counted) to widen the race window."""
    optuna.create_study(study_name=study_name, storage=make_storage(url), direction="maximize")
    barrier = threading.Barrier(n_workers, timeout=30)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            storage = make_storage(url)
            study = optuna.load_study(study_name=study_name, storage=storage)
            ask = study.ask
            first = [True]

            def slow_ask(*a, **k):
                if not locked and first[0]:
                    first[0] = False
                    barrier.wait()  # everyone has counted before anyone asks
                time.sleep(0.01)
                return ask(*a, **k)

            study.ask = slow_ask
            lock = budget_lock(storage, url, study_name) if locked else contextlib.nullcontext()
            while (trial := claim_trial(study, budget, lock)) is not None:
                study.tell(trial, 1.0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n_workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    return _trials(url, study_name)


def _pg_url() -> str | None:
    url = os.environ.get("MSABENCH_TEST_PG_URL")
    if not url and os.environ.get("CI"):
        pytest.fail("MSABENCH_TEST_PG_URL is not set: under CI, run `source .ci/postgres.sh` before pytest")
    return url


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgres"])
def test_claims_respect_the_budget_under_contention(tmp_path, kind):
    if kind == "postgres":
        url = _pg_url()
        if not url:
            pytest.skip("MSABENCH_TEST_PG_URL not set (source .ci/postgres.sh)")
    else:
        url = f"journal:///{tmp_path / 'j.log'}" if kind == "journal" else f"sqlite:///{tmp_path / 'o.db'}"
    name = f"race-{uuid.uuid4().hex[:8]}"
    _check_exact_budget(_race(url, name, budget=9, n_workers=4, locked=True), 9)
    # without the lock the same workers overshoot (each of the 4 counted 0 before any asked): the test can tell
    assert len(_race(url, name + "-nolock", budget=2, n_workers=4, locked=False)) >= 4


def _two_workers(storage: str, study: str, out: Path, trials: int) -> None:
    args = [sys.executable, "-m", "msabench.cli"] + BASE_ARGS + [
        "--trials", str(trials), "--epochs", "1", "--storage", storage, "--study", study]
    procs = [subprocess.Popen(args + ["--out", str(out / f"w{i}")], env=_worker_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs


def test_two_processes_share_one_journal_study(tmp_path):
    url = f"journal:///{tmp_path / 'study.log'}"
    _two_workers(url, "shared", tmp_path, trials=4)
    trials = _trials(url, "shared-late-fusion")
    _check_exact_budget(trials, 4)
    assert all(not tune_mod.is_retry(t) for t in trials)


@pytest.mark.postgres
def test_two_machines_share_one_postgres_study(tmp_path):
    url = _pg_url()
    if not url:
        pytest.skip("MSABENCH_TEST_PG_URL not set (source .ci/postgres.sh)")
    study = f"pg-{uuid.uuid4().hex[:8]}"
    _two_workers(url, study, tmp_path, trials=4)
    trials = _trials(url, f"{study}-late-fusion")
    _check_exact_budget(trials, 4)


def test_the_trial_value_is_the_last_stage_best():
    stages = [("teacher", -0.5), ("teacher", -0.2), ("student", -0.9), ("student", -0.7), ("student", float("nan"))]
    curve = [{"epoch": i, "valid_score": v, "stage": st} for i, (st, v) in enumerate(stages)]
    assert tune_mod.selected_score(curve, []) == -0.7
    assert tune_mod.selected_score([], [-1.0, float("-inf"), -0.4, -0.6]) == -0.4


def test_two_studies_of_one_method_in_one_directory_keep_both_best_configs(tmp_path):
    common = dict(methods=["late-fusion"], dataset="synthetic-small", protocol="random-missing", trials=1, epochs=1,
                  pruner="none", out=str(tmp_path))
    tune(TuneRequest(**common, study="wide", params={"hidden": 16}), progress=False)
    tune(TuneRequest(**common, study="narrow", params={"hidden": 4}), progress=False)
    wide = yaml.safe_load((tmp_path / "wide-late-fusion.best.yaml").read_text())
    narrow = yaml.safe_load((tmp_path / "narrow-late-fusion.best.yaml").read_text())
    assert (wide["study"], wide["params"]["hidden"]) == ("wide-late-fusion", 16)
    assert (narrow["study"], narrow["params"]["hidden"]) == ("narrow-late-fusion", 4)
    assert yaml.safe_load((tmp_path / "late-fusion.best.yaml").read_text()) == narrow  # the latest study's
