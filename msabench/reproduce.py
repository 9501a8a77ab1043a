"""Re-run stored runs from their provenance and say how close the new numbers came.

Each selected run's ``run.json`` gives the whole run: method and resolved hyperparameters, dataset spec, options and
fingerprint, protocol and parameters, seed, epochs, tag, torch threads, device, mixed precision and determinism.
The run is rebuilt from exactly that (a hyperparameter the method has gained since then takes today's default and
is flagged), the dataset's fingerprint is checked before anything trains, and the run is trained and evaluated
again into a separate store (never the original). Every stored value (split × condition × metric) and the training
curve are compared with the original: bit-identical, within the stated tolerance, or different.

Bit identity is promised only for the same hardware (``hardware_id``), code (git commit), torch version and thread
count; a run that fails it there makes ``reproduce`` exit non-zero. Elsewhere the difference is reported, with the
spread over seeds of the same configuration for scale.
"""
from __future__ import annotations

import json
import random
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from msabench.hardware import hardware_id, hardware_info, hardware_summary
from msabench.plugins import DATASETS, METHODS
from msabench.registry import split_spec
from msabench.store import ResultsStore

DEFAULT_TOLERANCE = 1e-6
KEY = ["split", "condition", "metric"]
ONE_SIDE = "values exist on one side only"


class ReproduceError(ValueError):
    """Runs that cannot be reproduced as asked (bad selection, missing or changed dataset); nothing was trained."""


@dataclass
class Outcome:
    """How one reproduced run compares with the original."""

    run_id: str
    method: str
    tag: str
    seed: int
    verdict: str  # bit-identical | within tolerance | different | error
    tolerance: float
    max_abs_diff: float = float("nan")
    per_metric: pd.DataFrame = field(default_factory=pd.DataFrame)
    epochs_original: int | None = None
    epochs_reproduced: int | None = None
    same_hardware: bool | None = None  # None: the original run did not record its hardware
    same_code: bool | None = None  # None: a commit is unknown or has uncommitted changes
    same_torch: bool = True
    same_threads: bool = True
    new_params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def strict(self) -> bool:
        """Same hardware, code, torch and threads: bit identity is expected."""
        return bool(self.same_hardware and self.same_code and self.same_torch and self.same_threads)

    @property
    def failed(self) -> bool:
        """An error, or a run that should have been bit-identical and is not."""
        return self.verdict == "error" or (self.strict and self.verdict != "bit-identical")


# selection -------------------------------------------------------------------------------------------------------
def select_runs(runs_dir: str | Path, run_ids: list[str] | None = None, methods: list[str] | None = None,
                max_runs: int | None = None, sample_seed: int = 0) -> list[str]:
    """Run ids of ``runs_dir`` (a study directory with ``runs/``): the given ones, or all (of ``methods``), or a
    random sample of ``max_runs`` of them drawn with ``sample_seed``."""
    store = ResultsStore(runs_dir)
    stored = sorted(store.keys())
    if not stored:
        raise ReproduceError(f"no finished runs under {Path(runs_dir) / 'runs'}: give a directory written by "
                             f"'msabench run --out DIR'")
    if run_ids:
        missing = [r for r in run_ids if r not in stored]
        if missing:
            raise ReproduceError(f"run {missing[0]} is not in {store.runs_dir}; see its subdirectory names")
        chosen = list(dict.fromkeys(run_ids))
    else:
        chosen = stored
    if methods:
        chosen = [r for r in chosen if store.run_info(r).get("method") in methods]
        if not chosen:
            raise ReproduceError(f"no run of {', '.join(methods)} in {runs_dir}")
    if max_runs is not None:
        if max_runs < 1:
            raise ReproduceError(f"--max must be at least 1, got {max_runs}")
        if len(chosen) > max_runs:
            chosen = sorted(random.Random(sample_seed).sample(chosen, max_runs))
    return chosen


# rebuilding a run ----------------------------------------------------------------------------------------------
def dataset_spec_for(info: dict[str, Any], override: str | None) -> str:
    """The recorded dataset spec, or ``override`` when it is given and names the same dataset format."""
    recorded = info["dataset"]
    if not override:
        return recorded
    rec_name, _ = split_spec(recorded, DATASETS)
    new_name, _ = split_spec(override, DATASETS)
    return override if new_name == rec_name else recorded


