"""The runner: expand a request into runs, train each once, evaluate it under every condition, store rows.

Each run (method, resolved hyperparameters, dataset, protocol, seed) trains once under the protocol's training
schedule, selects its checkpoint on the validation split, and that one model is evaluated on the test and
validation splits under every condition of the protocol. Finished runs are stored atomically and skipped when the
same command runs again. Runs execute in process, in a local process pool (``workers``) or on a Dask cluster
(``scheduler``); only this process writes the store.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import random
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from msabench.backends import execute_all, parse_scheduler  # noqa: F401  (parse_scheduler: used by callers too)
from msabench.backends import execute_in_worker as _execute_in_worker  # noqa: F401  (the workers' entry point)
from msabench.data.base import MultimodalDataset
from msabench.hardware import hardware_provenance
from msabench.interrupts import sigint_noted, stop_when
from msabench.masks import mask_hash
from msabench.method import FitContext, Method
from msabench.metrics import compute_metrics
from msabench.outputs import WriteFailed
from msabench.params import param_defaults, params_hash, resolve_params
from msabench.placement import PLACEMENTS, choose_placement, split_bytes
from msabench.plugins import DATASETS, METHODS, PROTOCOLS, dataset_source
from msabench.protocol import EvalProtocol
from msabench.provenance import (  # noqa: F401  (re-exported: git_commit, source_commit for reproduce and tests)
    ROW_COLUMNS, fitted_facts, git_commit, provenance, row_provenance, source_commit,
)
from msabench.registry import split_spec
from msabench.store import ResultsStore, RunRecord

log = logging.getLogger(__name__)

DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)


class RunError(ValueError):
    """A run request that cannot be carried out; raised before any training starts."""


@dataclass(frozen=True)
class RunSpec:
    """One run. ``params`` are the method's resolved hyperparameters."""

    method: str
    params: dict[str, Any]
    dataset: str
    dataset_options: dict[str, Any]
    dataset_fingerprint: str
    protocol: str
    protocol_params: dict[str, Any]
    seed: int
    epochs: int | None = None
    tag: str = ""

    @property
    def key(self) -> str:
        """Stable id: hash of method, resolved hyperparameters, dataset fingerprint, protocol (+ params), seed."""
        # an epoch count already in the hyperparameters is not counted twice (--epochs 2 == --set epochs=2)
        epochs = None if "epochs" in self.params else self.epochs
        ident = {
            "method": self.method, "params": self.params, "dataset_fingerprint": self.dataset_fingerprint,
            "protocol": self.protocol, "protocol_params": self.protocol_params, "seed": self.seed,
            "epochs": epochs,
        }
        return params_hash(ident) + params_hash({"tag": self.tag})[:4]

    def __hash__(self) -> int:
        return hash(self.key)


@dataclass
class ExecOptions:
    """How runs execute (not part of a run's identity)."""

    device: str = "auto"
    amp: bool = True
    deterministic: bool = False
    save_predictions: bool = False
    save_model: bool = False
    progress: bool = True
    threads: int | None = None  # torch CPU threads per run; None: unchanged in process, 1 in worker processes
    cache: bool = True  # run_grid gives methods OUT/cache for artefacts shared between runs (CorrKD's teacher)
    cache_dir: str | None = None  # set by run_grid from ``cache``; None: methods cache nothing
    data_placement: str = "auto"  # auto, device or host: where training data lives (msabench.placement)


# environment ------------------------------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise RunError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError("device cuda requested but CUDA is not available; use --device auto or cpu")
    return dev


def set_deterministic() -> None:
    """CUDA determinism switches; call before CUDA starts."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (every device) from the run seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# loading ------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _load_cached(spec: str, options_json: str) -> MultimodalDataset:
    return dataset_source(spec, **json.loads(options_json)).load()


def load_dataset_cached(spec: str, options: dict[str, Any] | None = None) -> MultimodalDataset:
    """Load a dataset once per process (the last few are kept in memory)."""
    return _load_cached(spec, json.dumps(options or {}, sort_keys=True))


def absolute_dataset_spec(spec: str) -> str:
    """``mmsa:data/x.pkl`` → ``mmsa:/abs/data/x.pkl``, so worker processes elsewhere find the same file."""
    name, path = split_spec(spec, DATASETS)
    if path and not Path(path).is_absolute():
        return f"{name}:{Path(path).resolve()}"
    return spec


def make_protocol(name: str, params: dict[str, Any]) -> EvalProtocol:
    """The protocol ``name`` with coerced parameters."""
    cls = PROTOCOLS.get(name)
    return cls(**resolve_params(cls, params))


def resolve_method_params(method: str, dataset: MultimodalDataset, user_params: dict[str, Any],
                          epochs: int | None = None) -> tuple[type[Method], dict[str, Any]]:
    """Defaults ← the method's per-dataset defaults ← user values (coerced), as one resolved dict."""
    cls = METHODS.get(method)
    raw = dict(cls.dataset_defaults(dataset))
    raw.update(user_params)
    if epochs is not None and "epochs" in param_defaults(cls):
        raw["epochs"] = epochs
    return cls, cls.finalize_params(resolve_params(cls, raw))


