"""Optuna storages for ``msabench tune``: storage URLs, the lock that keeps a global trial budget, retries of failed
or abandoned trials, heartbeats.

A worker takes :func:`budget_lock` (a file lock for SQLite and journal files, an advisory lock for PostgreSQL and
MySQL), counts the study's trials and creates one only while fewer than the budget exist (:func:`claim_trial`), so two
workers never overshoot. Retries of failed trials do not count towards the budget; each is retried ``MAX_RETRY`` times.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from msabench.outputs import writing
from msabench.runner import RunError
from msabench.store import pid_alive

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

MAX_RETRY = 1
HEARTBEAT_INTERVAL = 30  # seconds between heartbeats of a running trial (RDB storages)
GRACE_PERIOD = 120  # a running trial without a heartbeat for this long is failed and retried


class TuneError(RunError):
    """A tuning request that cannot be carried out (bad option, incompatible study, unusable storage)."""


# storage ------------------------------------------------------------------------------------------------------
def storage_url(storage: str | None, out: str | os.PathLike) -> str:
    """The default ``sqlite:///OUT/optuna.db`` or ``storage`` itself."""
    if storage:
        return storage
    path = Path(out).resolve() / "optuna.db"
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def journal_path(url: str) -> str | None:
    """``journal:///abs/file.log`` → ``/abs/file.log`` (``journal://rel.log`` → ``rel.log``); else None."""
    return url[len("journal://"):] if url.startswith("journal://") else None


def make_storage(url: str) -> Any:
    """An Optuna storage: JournalStorage for ``journal://``, RDBStorage (with heartbeat) for any RDB URL."""
    import optuna

    path = journal_path(url)
    if path is not None:
        if not path:
            raise TuneError("journal storage needs a file: --storage journal:///path/to/study.log")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            from optuna.storages.journal import JournalFileBackend

            backend = JournalFileBackend(path)
        except ImportError:  # optuna < 4.0
            backend = optuna.storages.JournalFileStorage(path)
        return optuna.storages.JournalStorage(backend)
    if "://" not in url:
        raise TuneError(f"unknown storage {url!r}: use sqlite:///FILE, journal:///FILE or an RDB URL such as "
                        f"postgresql://user@host/db")
    import inspect

    url = with_installed_driver(url)
    callback_kw = ("heartbeat_stale_trial_callback"
                   if "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
                   else "failed_trial_callback")
    kwargs = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD,
              callback_kw: _retry_stale}
    try:
        with warnings.catch_warnings():  # heartbeat_interval is 'experimental' in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except ImportError as exc:
        raise TuneError(f"storage {url}: a database driver is missing ({exc}); for PostgreSQL install "
                        f"psycopg2-binary (pip install 'msabench[postgres]')") from None
    except Exception as exc:  # sqlalchemy.exc.OperationalError and friends: name the URL
        raise TuneError(f"cannot open storage {_redact(url)}: {type(exc).__name__}: {exc}") from None


def with_installed_driver(url: str) -> str:
    """``postgresql://`` means psycopg (v3) in SQLAlchemy >= 2.1 but psycopg2 before; pick whichever is installed."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"


def _redact(url: str) -> str:
    head, sep, tail = url.partition("@")
    if not sep or "://" not in head:
        return url
    scheme, _, cred = head.partition("://")
    return f"{scheme}://{cred.split(':')[0]}:***@{tail}" if ":" in cred else url


class _FileLock:
    """An exclusive ``flock`` on a side file; works between processes (and threads) on one machine."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: Any = None

    def __enter__(self) -> "_FileLock":
        import fcntl

        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        finally:
            self._fh.close()


class _AdvisoryLock:
    """A PostgreSQL advisory lock or a MySQL named lock, held on its own connection."""

    def __init__(self, engine: Any, name: str) -> None:
        self.engine = engine
        self.name = name
        self.key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        self._conn: Any = None

    def __enter__(self) -> "_AdvisoryLock":
        from sqlalchemy import text

        self._conn = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
        else:
            self._conn.execute(text("SELECT GET_LOCK(:n, -1)"), {"n": self.name[:64]})
        self._conn.commit()
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import text

        try:
            if self.engine.dialect.name == "postgresql":
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            else:
                self._conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name[:64]})
            self._conn.commit()
        finally:
            self._conn.close()


