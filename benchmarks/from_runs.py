"""Training throughput per method, read from stored runs (no training): train samples × epochs run / train seconds.

    python benchmarks/from_runs.py results/synthetic-mosi [--protocol modality-missing]

The train seconds of a run include its per-epoch validation; the numbers are what the published runs cost on the
machine that made them (see each run.json for device and torch threads). A CorrKD run that loaded its teacher from
the run cache counts only its student epochs; a teacher-only run that loaded it trained nothing and is left out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from msabench.runner import load_dataset_cached


def throughput(runs_dir: Path, protocol: str | None) -> pd.DataFrame:
    rows = []
    sizes: dict[str, int] = {}
    for path in sorted(runs_dir.glob("runs/*/run.json")):
        info = json.loads(path.read_text())
        if protocol and info["protocol"] != protocol:
            continue
        if info["dataset"] not in sizes:
            sizes[info["dataset"]] = len(load_dataset_cached(info["dataset"], info.get("dataset_options") or {}).train)
        curve = info["training_curve"]
        if str((info.get("fitted") or {}).get("teacher_source_", "")).startswith("cache:"):
            curve = [e for e in curve if e.get("stage") != "teacher"]  # loaded, not trained, in this run
        epochs = len(curve)
        if not epochs:
            continue
        label = info["method"] + (f" [{info['tag']}]" if info.get("tag") else "")
        rows.append({"method": label, "dataset": info["dataset"], "epochs_run": epochs,
                     "train_seconds": info["train_seconds"],
                     "samples_per_s": sizes[info["dataset"]] * epochs / info["train_seconds"],
                     "threads": info.get("torch_threads"), "device": info["device"]})
    frame = pd.DataFrame(rows)
    return (frame.groupby(["method", "dataset", "device", "threads"])
            .agg(runs=("samples_per_s", "size"), epochs=("epochs_run", "mean"),
                 samples_per_s=("samples_per_s", "mean"), seconds_per_run=("train_seconds", "mean"))
            .round(1).reset_index().sort_values("samples_per_s", ascending=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_dir", type=Path, help="a directory written by 'msabench run'")
    parser.add_argument("--protocol", help="only runs of this protocol")
    args = parser.parse_args()
    print(throughput(args.runs_dir, args.protocol).to_string(index=False))


if __name__ == "__main__":
    main()
