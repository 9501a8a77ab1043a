"""The results store: one directory per finished run, written in one atomic step.

Layout under ``DIR``::

    runs/<run key>/run.json          provenance + training curve
    runs/<run key>/rows.csv          long rows: one per (split, condition, metric)
    runs/<run key>/predictions.csv   per-sample predictions (with --save-predictions)
    runs/<run key>/model.pt          the inference model (with --save-model)
    results.csv                      every run's rows (rebuilt from runs/; Parquet too if pyarrow is installed)

A run is stored by writing a hidden temporary directory and renaming it into place, so a killed process
(even ``kill -9``) leaves either the whole run or nothing. Everything downstream reads only this store.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class StoreError(OSError):
    """The output directory cannot be used."""


@dataclass
class RunRecord:
    """Everything one finished run hands to the store."""

    key: str
    info: dict[str, Any]
    rows: pd.DataFrame
    predictions: pd.DataFrame | None = None
    model_state: Any = None
    extra_files: dict[str, bytes] = field(default_factory=dict)


class ResultsStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"

    def ensure_writable(self) -> None:
        """Create the directory and check that it can be written; a clear error if not."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.runs_dir, prefix=".probe-"):
                pass
        except OSError as exc:
            raise StoreError(
                f"cannot write results to {self.root}: {exc.strerror or exc}. Choose another directory with --out"
            ) from None
        for stale in self.runs_dir.glob(".tmp-*"):  # left by a killed process
            shutil.rmtree(stale, ignore_errors=True)

    def has(self, key: str) -> bool:
        return (self.runs_dir / key / "run.json").exists()

    def keys(self) -> set[str]:
        if not self.runs_dir.exists():
            return set()
        return {p.name for p in self.runs_dir.iterdir() if not p.name.startswith(".") and (p / "run.json").exists()}

    def save(self, record: RunRecord) -> bool:
        """Store a finished run atomically; False if a run with this key was already there."""
        final = self.runs_dir / record.key
        if final.exists():
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{record.key}-", dir=self.runs_dir))
        record.rows.to_csv(tmp / "rows.csv", index=False)
        if record.predictions is not None:
            record.predictions.to_csv(tmp / "predictions.csv", index=False)
        if record.model_state is not None:
            import torch

            torch.save(record.model_state, tmp / "model.pt")
        for name, data in record.extra_files.items():
            (tmp / name).write_bytes(data)
        (tmp / "run.json").write_text(json.dumps(record.info, indent=2, default=str))  # last: marks completeness
        for path in tmp.iterdir():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        try:
            os.rename(tmp, final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        return True

    def rows(self) -> pd.DataFrame:
        """All stored rows (from the per-run files, the source of truth)."""
        frames = [read_rows_csv(self.runs_dir / key / "rows.csv") for key in sorted(self.keys())]
        if not frames:
            return pd.DataFrame()
        return pd.concat(frames, ignore_index=True)

    def run_info(self, key: str) -> dict[str, Any]:
        return json.loads((self.runs_dir / key / "run.json").read_text())

    def rebuild_results(self) -> pd.DataFrame:
        """Rewrite ``results.csv`` (and ``results.parquet``) from the per-run files, atomically."""
        rows = self.rows()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".results-{os.getpid()}.csv"
        rows.to_csv(tmp, index=False)
        os.replace(tmp, self.root / "results.csv")
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            return rows
        if not rows.empty:
            tmp_pq = self.root / f".results-{os.getpid()}.parquet"
            rows.astype({c: str for c in rows.columns if rows[c].dtype == object}).to_parquet(tmp_pq, index=False)
            os.replace(tmp_pq, self.root / "results.parquet")
        return rows


# columns that look numeric but are labels ("0.0" is a condition, run ids are hex)
TEXT_COLUMNS = ("run_id", "tag", "condition", "mask_hash", "params_hash", "git_commit", "dataset_fingerprint",
                "split", "metric", "protocol_version", "method_package_version")


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
