"""Hyperparameter tuning with Optuna: equal budgets, validation split only, resumable, several workers.

One study per method (``{study}-{method}``), each with the same global trial budget and the same epoch cap. A
trial samples the method's :meth:`~msabench.method.Method.search_space`, trains through
:func:`msabench.runner.fit_method` on the train split and scores on the validation split under the protocol's
validation conditions (the best epoch's score, the one model selection keeps). The test split is never read while
tuning; only ``final_seeds`` retrain the best configuration through the normal runner and evaluate it once.

The trial budget is global over every worker that runs the same command against one storage. Before creating a
trial a worker takes a lock (a file lock for SQLite and journal files, an advisory lock for PostgreSQL and MySQL),
counts the study's trials and creates one only while fewer than the budget exist, so two workers never overshoot.
Retries of failed trials do not count towards the budget; each failed trial is retried once.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

from msabench.masks import derive_seed
from msabench.params import ParameterError
from msabench.registry import RegistryError
from msabench.outputs import atomic_write_text, clean_stale_temps
from msabench.runner import (
    ExecOptions,
    RunRequest,
    RunSpec,
    fit_method,
    load_dataset_cached,
    make_protocol,
    resolve_method_params,
    run_grid,
)
from msabench.tune_storage import (  # the storage layer (locks, retries, heartbeats), split out of this module
    TuneError,
    budget_lock,
    claim_trial,
    fail_stale,
    heartbeat,
    is_retry,
    make_storage,
    requeue,
    state_counts,
    storage_url,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

PRUNERS = ("hyperband", "median", "none")
ATTR_KEY = "msabench"  # study user attribute holding what the study tunes


@dataclass
class TuneRequest:
    """What ``msabench tune`` asks for. ``trials`` is the global budget of each method's study."""

    methods: list[str]
    dataset: str
    protocol: str
    trials: int
    timeout: float | None = None
    storage: str | None = None
    study: str | None = None
    seed: int = 1111
    epochs: int | None = None
    pruner: str = "hyperband"
    out: str = "tune"
    final_seeds: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    protocol_params: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)

    def study_name(self, method: str) -> str:
        base = self.study or f"{self.dataset}-{self.protocol}".replace(":", "_").replace("/", "_")
        return f"{base}-{method}"


@dataclass
class TuneResult:
    """One method's study after this process finished with it."""

    method: str
    study: str
    best_value: float | None
    best_params: dict[str, Any]  # the best trial's resolved hyperparameters
    tuned: list[str]  # the names Optuna sampled
    best_trial: int | None
    complete: int
    pruned: int
    failed: int
    running: int
    wall_seconds: float
    config_path: Path | None = None
    final_rows: pd.DataFrame | None = None


# samplers, pruners ---------------------------------------------------------------------------------------------
def make_sampler(seed: int, trial_number: int | None = None) -> "optuna.samplers.BaseSampler":
    """TPE seeded by ``seed`` (and the trial number, so that a resumed study or a second worker draws the same
    way as one uninterrupted process instead of repeating the first worker's draws)."""
    import optuna

    s = seed if trial_number is None else derive_seed(seed, "tpe", trial_number) % 2**32
    return optuna.samplers.TPESampler(seed=s)