# one run ------------------------------------------------------------------------------------------------------
def fit_method(spec: RunSpec, dataset: MultimodalDataset, options: ExecOptions,
               on_epoch: Callable[[int, float, float], None] | None = None) -> tuple[Method, EvalProtocol, float]:
    """Train ``spec``'s method on train + valid only; returns (fitted method, protocol, train seconds)."""
    seed_everything(spec.seed)
    cls = METHODS.get(spec.method)
    method = cls(**spec.params)
    protocol = make_protocol(spec.protocol, spec.protocol_params)
    device = resolve_device(options.device)
    train, valid = dataset.train, dataset.valid
    context = FitContext(
        task=dataset.task,
        seed=spec.seed,
        device=device,
        amp=options.amp,
        valid_masks=protocol.masks(valid, dataset.fingerprint, protocol.validation_conditions()),
        epochs=None if "epochs" in spec.params else spec.epochs,
        on_epoch=on_epoch,
        progress=options.progress,
        aligned=dataset.aligned,
        dataset_fingerprint=dataset.fingerprint,
        cache_dir=options.cache_dir,
        data_placement=choose_placement(options.data_placement, device, split_bytes(train) + split_bytes(valid)),
    )
    schedule = protocol.training_schedule(train, spec.seed, dataset.fingerprint)
    start = time.perf_counter()
    method.fit(train, valid, schedule, context)
    return method, protocol, time.perf_counter() - start


def evaluate(method: Method, dataset: MultimodalDataset, protocol: EvalProtocol, splits: Iterable[str],
             keep_predictions: bool = False, device: torch.device | str | None = None,
             ) -> tuple[list[dict[str, Any]], pd.DataFrame | None]:
    """Metrics of one trained model under every condition of ``protocol`` on each split.

    With ``device``, each split is moved there once (not once per condition).
    """
    rows, pred_frames = [], []
    task = dataset.task
    for split_name in splits:
        split = dataset[split_name]
        labels = split.labels.cpu().numpy()
        if device is not None:
            split = split.to(device)
        for condition in protocol.conditions():
            mask = protocol.mask(split, condition, dataset.fingerprint)
            pred = np.asarray(method.predict(split, mask))
            if pred.shape[0] != len(split):
                raise RuntimeError(f"{type(method).__name__}.predict returned {pred.shape[0]} rows for "
                                   f"{len(split)} samples")
            m_hash = mask_hash(mask)
            for metric, value in compute_metrics(task, pred, labels).items():
                rows.append({"split": split_name, "condition": condition, "mask_hash": m_hash,
                             "metric": metric, "value": float(value)})
            if keep_predictions:
                pred_frames.append(prediction_frame(split_name, condition, split.ids, labels, pred, task))
    preds = pd.concat(pred_frames, ignore_index=True) if pred_frames else None
    return rows, preds


def prediction_frame(split: str, condition: str, ids: list[str], labels: np.ndarray, pred: np.ndarray,
                     task) -> pd.DataFrame:
    frame = pd.DataFrame({"split": split, "condition": condition, "sample_id": ids})
    if task.kind == "regression":
        frame["label"] = labels.reshape(-1)
        frame["prediction"] = pred.reshape(-1)
    elif task.kind == "multilabel":
        for k, name in enumerate(task.label_names):
            frame[f"label_{name}"] = labels[:, k]
            frame[f"prob_{name}"] = pred[:, k]
    else:
        frame["label"] = labels
        frame["prediction"] = pred.argmax(axis=1)
        for k, name in enumerate(task.label_names):
            frame[f"prob_{name}"] = pred[:, k]
    return frame