def load_checked(spec: str, options: dict[str, Any], expected: str, run_id: str):
    """Load ``spec`` and refuse it when its fingerprint is not the recorded one (one-line ReproduceError)."""
    from msabench.runner import load_dataset_cached

    try:
        dataset = load_dataset_cached(spec, options)
    except (OSError, ValueError, LookupError) as exc:
        raise ReproduceError(f"run {run_id}: cannot load dataset {spec} ({exc}); if the file moved, give it with "
                             f"--dataset FORMAT:PATH") from None
    if dataset.fingerprint != expected:
        raise ReproduceError(f"run {run_id}: dataset {spec} has fingerprint {dataset.fingerprint}, the run was made "
                             f"on {expected}; give the original file with --dataset FORMAT:PATH")
    return dataset


def rebuild_spec(info: dict[str, Any], dataset, dataset_spec: str):
    """The RunSpec of a stored run; returns (spec, hyperparameters that the run.json lacks, with today's values)."""
    from msabench.params import param_defaults, resolve_params
    from msabench.runner import RunSpec, make_protocol

    cls = METHODS.get(info["method"])
    recorded = dict(info["params"])
    raw = dict(cls.dataset_defaults(dataset))  # what the runner would give a hyperparameter nobody set
    raw.update(recorded)
    params = cls.finalize_params(resolve_params(cls, raw))  # as the runner plans it (e.g. text-encoder identity)
    new = {k: params[k] for k in param_defaults(cls) if k in params and k not in recorded}
    protocol = make_protocol(info["protocol"], info.get("protocol_params") or {})
    spec = RunSpec(info["method"], params, dataset_spec, dict(info.get("dataset_options") or {}),
                   dataset.fingerprint, info["protocol"], protocol.get_params(), int(info["seed"]),
                   info.get("epochs"), info.get("tag") or "")
    return spec, new


