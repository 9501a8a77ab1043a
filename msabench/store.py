"""The results store: one directory per finished run, written in one atomic step.

Layout under ``DIR``::

    runs/<run key>/run.json          provenance + training curve
    runs/<run key>/rows.csv          long rows: one per (split, condition, metric)
    runs/<run key>/predictions.csv   per-sample predictions (with --save-predictions)
    runs/<run key>/model.pt          the inference model (with --save-model)
    results.csv                      every run's rows (rebuilt from runs/; Parquet too with `pip install msabench[parquet]`)

A run is stored by writing a hidden temporary directory and renaming it into place, so a killed process
(even ``kill -9``) leaves either the whole run or nothing. A run directory counts only once its ``run.json``
exists (written last). Everything downstream reads only this store; ``runs/`` is the source of truth and
``results.csv`` can always be rebuilt from it. A failed write (full disk, no permission, ...) raises
:class:`StoreWriteFailed` and leaves no temporary behind; temporaries of ended processes are removed by
:meth:`ResultsStore.ensure_writable`, which every command writing a store calls first.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from msabench.interrupts import sigint_deferred
from msabench.outputs import WriteFailed, atomic_write, clean_stale_temps, describe, host_tag, pid_alive, writing

__all__ = ["ResultsStore", "RunRecord", "StoreError", "StoreWriteFailed", "pid_alive", "read_rows",
           "read_rows_csv"]

# a temporary run directory is named .tmp-<key>-<host>-<pid>-<random>; one whose writer is gone is cleaned up
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 24 * 3600  # tmp dirs of another host are removed only after this long


class StoreError(OSError):
    """The output directory cannot be used."""


class StoreWriteFailed(WriteFailed, StoreError):
    """Writing into the store failed (no space, no permission, ...); nothing half-written counts as stored."""


@dataclass
class RunRecord:
    """Everything one finished run hands to the store."""

    key: str
    info: dict[str, Any]
    rows: pd.DataFrame
    predictions: pd.DataFrame | None = None
    model_state: Any = None
    extra_files: dict[str, bytes] = field(default_factory=dict)


def _host() -> str:
    return host_tag()


def _tmp_is_stale(path: Path, now: float | None = None) -> bool:
    """A temporary run directory whose writing process has ended (same host) or that is a day old."""
    parts = path.name[len(TMP_PREFIX):].split("-")
    if len(parts) >= 4 and parts[-3] == _host():
        try:
            return not pid_alive(int(parts[-2]))
        except ValueError:
            return True
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except OSError:
        return False
    return age > STALE_TMP_SECONDS


def _torch_save(state: Any, path: Path) -> None:
    """``torch.save`` through a Python file, so that a full disk raises ``OSError`` (not a RuntimeError)."""
    import torch

    with open(path, "wb") as fh:
        torch.save(state, fh)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ResultsStore:
    """Finished runs under ``root/runs/<key>/`` and the combined ``root/results.csv``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self._rows_cache: dict[str, pd.DataFrame] = {}

    def ensure_writable(self) -> None:
        """Create the directory and check that it can be written; a clear error if not. Cleans stale tmp dirs."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.runs_dir, prefix=".probe-"):
                pass
        except OSError as exc:  # a bad --out, found before any work: a usage error (exit 2), not a write fault
            raise StoreError(describe(self.root, exc)) from None
        self.clean_stale()

    def clean_stale(self) -> list[Path]:
        """Remove temporaries left by ended processes (run directories, ``results.csv`` and cache files);
        returns what was removed."""
        removed = clean_stale_temps(self.root) + clean_stale_temps(self.root / "cache", recursive=True)
        if not self.runs_dir.exists():
            return removed
        for tmp in self.runs_dir.glob(TMP_PREFIX + "*"):
            if tmp.is_dir() and _tmp_is_stale(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
        return removed

    def has(self, key: str) -> bool:
        """Whether the finished run ``key`` is stored."""
        return (self.runs_dir / key / "run.json").exists()

    def keys(self) -> set[str]:
        """Keys of every finished run (hidden and incomplete directories are ignored)."""
        if not self.runs_dir.exists():
            return set()
        return {p.name for p in self.runs_dir.iterdir() if not p.name.startswith(".") and (p / "run.json").exists()}

    def save(self, record: RunRecord) -> bool:
        """Store a finished run atomically; False if a run with this key was already there.

        A failed write raises :class:`StoreWriteFailed` naming the file; the temporary directory is removed
        then, so the run is either wholly stored or absent. Ctrl-C waits until the run is stored.
        """
        with sigint_deferred():  # a Ctrl-C during these few writes takes effect once the run is stored
            return self._save(record)

    def _save(self, record: RunRecord) -> bool:
        final = self.runs_dir / record.key
        if self.has(record.key):
            return False
        with writing(self.runs_dir, error=StoreWriteFailed):
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{record.key}-{_host()}-{os.getpid()}-",
                                        dir=self.runs_dir))
        try:
            for name, write in self._run_files(record):
                with writing(final / name, error=StoreWriteFailed):
                    write(tmp / name)
            with writing(final, error=StoreWriteFailed):
                for path in tmp.iterdir():
                    with open(path, "rb") as fh:
                        os.fsync(fh.fileno())
                _fsync_dir(tmp)
                if final.exists():  # a directory without run.json is not a run (never written by save); replace it
                    shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and self.has(record.key):  # another process stored the same run first
                return False
            raise
        _fsync_dir(self.runs_dir)
        return True

    @staticmethod
    def _run_files(record: RunRecord) -> list[tuple[str, Any]]:
        """(file name, writer of that file) of a run, in writing order; ``run.json`` last (marks completeness)."""
        files: list[tuple[str, Any]] = [("rows.csv", lambda p: record.rows.to_csv(p, index=False))]
        if record.predictions is not None:
            files.append(("predictions.csv", lambda p: record.predictions.to_csv(p, index=False)))
        if record.model_state is not None:
            files.append(("model.pt", lambda p: _torch_save(record.model_state, p)))
        for name, data in record.extra_files.items():
            files.append((name, lambda p, data=data: p.write_bytes(data)))
        files.append(("run.json", lambda p: p.write_text(json.dumps(record.info, indent=2, default=str))))
        return files

    def rows(self) -> pd.DataFrame:
        """All stored rows (from the per-run files, the source of truth); each run's file is read once."""
        keys = sorted(self.keys())
        for key in keys:
            if key not in self._rows_cache:
                self._rows_cache[key] = read_rows_csv(self.runs_dir / key / "rows.csv")
        frames = [self._rows_cache[k] for k in keys]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def run_info(self, key: str) -> dict[str, Any]:
        """The ``run.json`` of a stored run."""
        return json.loads((self.runs_dir / key / "run.json").read_text())

    def predictions(self, key: str) -> pd.DataFrame:
        """The per-sample predictions of a stored run (saved with ``--save-predictions``)."""
        path = self.runs_dir / key / "predictions.csv"
        if not path.exists():
            raise FileNotFoundError(f"run {key} has no predictions; rerun it with --save-predictions into a new --out")
        return pd.read_csv(path, dtype={"run_id": str, "split": str, "condition": str, "sample_id": str},
                           keep_default_na=False, na_values=[""])

    def rebuild_results(self) -> pd.DataFrame:
        """Rewrite ``results.csv`` (and ``results.parquet``) from the per-run files, atomically."""
        rows = self.rows()
        atomic_write(self.root / "results.csv", lambda tmp: rows.to_csv(tmp, index=False), error=StoreWriteFailed)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            return rows
        if rows.empty:
            with writing(self.root / "results.parquet", error=StoreWriteFailed):
                (self.root / "results.parquet").unlink(missing_ok=True)
        else:
            text = rows.astype({c: str for c in rows.columns if rows[c].dtype == object})
            atomic_write(self.root / "results.parquet", lambda tmp: text.to_parquet(tmp, index=False),
                         error=StoreWriteFailed)
        return rows


# columns that look numeric but are labels ("0.0" is a condition, run ids are hex)
TEXT_COLUMNS = ("run_id", "tag", "condition", "mask_hash", "params_hash", "git_commit", "dataset_fingerprint",
                "split", "metric", "protocol_version", "method_package_version", "hardware_id")


def read_rows_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read long rows, keeping label columns as text."""
    frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])
    for col in TEXT_COLUMNS:
        if col in frame:
            frame[col] = frame[col].fillna("")
    return frame


def read_rows(paths: list[str | os.PathLike]) -> pd.DataFrame:
    """Long rows from result directories (their ``runs/``) or ``results.csv`` files."""
    frames = []
    for p in map(Path, paths):
        if p.is_dir():
            frames.append(ResultsStore(p).rows())
        elif p.suffix == ".parquet":
            frames.append(pd.read_parquet(p))
        elif p.exists():
            frames.append(read_rows_csv(p))
        else:
            raise FileNotFoundError(f"no results at {p}: give a directory written by 'msabench run' or a results.csv")
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