def execute_run(spec: RunSpec, options: ExecOptions, dataset: MultimodalDataset | None = None) -> RunRecord:
    """Train, evaluate under every condition, and package rows + provenance (stored by the caller)."""
    if options.deterministic:
        set_deterministic()
    if options.threads:
        torch.set_num_threads(options.threads)
    dataset = dataset or load_dataset_cached(spec.dataset, spec.dataset_options)
    if dataset.fingerprint != spec.dataset_fingerprint:
        raise RunError(f"dataset {spec.dataset} changed since the run was planned (fingerprint "
                       f"{dataset.fingerprint} != {spec.dataset_fingerprint})")
    started = datetime.now(timezone.utc)
    method, protocol, train_seconds = fit_method(spec, dataset, options)
    device = resolve_device(options.device)
    placement = getattr(method, "data_placement_", "device")
    eval_start = time.perf_counter()
    rows, preds = evaluate(method, dataset, protocol, ["test", "valid"], options.save_predictions,
                           device=None if placement == "host" else device)
    eval_seconds = time.perf_counter() - eval_start
    finished = datetime.now(timezone.utc)
    info = provenance(spec, dataset, protocol, device, started, finished, train_seconds)
    info.update({
        "eval_seconds": round(eval_seconds, 6),  # microseconds: work that happened never reads 0
        "amp": bool(options.amp and device.type == "cuda"),
        "deterministic": options.deterministic,
        "torch_threads": torch.get_num_threads(),
        "data_placement": placement,
        "hostname": platform.node(),
    })
    info.update(hardware_provenance(device))
    info["training_curve"] = method.training_curve()
    info["fitted"] = fitted_facts(method)
    info["mask_hashes"] = {f"{r['split']}/{r['condition']}": r["mask_hash"] for r in rows}
    frame = pd.DataFrame(rows)
    for col, value in reversed(list(row_provenance(info).items())):
        frame.insert(0, col, value)
    if preds is not None:
        preds.insert(0, "run_id", spec.key)
    state = method.inference_state() if options.save_model else None
    return RunRecord(key=spec.key, info=info, rows=frame, predictions=preds, model_state=state)


# a grid -------------------------------------------------------------------------------------------------------
@dataclass
class RunRequest:
    """What ``msabench run`` asks for."""

    methods: list[str]
    datasets: list[str] = field(default_factory=lambda: ["synthetic-small"])
    protocol: str = "random-missing"
    seeds: list[int] = field(default_factory=lambda: list(DEFAULT_SEEDS))
    params: dict[str, Any] = field(default_factory=dict)
    protocol_params: dict[str, Any] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    tag: str = ""


class RunFailed(RuntimeError):
    """Some runs of a grid raised; the others were stored. Rerunning the same command retries the failed ones."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a grid; finished runs are stored. ``str()`` says how many and that a rerun continues."""


REBUILD_EVERY_S = 10.0  # results.csv is rewritten at most this often during a grid, and always at its end


def check_request(request: RunRequest) -> EvalProtocol:
    """Names, protocol parameters, seeds and epochs; cheap (loads no data). Raises RunError."""
    from msabench.params import ParameterError
    from msabench.registry import RegistryError

    if not request.methods:
        raise RunError("no method given: use --method NAME (see 'msabench list methods')")
    if not request.datasets:
        raise RunError("no dataset given: use --dataset NAME (see 'msabench list datasets')")
    try:
        protocol = make_protocol(request.protocol, request.protocol_params)
        for m in request.methods:
            METHODS.get(m)
        for d in request.datasets:
            dataset_source(d, **request.dataset_options)  # validates name and path/option form
    except (RegistryError, ParameterError, ValueError, TypeError) as exc:
        raise RunError(str(exc)) from None
    if not request.seeds:
        raise RunError("no seeds given; use --seeds 1111,1112,...")
    if request.epochs is not None and int(request.epochs) < 1:
        raise RunError(f"--epochs must be at least 1, got {request.epochs}")
    return protocol


def plan(request: RunRequest) -> tuple[list[RunSpec], dict[str, MultimodalDataset]]:
    """Resolve and check everything (names, hyperparameters, task support); no training. Raises RunError.

    Specs come in request order (dataset, method, seed), each key once.
    """
    from msabench.params import ParameterError

    protocol = check_request(request)
    datasets: dict[str, MultimodalDataset] = {}
    specs: dict[str, RunSpec] = {}
    for d in request.datasets:
        try:
            datasets[d] = load_dataset_cached(d, request.dataset_options)
        except (OSError, ValueError) as exc:
            raise RunError(str(exc)) from None
        ds = datasets[d]
        for m in request.methods:
            try:
                cls, params = resolve_method_params(m, ds, request.params, request.epochs)
                cls(**params)
                cls.check_supported(ds.task, ds.aligned)
            except (ParameterError, ValueError, TypeError) as exc:
                raise RunError(str(exc)) from None
            for seed in request.seeds:
                spec = RunSpec(m, params, d, dict(request.dataset_options), ds.fingerprint, request.protocol,
                               protocol.get_params(), int(seed), request.epochs, request.tag)
                specs.setdefault(spec.key, spec)
    return list(specs.values()), datasets


