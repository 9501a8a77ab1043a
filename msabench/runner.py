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
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import msabench
from msabench.data.base import MultimodalDataset
from msabench.hardware import hardware_provenance
from msabench.interrupts import children_ignore_sigint, ignore_sigint, sigint_noted, stop_when
from msabench.masks import derive_seed, mask_hash
from msabench.method import FitContext, Method
from msabench.metrics import compute_metrics
from msabench.outputs import WriteFailed
from msabench.params import param_defaults, params_hash, resolve_params
from msabench.placement import PLACEMENTS, choose_placement, split_bytes
from msabench.plugins import DATASETS, METHODS, PROTOCOLS, dataset_source
from msabench.protocol import EvalProtocol
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


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the git checkout msabench runs from, ``-dirty`` if its code (not its results) has local changes."""
    import msabench.methods
    import msabench.protocols

    code = [Path(msabench.__file__).resolve().parent, Path(msabench.methods.__file__).resolve().parent,
            Path(msabench.protocols.__file__).resolve().parent]
    return source_commit(code)


def source_commit(code: list[Path]) -> str:
    """HEAD of the git checkout holding ``code`` (directories), with ``-dirty`` if a tracked file under them
    changed; other files of the checkout (results, notes) do not count. Empty outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=code[0], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *map(str, code)],
                                   cwd=code[0], capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return ""


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


def fitted_facts(method: Method) -> dict[str, Any]:
    """Scalar fitted attributes (scikit-learn's trailing underscore), e.g. GCNet's ``conversation_mode_``."""
    return {k: v for k, v in vars(method).items()
            if k.endswith("_") and not k.startswith("_") and isinstance(v, (str, int, float, bool))}


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


def provenance(spec: RunSpec, dataset: MultimodalDataset, protocol: EvalProtocol, device: torch.device,
               started: datetime, finished: datetime, train_seconds: float) -> dict[str, Any]:
    m_info = METHODS.info(spec.method)
    p_info = PROTOCOLS.info(spec.protocol)
    d_name, _ = split_spec(spec.dataset, DATASETS)
    d_info = DATASETS.info(d_name)
    return {
        "run_id": spec.key,
        "tag": spec.tag,
        "method": spec.method,
        "method_package": m_info.package,
        "method_package_version": m_info.version,
        "params": spec.params,
        "params_hash": params_hash(spec.params),
        "dataset": spec.dataset,
        "dataset_options": spec.dataset_options,
        "dataset_name": dataset.name,
        "dataset_fingerprint": dataset.fingerprint,
        "dataset_package": d_info.package,
        "dataset_package_version": d_info.version,
        "task": dataset.task.metric_set,
        "protocol": spec.protocol,
        "protocol_version": protocol.version,
        "protocol_params": protocol.get_params(),
        "protocol_package": p_info.package,
        "protocol_package_version": p_info.version,
        "training_recipe": protocol.training_schedule(dataset.train, spec.seed, dataset.fingerprint).recipe,
        "seed": spec.seed,
        "epochs": spec.params.get("epochs", spec.epochs),
        "msabench_version": msabench.__version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "train_seconds": round(train_seconds, 6),
    }


ROW_COLUMNS = [
    "run_id", "tag", "method", "method_package", "method_package_version", "params", "params_hash", "dataset",
    "dataset_fingerprint", "task", "protocol", "protocol_version", "protocol_params", "protocol_package",
    "protocol_package_version", "seed", "epochs", "msabench_version", "git_commit", "torch_version", "device",
    "started", "finished", "train_seconds", "hardware_id",
]


def row_provenance(info: dict[str, Any]) -> dict[str, Any]:
    """The ROW_COLUMNS values of a run (dicts as sorted JSON)."""
    out = {}
    for col in ROW_COLUMNS:
        value = info[col]
        out[col] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
    return out


def _execute_in_worker(spec: RunSpec, options: ExecOptions, load_as: str | None = None,
                       shared: str | None = None) -> RunRecord:
    """A run in a worker process: one torch thread unless ``options.threads`` says otherwise; only computes.
    ``shared``: the parent's copy of the dataset (msabench.data.shared), mapped instead of loaded again."""
    torch.set_num_threads(options.threads or 1)
    from tqdm.std import tqdm as std_tqdm

    if not hasattr(std_tqdm, "_lock"):  # a thread lock, not a semaphore that a stopped worker would leak
        std_tqdm.set_lock(threading.RLock())
    if shared is not None:
        from msabench.data.shared import load_shared_cached

        dataset = load_shared_cached(shared)
    else:
        dataset = load_dataset_cached(load_as or spec.dataset, spec.dataset_options)
    return execute_run(spec, options, dataset)


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