def make_pruner(name: str, epochs: int | None) -> "optuna.pruners.BasePruner":
    """Per-epoch pruning: Hyperband over 1..epochs (default), the median rule, or none."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs or "auto", reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"unknown pruner {name!r}: use one of {', '.join(PRUNERS)}")


# the objective --------------------------------------------------------------------------------------------------
@dataclass
class _Target:
    """Everything a trial of one method needs, resolved once."""

    method: str
    dataset_spec: str
    dataset: Any
    protocol: str
    protocol_params: dict[str, Any]
    dataset_options: dict[str, Any]
    fixed_params: dict[str, Any]
    epochs: int | None
    seed: int
    options: ExecOptions


def trial_spec(target: _Target, suggested: dict[str, Any], tag: str = "") -> RunSpec:
    """The run spec of one trial: defaults ← suggested ← fixed (``--set``) ← the epoch cap, resolved like the
    runner does."""
    try:
        _, params = resolve_method_params(target.method, target.dataset, {**suggested, **target.fixed_params},
                                          target.epochs)
    except (ParameterError, TypeError, ValueError) as exc:
        raise TuneError(f"search space of {target.method}: {exc}") from None
    return RunSpec(target.method, params, target.dataset_spec, dict(target.dataset_options),
                   target.dataset.fingerprint, target.protocol, dict(target.protocol_params), target.seed,
                   target.epochs, tag)


def objective(trial: "optuna.Trial", target: _Target) -> float:
    """Train one sampled configuration, reporting each epoch's validation score to the pruner; return the best
    epoch's score of the final training stage (the model that model selection keeps)."""
    import optuna

    from msabench.plugins import METHODS

    suggested = METHODS.get(target.method).search_space(trial)
    spec = trial_spec(target, suggested)
    trial.set_user_attr("params", _json_safe(spec.params))
    scores: list[float] = []

    def on_epoch(epoch: int, train_loss: float, score: float) -> None:
        scores.append(score)
        if math.isfinite(score):  # steps count epochs over all stages, so a two-stage method never repeats one
            trial.report(score, len(scores))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (validation score {score:.4f})")

    method, _, _ = fit_method(spec, target.dataset, target.options, on_epoch=on_epoch)
    best = selected_score(method.training_curve(), scores)
    if not math.isfinite(best):
        raise RuntimeError("no finite validation score in any epoch")
    return best


def selected_score(curve: list[dict[str, Any]], scores: list[float]) -> float:
    """The best validation score of the last training stage in ``curve``; the best of ``scores`` without one."""
    if curve:
        last = curve[-1].get("stage", "")
        scores = [r["valid_score"] for r in curve if r.get("stage", "") == last]
    finite = [x for x in scores if math.isfinite(x)]
    return max(finite) if finite else -math.inf


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_trial(study: "optuna.Study", trial: "optuna.Trial", target: _Target) -> "optuna.trial.TrialState":
    """Run and tell one claimed trial; a failure is recorded (user attr ``error``) and queued once more."""
    import optuna
    from optuna.trial import TrialState

    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    state, value = TrialState.COMPLETE, None
    with heartbeat(study, trial):
        try:
            value = objective(trial, target)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            frozen = study.tell(trial, state=TrialState.FAIL)
            requeue(study, frozen, "interrupted", counts=False)
            raise
        except TuneError as exc:
            trial.set_user_attr("error", str(exc))
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as exc:
            log.warning("trial %d of %s failed: %s: %s", trial.number, study.study_name, type(exc).__name__, exc)
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            state = TrialState.FAIL
    frozen = study.tell(trial, value) if state == TrialState.COMPLETE else study.tell(trial, state=state)
    if state == TrialState.FAIL:
        requeue(study, frozen, "failed")
    elif state == TrialState.COMPLETE:
        log.info("%s trial %d: %.4f %s", study.study_name, trial.number, value, trial.params)
    return state


