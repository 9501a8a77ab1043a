"""Provenance of a run: which code, data, protocol, seed and machine produced it (run.json and every row)."""
from __future__ import annotations

import functools
import json
import platform
import subprocess
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import msabench
from msabench.params import params_hash
from msabench.plugins import DATASETS, METHODS, PROTOCOLS
from msabench.registry import split_spec

if TYPE_CHECKING:
    from msabench.data.base import MultimodalDataset
    from msabench.method import Method
    from msabench.protocol import EvalProtocol
    from msabench.runner import RunSpec


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


def fitted_facts(method: Method) -> dict[str, Any]:
    """Scalar fitted attributes (scikit-learn's trailing underscore), e.g. GCNet's ``conversation_mode_``."""
    return {k: v for k, v in vars(method).items()
            if k.endswith("_") and not k.startswith("_") and isinstance(v, (str, int, float, bool))}


def provenance(spec: RunSpec, dataset: MultimodalDataset, protocol: EvalProtocol, device: torch.device,
               started: datetime, finished: datetime, train_seconds: float) -> dict[str, Any]:
    """run.json's provenance fields of a finished run (see ROW_COLUMNS for the ones every row repeats)."""
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