def run_grid(request: RunRequest, out: str | os.PathLike = "runs", options: ExecOptions | None = None,
             workers: int = 1, scheduler: str | None = None) -> pd.DataFrame:
    """Carry out ``request``; finished runs already in ``out`` are skipped. Returns all rows in ``out``.

    Everything is checked before any training starts (RunError / StoreError). A run that raises does not stop
    the others; they are stored and RunFailed is raised at the end.
    """
    options = options or ExecOptions()
    if options.deterministic:
        set_deterministic()
    if workers < 1:
        raise RunError(f"--workers must be at least 1, got {workers}")
    if options.threads is not None and options.threads < 1:
        raise RunError(f"threads must be at least 1, got {options.threads}")
    if options.data_placement not in PLACEMENTS:
        raise RunError(f"--data-placement {options.data_placement!r}: use one of {', '.join(PLACEMENTS)}")
    if scheduler:
        parse_scheduler(scheduler)
    resolve_device(options.device)
    check_request(request)
    store = ResultsStore(out)
    store.ensure_writable()
    if options.cache and options.cache_dir is None:
        options = replace(options, cache_dir=str(Path(out).resolve() / "cache"))
    specs, datasets = plan(request)
    done = store.keys()
    todo = [s for s in specs if s.key not in done]
    if len(todo) < len(specs):
        log.info("skipping %d finished runs already in %s", len(specs) - len(todo), out)
    failed: list[tuple[RunSpec, BaseException]] = []
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not options.progress or not todo)
    last_rebuild = time.monotonic()
    outcomes = execute_all(todo, options, datasets, workers, scheduler, execute_run)
    try:
        with sigint_noted() as pressed:
            for spec, record, error in stop_when(outcomes, pressed):
                if error is not None:
                    log.error("run %s (%s, seed %d) failed: %s: %s", spec.key, spec.method, spec.seed,
                              type(error).__name__, error, exc_info=error)
                    failed.append((spec, error))
                else:
                    store.save(record)
                    if time.monotonic() - last_rebuild >= REBUILD_EVERY_S:
                        store.rebuild_results()
                        last_rebuild = time.monotonic()
                    bar.set_postfix_str(f"{spec.method} seed {spec.seed} done", refresh=False)
                bar.update(1)
    except BaseException as exc:  # stop the workers, keep what finished, say how far the grid got
        outcomes.close()
        bar.close()
        _rebuild_after_failure(store)
        kept = _kept_note(store, specs, len(specs) - len(todo), out)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted: {kept}; rerunning the same command continues") from None
        if isinstance(exc, WriteFailed):
            exc.note = f"{kept[0].upper()}{kept[1:]}; rerun the same command once it is fixed"
        raise
    bar.close()
    try:
        rows = store.rebuild_results()
    except WriteFailed as exc:
        exc.note = f"All {len(specs)} runs are stored in {Path(out) / 'runs'}; rerunning the same command rebuilds it"
        raise
    if failed:
        names = "; ".join(f"{s.method} seed {s.seed} ({type(e).__name__}: {e})" for s, e in failed[:5])
        raise RunFailed(f"{len(failed)} of {len(todo)} runs failed: {names}. The others are stored in {out}; "
                        f"rerun the same command to retry the failed runs")
    return rows


def _rebuild_after_failure(store: ResultsStore) -> None:
    """Bring results.csv up to date with runs/ if possible; a rerun rebuilds it anyway, so a failure is quiet."""
    try:
        store.rebuild_results()
    except (OSError, KeyboardInterrupt) as exc:
        log.debug("results.csv not rebuilt: %s", exc)


def _kept_note(store: ResultsStore, specs: list[RunSpec], before: int, out: str | os.PathLike) -> str:
    """``3 runs finished and were kept in OUT (5 of 8 runs of this grid are stored)``."""
    stored = len(store.keys() & {s.key for s in specs})
    new = max(stored - before, 0)
    return (f"{new} run{'s' if new != 1 else ''} finished and {'were' if new != 1 else 'was'} kept in {out} "
            f"({stored} of {len(specs)} runs of this grid are stored)")


def summary_table(rows: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """Test-split mean ± std over seeds per method × condition for one metric (the end-of-run table)."""
    if rows.empty:
        return rows
    test = rows[rows["split"] == "test"]
    if metric is None:
        metric = {"mosi": "Non0_F1", "sims": "F1_score", "iemocap": "Mean_F1"}.get(str(test["task"].iloc[0]), "acc")
    sel = test[test["metric"] == metric]
    agg = sel.groupby(["method", "dataset", "condition"], sort=False)["value"].agg(["mean", "std", "count"])
    return agg.reset_index().rename(columns={"count": "seeds"}).assign(metric=metric)