# one study ------------------------------------------------------------------------------------------------------
def open_study(name: str, storage: Any, request: TuneRequest, info: dict[str, Any]) -> "optuna.Study":
    """Create or load the study; refuse one created for another dataset, protocol, or epoch cap."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=make_sampler(request.seed), pruner=make_pruner(request.pruner, info["epochs"]),
                                load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise TuneError(f"study {name!r} exists and minimises; use another --study name")
    stored = study.user_attrs.get(ATTR_KEY)
    if stored is None:
        study.set_user_attr(ATTR_KEY, info)
    else:
        keys = ("method", "dataset_fingerprint", "protocol", "protocol_params", "epochs", "fixed_params")
        differ = [k for k in keys if stored.get(k) != info.get(k)]
        if differ:
            raise TuneError(f"study {name!r} in this storage tunes another setting ({', '.join(differ)} differ: "
                            f"{ {k: stored.get(k) for k in differ} }); use another --study name or storage")
    return study


def tune_method(target: _Target, request: TuneRequest, storage: Any, url: str, progress: bool = True,
                on_trial: Callable[["optuna.Study", "optuna.trial.TrialState"], None] | None = None) -> TuneResult:
    """Run trials of one method's study until its global budget (or ``request.timeout``) is used up."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    name = request.study_name(target.method)
    info = {"method": target.method, "dataset": target.dataset_spec, "dataset_fingerprint": target.dataset.fingerprint,
            "protocol": target.protocol, "protocol_params": target.protocol_params, "epochs": target.epochs,
            "seed": target.seed, "fixed_params": target.fixed_params}
    study = open_study(name, storage, request, _json_safe(info))
    lock = budget_lock(storage, url, name)
    start = time.perf_counter()
    deadline = start + request.timeout if request.timeout else math.inf

    def finished() -> int:
        trials = study.get_trials(deepcopy=False)
        done = sum(1 for t in trials if not is_retry(t) and t.state.is_finished())
        return min(done, request.trials)

    bar = tqdm(total=request.trials, initial=finished(), desc=name, unit="trial", disable=not progress)
    try:
        while time.perf_counter() < deadline:
            fail_stale(study)
            trial = claim_trial(study, request.trials, lock)
            if trial is None:
                break
            study.sampler = make_sampler(request.seed, trial.number)
            state = run_trial(study, trial, target)
            gc.collect()
            if on_trial is not None:
                on_trial(study, state)
            bar.n = finished()
            with contextlib.suppress(ValueError):
                bar.set_postfix(best=f"{study.best_value:.4f}")
            bar.refresh()
    finally:
        bar.close()
    counts = state_counts(study)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value) if complete else None
    if counts["running"] or counts["waiting"]:
        log.warning("%s: %d trials still running and %d waiting in other workers; the best configuration is "
                    "taken from the finished ones (run the same command again afterwards to refresh it)",
                    name, counts["running"], counts["waiting"])
    return TuneResult(method=target.method, study=name, best_value=None if best is None else float(best.value),
                      best_params=dict(best.user_attrs.get("params", {})) if best else {},
                      tuned=sorted(best.params) if best else [], best_trial=best.number if best else None,
                      complete=counts["complete"],
                      pruned=counts["pruned"], failed=counts["fail"], running=counts["running"],
                      wall_seconds=time.perf_counter() - start)


# configs and the final evaluation ---------------------------------------------------------------------------------
def best_config(target: _Target, result: TuneResult, request: TuneRequest) -> dict[str, Any]:
    """The ``msabench run --config`` mapping of the best trial: its full resolved hyperparameters, and the
    protocol parameters and dataset options given for tuning."""
    config: dict[str, Any] = {
        "method": target.method,
        "params": dict(result.best_params),
        "dataset": target.dataset_spec,
        "protocol": target.protocol,
        "epochs": target.epochs,
        "study": result.study,
    }
    if request.protocol_params:
        config["protocol_params"] = dict(request.protocol_params)
    if request.dataset_options:
        config["dataset_options"] = dict(request.dataset_options)
    return config


def write_config(config: dict[str, Any], path: Path, result: TuneResult) -> Path:
    import yaml

    header = (f"# best of study {result.study} (trial {result.best_trial}): validation score "
              f"{result.best_value:.6g} "
              f"({result.complete} complete, {result.pruned} pruned, {result.failed} failed trials)\n"
              f"# tuned: {', '.join(result.tuned) or '(nothing)'}\n"
              f"# use: msabench run --config {path.name}\n")
    return atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False))


def final_evaluation(config: dict[str, Any], seeds: list[int], out: str, options: ExecOptions) -> pd.DataFrame:
    """Retrain the best configuration on ``seeds`` and evaluate it on the test split once (normal runner); the
    rows carry the study name in their ``tag`` column."""
    request = RunRequest(methods=[config["method"]], datasets=[config["dataset"]], protocol=config["protocol"],
                         seeds=list(seeds), params=config["params"],
                         protocol_params=config.get("protocol_params", {}),
                         dataset_options=config.get("dataset_options", {}), epochs=config["epochs"],
                         tag=config["study"])
    rows = run_grid(request, out=out, options=options)
    return rows[rows["tag"] == config["study"]] if not rows.empty else rows


