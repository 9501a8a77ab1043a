"""Where the runs of a grid execute: in this process, in a local process pool, or on a Dask cluster.

Each backend yields ``(spec, record, error)`` as runs end; only the calling process (the runner) writes the store.
"""
from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import torch

from msabench.interrupts import children_ignore_sigint, ignore_sigint

if TYPE_CHECKING:
    from msabench.data.base import MultimodalDataset
    from msabench.runner import ExecOptions, RunSpec
    from msabench.store import RunRecord


def execute_in_worker(spec: RunSpec, options: ExecOptions, load_as: str | None = None,
                       shared: str | None = None) -> RunRecord:
    """A run in a worker process: one torch thread unless ``options.threads`` says otherwise; only computes.
    ``shared``: the parent's copy of the dataset (msabench.data.shared), mapped instead of loaded again."""
    from tqdm.std import tqdm as std_tqdm

    from msabench import runner

    torch.set_num_threads(options.threads or 1)

    if not hasattr(std_tqdm, "_lock"):  # a thread lock, not a semaphore that a stopped worker would leak
        std_tqdm.set_lock(threading.RLock())
    if shared is not None:
        from msabench.data.shared import load_shared_cached

        dataset = load_shared_cached(shared)
    else:
        dataset = runner.load_dataset_cached(load_as or spec.dataset, spec.dataset_options)
    return runner.execute_run(spec, options, dataset)


def parse_scheduler(scheduler: str) -> tuple[str, int | str]:
    """``local`` / ``local:N`` → ("local", N); ``tcp://HOST:PORT`` (or another Dask address) → ("address", it)."""
    from msabench.runner import RunError

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


Outcome = tuple["RunSpec", "RunRecord | None", "BaseException | None"]


def execute_all(todo: list[RunSpec], options: ExecOptions, datasets: dict[str, MultimodalDataset],
                workers: int, scheduler: str | None,
                execute: Callable[..., RunRecord]) -> Iterable[Outcome]:
    """Run each spec in process (``execute(spec, options, dataset)``), in a local process pool or on Dask; yield
    (spec, record, error) as they end."""
    if not todo:
        return
    if scheduler:
        yield from _execute_dask(todo, options, scheduler)
    elif workers > 1 and len(todo) > 1:
        yield from _execute_pool(todo, options, workers, datasets)
    else:
        for spec in todo:
            try:
                record = execute(spec, options, datasets.get(spec.dataset))
            except Exception as exc:  # noqa: BLE001 - reported, the other runs go on
                yield spec, None, exc
            else:
                yield spec, record, None


def _worker_options(options: ExecOptions) -> ExecOptions:
    """The options a worker process runs with: the same, without progress bars."""
    return replace(options, progress=False)


def _execute_pool(todo: list[RunSpec], options: ExecOptions, workers: int,
                  datasets: dict[str, MultimodalDataset] | None = None) -> Iterable[Outcome]:
    """Runs in local worker processes; the datasets this process loaded are written once to a temporary directory
    and memory-mapped by every worker (one copy in the page cache instead of one per worker)."""
    import multiprocessing
    import tempfile

    from msabench.data.shared import save_shared

    from msabench.runner import absolute_dataset_spec

    worker_opts = _worker_options(options)
    tmp = tempfile.TemporaryDirectory(prefix="msabench-shared-")
    shared = {name: save_shared(ds, Path(tmp.name) / str(i)) for i, (name, ds) in enumerate((datasets or {}).items())}
    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=ignore_sigint)
    completed = False
    try:
        futures = {pool.submit(execute_in_worker, s, worker_opts, absolute_dataset_spec(s.dataset),
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
        from msabench.runner import RunError

        raise RunError("--scheduler needs dask.distributed: pip install 'dask[distributed]'") from None

    from msabench.runner import RunError, absolute_dataset_spec

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
            fut = client.submit(execute_in_worker, s, worker_opts, absolute_dataset_spec(s.dataset),
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