# comparing -----------------------------------------------------------------------------------------------------
def compare_rows(original: pd.DataFrame, reproduced: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Per (split, condition, metric): both values and |Δ| (NaN on both sides counts as equal); plus notes on
    cells present on one side only and on mask hashes that differ."""
    left = original[KEY + ["mask_hash", "value"]].astype({"condition": str})
    right = reproduced[KEY + ["mask_hash", "value"]].astype({"condition": str})
    merged = left.merge(right, on=KEY, how="outer", suffixes=("_original", "_reproduced"), indicator=True)
    notes = []
    one_side = merged[merged["_merge"] != "both"]
    if len(one_side):
        notes.append(f"{len(one_side)} {ONE_SIDE} (e.g. {one_side.iloc[0]['metric']} "
                     f"{one_side.iloc[0]['split']} {one_side.iloc[0]['condition']})")
    both = merged[merged["_merge"] == "both"].copy()
    masks = both["mask_hash_original"].astype(str) != both["mask_hash_reproduced"].astype(str)
    if masks.any():
        notes.append(f"masks differ in {both[masks]['condition'].nunique()} conditions (protocol changed)")
    a = both["value_original"].astype(float).to_numpy()
    b = both["value_reproduced"].astype(float).to_numpy()
    diff = np.abs(a - b)
    diff[np.isnan(a) & np.isnan(b)] = 0.0
    diff[np.isnan(a) != np.isnan(b)] = np.inf
    both["abs_diff"] = diff
    both["identical"] = (a == b) | (np.isnan(a) & np.isnan(b))
    return both.drop(columns="_merge"), notes


def largest_per_metric(cells: pd.DataFrame, spread: pd.DataFrame | None = None) -> pd.DataFrame:
    """The largest |Δ| of each metric with where it was, and the seed spread (std) of that cell if known."""
    if cells.empty:
        return pd.DataFrame(columns=["metric", "abs_diff", "split", "condition"])
    idx = cells.groupby("metric", sort=False)["abs_diff"].idxmax()
    top = cells.loc[idx, ["metric", "abs_diff", "split", "condition", "value_original", "value_reproduced"]]
    if spread is not None and not spread.empty:
        top = top.merge(spread, on=KEY, how="left")
    return top.reset_index(drop=True)


def curve_difference(original: list[dict], reproduced: list[dict]) -> float:
    """Largest relative difference |Δ| / max(|x|, 1) of train loss and validation score over the epochs of two
    training curves (losses can be large, so not absolute); inf if their lengths differ."""
    if len(original) != len(reproduced):
        return float("inf")
    worst = 0.0
    for a, b in zip(original, reproduced):
        for k in ("train_loss", "valid_score"):
            x, y = a.get(k), b.get(k)
            if x is None and y is None:
                continue
            if x is None or y is None:
                return float("inf")
            x, y = float(x), float(y)
            if x != y and not (np.isnan(x) and np.isnan(y)):
                worst = max(worst, abs(x - y) / max(abs(x), 1.0))
    return worst


def seed_spread(store_rows: pd.DataFrame, info: dict[str, Any]) -> pd.DataFrame:
    """Std over seeds (ddof 1) per cell among the stored runs of this run's configuration (same method,
    hyperparameters, tag, protocol and dataset); empty when there is only one seed."""
    if store_rows.empty:
        return pd.DataFrame()
    same = store_rows[(store_rows["method"] == info["method"]) & (store_rows["params_hash"] == info["params_hash"])
                      & (store_rows["tag"].fillna("") == (info.get("tag") or ""))
                      & (store_rows["protocol"] == info["protocol"])
                      & (store_rows["dataset_fingerprint"] == info["dataset_fingerprint"])]
    if same["seed"].nunique() < 2:
        return pd.DataFrame()
    frame = same.astype({"condition": str}).groupby(KEY)["value"].std(ddof=1)
    return frame.rename("seed_std").reset_index()


def verdict_of(cells: pd.DataFrame, curve_diff: float, tolerance: float, one_side: bool) -> tuple[str, float]:
    """``bit-identical``: every stored value and the training curve exactly equal; ``within tolerance``: every
    stored value within ``tolerance`` (absolute); else ``different``. Returns (verdict, largest |Δ| of a value)."""
    worst = float(cells["abs_diff"].max()) if len(cells) else float("nan")
    if one_side or not len(cells):
        return "different", worst
    if bool(cells["identical"].all()) and curve_diff == 0.0:
        return "bit-identical", worst
    if worst <= tolerance:
        return "within tolerance", worst
    return "different", worst


# running -------------------------------------------------------------------------------------------------------
def _short(commit: str) -> str:
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def _code_dirs() -> list[Path]:
    import msabench
    import msabench.methods
    import msabench.protocols

    return [Path(m.__file__).resolve().parent for m in (msabench, msabench.methods, msabench.protocols)]


def code_changed(original: str, now: str) -> bool | None:
    """Whether msabench's code (package, methods, protocols) differs between two commits of this checkout;
    None when git cannot tell (a commit unknown here, no git)."""
    code = _code_dirs()
    try:
        out = subprocess.run(["git", "diff", "--quiet", original, now, "--", *map(str, code)], cwd=code[0],
                             capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: False, 1: True}.get(out.returncode)


def _commit_state(original: str, now: str) -> tuple[bool | None, str]:
    if not original or not now:
        return None, f"code: {original or 'unknown'} → {now or 'unknown'} (not a git checkout)"
    if original.endswith("-dirty") or now.endswith("-dirty"):
        return None, f"code: {_short(original)} → {_short(now)} (uncommitted changes; cannot tell)"
    if original == now:
        return True, f"code: same commit {now[:12]}"
    changed = code_changed(original, now)
    if changed is False:
        return True, f"code: same (commits {original[:12]} → {now[:12]} differ only outside msabench's code)"
    return False, f"code differs: {original[:12]} → {now[:12]}"


def _hardware_state(info: dict[str, Any], now_info: dict[str, Any]) -> tuple[bool | None, str]:
    now_id = hardware_id(now_info)
    if "hardware_id" not in info:
        return None, f"hardware: unknown for the original (its run.json predates hardware provenance) → " \
                     f"{hardware_summary(now_info)} [{now_id}]"
    if info["hardware_id"] == now_id:
        return True, f"hardware: same [{now_id}] {hardware_summary(now_info)}"
    return False, f"hardware differs: {hardware_summary(info.get('hardware'))} [{info['hardware_id']}] → " \
                  f"{hardware_summary(now_info)} [{now_id}]"


def reproduce_run(info: dict[str, Any], original_rows: pd.DataFrame, store: ResultsStore, dataset_override: str | None,
                  tolerance: float, threads: int | None, device: str | None,
                  spread: pd.DataFrame | None = None) -> Outcome:
    """Rebuild, re-run and compare one stored run (its dataset must already pass :func:`load_checked`)."""
    from msabench.runner import ExecOptions, execute_run, git_commit

    spec_text = dataset_spec_for(info, dataset_override)
    dataset = load_checked(spec_text, info.get("dataset_options") or {}, info["dataset_fingerprint"], info["run_id"])
    spec, new = rebuild_spec(info, dataset, spec_text)
    recorded_threads = info.get("torch_threads")
    run_threads = threads or recorded_threads
    run_device = device or str(info.get("device") or "cpu")
    options = ExecOptions(device=run_device, amp=bool(info.get("amp", False)),
                          deterministic=bool(info.get("deterministic", False)), progress=False, threads=run_threads,
                          cache_dir=str(store.root.resolve() / "cache"))
    record = execute_run(spec, options, dataset)
    store.save(record)
    cells, notes = compare_rows(original_rows, record.rows)
    curve_diff = curve_difference(info.get("training_curve") or [], record.info.get("training_curve") or [])
    verdict, worst = verdict_of(cells, curve_diff, tolerance, any(ONE_SIDE in n for n in notes))
    out = Outcome(run_id=info["run_id"], method=info["method"], tag=info.get("tag") or "", seed=int(info["seed"]),
                  verdict=verdict, tolerance=tolerance, max_abs_diff=worst,
                  per_metric=largest_per_metric(cells, spread),
                  epochs_original=len(info.get("training_curve") or []) or None,
                  epochs_reproduced=len(record.info.get("training_curve") or []) or None, new_params=new)
    out.same_code, code_note = _commit_state(info.get("git_commit", ""), git_commit())
    out.same_hardware, hw_note = _hardware_state(info, record.info["hardware"])
    out.same_torch = info.get("torch_version") == torch.__version__
    out.same_threads = record.info.get("torch_threads") == recorded_threads
    out.notes = [code_note, hw_note] + notes
    if not out.same_torch:
        out.notes.append(f"torch differs: {info.get('torch_version')} → {torch.__version__}")
    if run_threads != recorded_threads:
        out.notes.append(f"threads: recorded {recorded_threads}, reproduced with {run_threads}")
    if new:
        out.notes.append("new since the run (absent from its run.json, today's defaults used): "
                         + ", ".join(f"{k}={v!r}" for k, v in new.items()))
    if record.key != info["run_id"]:
        out.notes.append(f"the rebuilt run has another id ({record.key}): its identity changed")
    if curve_diff != 0.0:
        out.notes.append("training curve: " + ("another number of epochs" if np.isinf(curve_diff)
                                               else f"largest relative |Δ| {curve_diff:.3g}"))
    return out


def reproduce(runs_dir: str | Path, run_ids: list[str] | None = None, out: str | Path | None = None,
              max_runs: int | None = None, sample_seed: int = 0, tolerance: float = DEFAULT_TOLERANCE,
              threads: int | None = None, device: str | None = None, dataset: str | None = None,
              methods: list[str] | None = None, on_outcome=None) -> list[Outcome]:
    """Reproduce runs of ``runs_dir`` into ``out`` (a temporary directory when None; never ``runs_dir``).

    Every dataset is loaded and its fingerprint checked before the first run trains (ReproduceError otherwise).
    ``on_outcome`` is called with each Outcome as it is ready.
    """
    from msabench.params import ParameterError
    from msabench.registry import RegistryError

    runs_dir = Path(runs_dir)
    if tolerance < 0:
        raise ReproduceError(f"--tolerance must be at least 0, got {tolerance}")
    if threads is not None and threads < 1:
        raise ReproduceError(f"--threads must be at least 1, got {threads}")
    if out is not None and Path(out).resolve() == runs_dir.resolve():
        raise ReproduceError(f"--out {out} is the directory being reproduced; choose another one")
    chosen = select_runs(runs_dir, run_ids, methods, max_runs, sample_seed)
    source = ResultsStore(runs_dir)
    infos = {r: source.run_info(r) for r in chosen}
    for r, info in infos.items():  # every dataset before any training
        load_checked(dataset_spec_for(info, dataset), info.get("dataset_options") or {},
                     info["dataset_fingerprint"], r)
    all_rows = source.rows()
    tmp = tempfile.TemporaryDirectory(prefix="msabench-reproduce-") if out is None else None
    store = ResultsStore(tmp.name if tmp else out)
    store.ensure_writable()
    outcomes = []
    try:
        for r in chosen:
            info = infos[r]
            original = source.run_rows(r)
            try:
                outcome = reproduce_run(info, original, store, dataset, tolerance, threads, device,
                                        seed_spread(all_rows, info))
            except (RegistryError, ParameterError, ValueError, TypeError, RuntimeError) as exc:
                outcome = Outcome(run_id=r, method=info.get("method", "?"), tag=info.get("tag") or "",
                                  seed=int(info.get("seed", 0)), verdict="error", tolerance=tolerance,
                                  notes=[f"{type(exc).__name__}: {exc}"])
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        if not tmp:
            store.rebuild_results()
            outcomes_frame(outcomes).to_csv(store.root / "reproduce.csv", index=False)
    finally:
        if tmp:
            tmp.cleanup()
    return outcomes


# reporting -----------------------------------------------------------------------------------------------------
def format_outcome(o: Outcome) -> str:
    """A few lines per run for the terminal."""
    label = o.method + (f" [{o.tag}]" if o.tag else "")
    head = f"{o.run_id}  {label} seed {o.seed}: {o.verdict}"
    if o.verdict == "within tolerance":
        head += f" {o.tolerance:g} (largest |Δ| {o.max_abs_diff:.3g})"
    elif o.verdict == "different":
        head += f" (largest |Δ| {o.max_abs_diff:.3g} > tolerance {o.tolerance:g})"
    if o.strict and o.verdict != "bit-identical":
        head += "  ← NOT REPRODUCED on the same hardware, code, torch and threads"
    lines = [head]
    if o.epochs_original is not None:
        lines.append(f"    epochs trained: {o.epochs_original} → {o.epochs_reproduced}")
    if not o.per_metric.empty and o.verdict != "bit-identical":
        parts = []
        for row in o.per_metric.itertuples(index=False):
            if row.abs_diff == 0:
                continue
            part = f"{row.metric} {row.abs_diff:.3g} ({row.split} {row.condition})"
            std = getattr(row, "seed_std", float("nan"))
            if std == std:
                part += f" seed std {std:.3g}"
            parts.append(part)
        same = len(o.per_metric) - len(parts)
        lines.append("    largest |Δ| per metric: " + ("; ".join(parts) or "none")
                     + (f" (the other {same} metrics identical)" if parts and same else ""))
    lines += [f"    {n}" for n in o.notes]
    return "\n".join(lines)


def outcomes_frame(outcomes: list[Outcome]) -> pd.DataFrame:
    """One row per run: the verdict, the largest difference and what was (not) the same."""
    rows = []
    for o in outcomes:
        test = o.per_metric
        rows.append({"run_id": o.run_id, "method": o.method, "tag": o.tag, "seed": o.seed, "verdict": o.verdict,
                     "tolerance": o.tolerance, "max_abs_diff": o.max_abs_diff,
                     "epochs_original": o.epochs_original, "epochs_reproduced": o.epochs_reproduced,
                     "same_hardware": o.same_hardware, "same_code": o.same_code, "same_torch": o.same_torch,
                     "same_threads": o.same_threads, "new_params": json.dumps(o.new_params, default=str),
                     "largest": "; ".join(f"{r.metric}={r.abs_diff:.3g}" for r in test.itertuples(index=False))
                     if not test.empty else ""})
    return pd.DataFrame(rows)


def summary_line(outcomes: list[Outcome]) -> str:
    counts = pd.Series([o.verdict for o in outcomes]).value_counts()
    failed = sum(o.failed for o in outcomes)
    text = ", ".join(f"{n} {v}" for v, n in counts.items())
    return f"{len(outcomes)} runs: {text}" + (f"; {failed} failed (see above)" if failed else "")


def hardware_here(device: str = "cpu") -> str:
    """This machine in one line with its id."""
    info = hardware_info(device)
    return f"{hardware_summary(info)} [{hardware_id(info)}]"
