"""The results store: one directory per finished run, written in one atomic step.

Layout under ``DIR``::

    runs/<run key>/run.json          provenance + training curve
    runs/<run key>/rows.csv          long rows: one per (split, condition, metric)
    runs/<run key>/predictions.csv   per-sample predictions (with --save-predictions)
    runs/<run key>/model.pt          the inference model (with --save-model)
    results.csv                      every run's rows (rebuilt from runs/; Parquet too with `pip install msabench[parquet]`)
    rows.csv.gz                      a packed store (``msabench pack``): every run's rows once, compressed; its runs
                                     keep run.json (and predictions/model) but no rows.csv, and results.csv is gone

A run is stored by writing a hidden temporary directory and renaming it into place, so a killed process
(even ``kill -9``) leaves either the whole run or nothing. A run directory counts only once its ``run.json``
exists (written last). Everything downstream reads only this store; ``runs/`` is the source of truth and
``results.csv`` can always be rebuilt from it. A packed store (published studies) reads the same: a run's rows
come from its ``rows.csv`` if it has one (a run added after packing), else from ``rows.csv.gz``. A failed write
(full disk, no permission, ...) raises :class:`StoreWriteFailed` and leaves no temporary behind; temporaries of
ended processes are removed by :meth:`ResultsStore.ensure_writable`, which every command writing a store calls
first.
"""
from __future__ import annotations

import gzip
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
PACKED_ROWS = "rows.csv.gz"  # every run's rows in one compressed file (ResultsStore.pack)


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


def _write_gzip(path: Path, data: bytes) -> None:
    """gzip ``data`` into ``path`` without a file name or time in the header: the same rows give the same bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(data)


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
        self._packed: dict[str, pd.DataFrame] | None = None

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

    @property
    def packed_path(self) -> Path:
        """Where a packed store keeps every run's rows (see :meth:`pack`)."""
        return self.root / PACKED_ROWS

    def _packed_rows(self) -> dict[str, pd.DataFrame]:
        """The packed rows by run key (empty if the store is not packed); read once."""
        if self._packed is None:
            self._packed = {}
            if self.packed_path.exists():
                frame = read_rows_csv(self.packed_path)
                self._packed = {str(k): g.reset_index(drop=True) for k, g in frame.groupby("run_id", sort=False)}
        return self._packed

    def run_rows(self, key: str) -> pd.DataFrame:
        """The long rows of the stored run ``key``: its ``rows.csv``, or its part of the packed file."""
        if key not in self._rows_cache:
            path = self.runs_dir / key / "rows.csv"
            if path.exists():
                self._rows_cache[key] = read_rows_csv(path)
            elif key in self._packed_rows():
                self._rows_cache[key] = self._packed_rows()[key]
            else:
                raise StoreError(f"run {key} in {self.root} has run.json but no rows (no rows.csv and not in "
                                 f"{PACKED_ROWS}); delete runs/{key} and rerun the same command to redo it")
        return self._rows_cache[key]

    def rows(self) -> pd.DataFrame:
        """All stored rows (from the per-run files or the packed file, the source of truth); each read once."""
        frames = [self.run_rows(k) for k in sorted(self.keys())]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def pack(self) -> Path:
        """Store every run's rows once: write ``rows.csv.gz`` (rows sorted by run key, as :meth:`rows` gives them),
        then remove the per-run ``rows.csv`` files and ``results.csv``/``results.parquet``, which it replaces.

        Reading the store gives the same rows before and after. Interrupted, it leaves a consistent store: the
        packed file is written atomically before anything is removed. Runs added later keep their own
        ``rows.csv`` until the next pack; ``rebuild_results`` writes ``results.csv`` again (a pack removes it).
        """
        rows = self.rows()
        if rows.empty:
            raise StoreError(f"nothing to pack in {self.root}: no finished runs under {self.runs_dir}")
        atomic_write(self.packed_path, lambda tmp: _write_gzip(tmp, rows.to_csv(index=False).encode("utf-8")),
                     error=StoreWriteFailed)
        self._packed = None
        with writing(self.root, error=StoreWriteFailed):
            for key in self.keys():
                (self.runs_dir / key / "rows.csv").unlink(missing_ok=True)
            for name in ("results.csv", "results.parquet"):
                (self.root / name).unlink(missing_ok=True)
        return self.packed_path

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