def budget_lock(storage: Any, url: str, study_name: str) -> contextlib.AbstractContextManager:
    """The lock that makes 'count trials, then create one' atomic across workers of one study."""
    path = journal_path(url)
    if path is None and url.startswith("sqlite:///") and ":memory:" not in url:
        path = url[len("sqlite:///"):]
    if path is not None:
        try:
            import fcntl  # noqa: F401
        except ImportError:
            warnings.warn("no fcntl on this platform: the trial budget may be exceeded by concurrent workers",
                          stacklevel=2)
            return contextlib.nullcontext()
        return _FileLock(f"{path}.{hashlib.sha256(study_name.encode()).hexdigest()[:12]}.lock")
    engine = getattr(storage, "engine", None)
    if engine is not None and engine.dialect.name in ("postgresql", "mysql", "mariadb"):
        return _AdvisoryLock(engine, f"msabench-tune:{study_name}")
    if engine is not None and engine.dialect.name != "sqlite":
        log.warning("no lock for %s storages: concurrent workers may exceed the trial budget", engine.dialect.name)
    return contextlib.nullcontext()


# trial accounting -----------------------------------------------------------------------------------------------
def is_retry(trial: "optuna.trial.FrozenTrial") -> bool:
    """A re-run of a failed trial (Optuna's ``failed_trial`` convention); retries do not use up the budget."""
    return "failed_trial" in trial.system_attrs


def budget_used(trials: list["optuna.trial.FrozenTrial"]) -> int:
    """Trials that count towards the budget: every trial that is not a retry, whatever its state."""
    return sum(1 for t in trials if not is_retry(t))


def claim_trial(study: "optuna.Study", budget: int, lock: contextlib.AbstractContextManager) -> "optuna.Trial | None":
    """Under ``lock``: a waiting trial (a retry) if there is one, else a new trial while the budget allows."""
    from optuna.trial import TrialState

    with lock:
        trials = study.get_trials(deepcopy=False)
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and budget_used(trials) >= budget:
            return None
        with warnings.catch_warnings():  # we run the heartbeat ourselves (see heartbeat())
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        # who runs it, so that a storage without heartbeats can still tell a dead worker (see fail_stale)
        study._storage.set_trial_system_attr(trial._trial_id, "worker", {"host": socket.gethostname(),
                                                                         "pid": os.getpid()})
        return trial


def requeue(study: "optuna.Study", trial: "optuna.trial.FrozenTrial", reason: str, counts: bool = True) -> bool:
    """Queue a failed trial again with the same parameters, at most ``MAX_RETRY`` times (``counts=False`` for an
    interruption, which is not the trial's fault). Returns whether it was queued."""
    import optuna

    history = list(trial.system_attrs.get("retry_history", []))
    if counts and len(history) >= MAX_RETRY:
        return False
    system_attrs = {**{k: v for k, v in trial.system_attrs.items() if k not in ("fixed_params",)},
                    "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                    "retry_history": history + [trial.number] if counts else history}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={"retry_of": trial.number, "retry_reason": reason}, system_attrs=system_attrs,
    ))
    log.info("trial %d queued again (%s)", trial.number, reason)
    return True


def _retry_stale(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
    requeue(study, trial, "no heartbeat: its worker stopped")


def fail_stale(study: "optuna.Study") -> None:
    """Fail running trials whose worker is gone and queue them again: by missed heartbeats on RDB storages; on
    storages without heartbeats (journal files), by a worker process on this host that no longer exists."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if getattr(study._storage, "get_heartbeat_interval", lambda: None)():
        return
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.system_attrs.get("worker") or {}
        if worker.get("host") != host or pid_alive(int(worker.get("pid", -1))):
            continue  # another machine's worker cannot be checked from here: it keeps its trial
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            continue  # another worker got there first
        requeue(study, trial, f"its worker (process {worker.get('pid')} on {host}) is gone")


@contextlib.contextmanager
def heartbeat(study: "optuna.Study", trial: "optuna.Trial") -> Iterator[None]:
    """Record a heartbeat for ``trial`` every ``HEARTBEAT_INTERVAL`` s while the block runs (RDB storages)."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    trial_id = trial._trial_id
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # a lost connection must not kill the training
                log.warning("heartbeat of trial %d failed: %s", trial.number, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def state_counts(study: "optuna.Study") -> dict[str, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return {s.name.lower(): sum(1 for t in trials if t.state == s) for s in TrialState}