def parse_scheduler(scheduler: str) -> tuple[str, int | str]:
    """``local`` / ``local:N`` → ("local", N); ``tcp://HOST:PORT`` (or another Dask address) → ("address", it)."""
    text = scheduler.strip()
    if text == "local" or text.startswith("local:"):
        _, _, n = text.partition(":")
        try:
            workers = int(n) if n else 2
        except ValueError:
            workers = 0
        if workers < 1:
            raise RunError(f"--scheduler {scheduler!r}: use local:N with N >= 1 workers, or tcp://HOST:8786")
        return "local", workers
    if "://" in text or (":" in text and text.rsplit(":", 1)[1].isdigit()):
        return "address", text
    raise RunError(f"--scheduler {scheduler!r} is not a Dask address: use tcp://HOST:8786 or local:N")


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
    outcomes = _execute_all(todo, options, datasets, workers, scheduler)
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


Outcome = tuple[RunSpec, "RunRecord | None", "BaseException | None"]


def _execute_all(todo: list[RunSpec], options: ExecOptions, datasets: dict[str, MultimodalDataset],
                 workers: int, scheduler: str | None) -> Iterable[Outcome]:
    """Run each spec in process, in a local process pool or on Dask; yield (spec, record, error) as they end."""
    if not todo:
        return
    if scheduler:
        yield from _execute_dask(todo, options, scheduler)
    elif workers > 1 and len(todo) > 1:
        yield from _execute_pool(todo, options, workers, datasets)
    else:
        for spec in todo:
            try:
                record = execute_run(spec, options, datasets.get(spec.dataset))
            except Exception as exc:  # noqa: BLE001 - reported, the other runs go on
                yield spec, None, exc
            else:
                yield spec, record, None


def _worker_options(options: ExecOptions) -> ExecOptions:
    return ExecOptions(**{**asdict(options), "progress": False})


def _execute_pool(todo: list[RunSpec], options: ExecOptions, workers: int,
                  datasets: dict[str, MultimodalDataset] | None = None) -> Iterable[Outcome]:
    """Runs in local worker processes; the datasets this process loaded are written once to a temporary directory
    and memory-mapped by every worker (one copy in the page cache instead of one per worker)."""
    import multiprocessing
    import tempfile

    from msabench.data.shared import save_shared

    worker_opts = _worker_options(options)
    tmp = tempfile.TemporaryDirectory(prefix="msabench-shared-")
    shared = {name: save_shared(ds, Path(tmp.name) / str(i)) for i, (name, ds) in enumerate((datasets or {}).items())}
    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=ignore_sigint)
    completed = False
    try:
        futures = {pool.submit(_execute_in_worker, s, worker_opts, absolute_dataset_spec(s.dataset),
                               shared.get(s.dataset)): s
                   for s in todo}
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result(), None
            except Exception as exc:  # noqa: BLE001
                yield futures[fut], None, exc
        completed = True
    finally:
        if not completed:  # Ctrl-C, or the caller stopped (a store write failed): end the running runs now
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        tmp.cleanup()


def _execute_dask(todo: list[RunSpec], options: ExecOptions, scheduler: str) -> Iterable[Outcome]:
    """Send each run to a Dask cluster (``tcp://HOST:PORT``) or a LocalCluster (``local:N``); results come back
    to this process, which alone writes the store."""
    try:
        from dask.distributed import Client, LocalCluster
        from dask.distributed import as_completed as dask_as_completed
    except ImportError:
        raise RunError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None

    kind, target = parse_scheduler(scheduler)
    worker_opts = _worker_options(options)
    cluster = None
    try:
        if kind == "local":
            with children_ignore_sigint():
                cluster = LocalCluster(n_workers=int(target), threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            client = Client(cluster)
        else:
            client = Client(str(target), timeout="20s")
    except (OSError, TimeoutError) as exc:
        if cluster is not None:
            cluster.close()
        raise RunError(f"cannot reach the Dask scheduler at {scheduler}: {exc}. Start one (dask scheduler, or "
                       f"a dask-jobqueue cluster) and pass its address, or use --scheduler local:N") from None
    futures = {}
    try:
        for s in todo:
            fut = client.submit(_execute_in_worker, s, worker_opts, absolute_dataset_spec(s.dataset),
                                key=f"msabench-run-{s.key}", pure=False, retries=0)
            futures[fut.key] = (fut, s)
        for fut in dask_as_completed([f for f, _ in futures.values()]):
            spec = futures[fut.key][1]
            try:
                yield spec, fut.result(), None
            except Exception as exc:  # noqa: BLE001
                yield spec, None, exc
            fut.release()
    finally:
        client.cancel([f for f, _ in futures.values()])
        client.close()
        if cluster is not None:
            cluster.close()


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