# the whole request ----------------------------------------------------------------------------------------------
def prepare(request: TuneRequest, options: ExecOptions | None = None) -> list[_Target]:
    """Check names, the dataset and every method's support for the task; fix one epoch cap for all methods."""
    if request.trials < 1:
        raise TuneError("--trials must be at least 1")
    if request.pruner not in PRUNERS:
        raise TuneError(f"unknown pruner {request.pruner!r}: use one of {', '.join(PRUNERS)}")
    if not request.methods:
        raise TuneError("no method given: use --method NAME[,NAME...]")
    if len(set(request.methods)) != len(request.methods):
        raise TuneError(f"a method is named twice in {request.methods}")
    try:
        protocol = make_protocol(request.protocol, request.protocol_params)
        dataset = load_dataset_cached(request.dataset, request.dataset_options)
        resolved = {}
        for m in request.methods:
            cls, params = resolve_method_params(m, dataset, request.params, request.epochs)
            cls(**params)
            cls.check_supported(dataset.task, dataset.aligned)
            resolved[m] = params
    except (RegistryError, ParameterError, OSError, TypeError, ValueError) as exc:
        raise TuneError(str(exc)) from None
    epochs = request.epochs
    if epochs is None:
        defaults = [p["epochs"] for p in resolved.values() if isinstance(p.get("epochs"), int)]
        epochs = max(defaults) if defaults else None
    options = options or ExecOptions()
    trial_options = ExecOptions(device=options.device, amp=options.amp, deterministic=options.deterministic,
                                progress=False)
    return [_Target(m, request.dataset, dataset, request.protocol, protocol.get_params(),
                    dict(request.dataset_options), dict(request.params), epochs, request.seed, trial_options)
            for m in request.methods]


def config_names(request: TuneRequest, method: str) -> list[str]:
    """``METHOD.best.yaml`` (the latest study of the method); with an explicit ``--study`` also
    ``STUDY-METHOD.best.yaml``, so that two studies of one method tuned into the same directory (e.g. CorrKD with
    and without distillation) keep both best configs."""
    return [f"{method}.best.yaml"] + ([f"{request.study_name(method)}.best.yaml"] if request.study else [])


def tune(request: TuneRequest, options: ExecOptions | None = None, progress: bool = True,
         targets: list[_Target] | None = None) -> list[TuneResult]:
    """Tune every method of ``request`` with the same budget; write ``{out}/{method}.best.yaml``; with
    ``final_seeds`` retrain each best configuration and evaluate it on the test split (rows in ``out``)."""
    options = options or ExecOptions(progress=progress)
    targets = targets if targets is not None else prepare(request, options)
    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    clean_stale_temps(request.out)  # best.yaml temporaries of ended processes
    url = storage_url(request.storage, request.out)
    storage = make_storage(url)
    results = []
    for target in targets:
        result = tune_method(target, request, storage, url, progress=progress)
        if result.best_value is None:
            log.warning("%s: no complete trial, so no best configuration", result.study)
        else:
            config = best_config(target, result, request)
            for name in reversed(config_names(request, target.method)):  # config_path: METHOD.best.yaml
                result.config_path = write_config(config, Path(request.out) / name, result)
            if request.final_seeds:
                final_options = ExecOptions(device=options.device, amp=options.amp, threads=options.threads,
                                            deterministic=options.deterministic, progress=progress)
                result.final_rows = final_evaluation(config, request.final_seeds, request.out, final_options)
        results.append(result)
    return results


def budget_statement(request: TuneRequest, targets: list[_Target]) -> str:
    """The equal-budget line printed before tuning."""
    epochs = targets[0].epochs if targets else request.epochs
    names = ", ".join(request.methods)
    limit = f", at most {request.timeout:g} s each" if request.timeout else ""
    return (f"equal budget: {names} each get {request.trials} trials (global over all workers of a study{limit}), "
            f"epoch cap {epochs if epochs is not None else 'method default'}, pruner {request.pruner}, "
            f"TPE seed {request.seed}; selection on the validation split only")


def summary_frame(results: list[TuneResult]) -> pd.DataFrame:
    """Method, best value, trials complete / pruned / failed, wall time."""
    return pd.DataFrame([{
        "method": r.method, "study": r.study,
        "best_value": float("nan") if r.best_value is None else round(r.best_value, 4),
        "complete": r.complete, "pruned": r.pruned, "failed": r.failed, "wall_s": round(r.wall_seconds, 1),
        "config": str(r.config_path) if r.config_path else "",
    } for r in results])
