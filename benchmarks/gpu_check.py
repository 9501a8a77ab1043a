"""The GPU path, end to end: a short training on the accelerator with and without mixed precision, against CPU.

For late fusion (and corrkd and mult when registered) on ``synthetic-mosi`` under ``random-missing``, with the same
seed and epochs:

1. a CPU reference run (fp32),
2. a run on the device with mixed precision (the default: bf16 where supported, else fp16),
3. a run on the device without it (``--no-amp``),

each trained through the runner's ``fit_method`` (validation-only model selection) and evaluated on the test split
under all 11 conditions. Checks:

* after ``fit`` every parameter and buffer of the method's modules lives on the requested device, and with mixed
  precision the model's linear layers compute in the reduced dtype (and in fp32 without it);
* the test metrics averaged over the conditions r = 0.0 ... 0.9 agree with the CPU run: |dNon0_F1| <= 0.03 and
  |dMAE| <= 0.05 (see TOLERANCE below for why), and so do those of the complete condition (r = 0.0);
* the CPU-trained model, moved to the device, predicts the test split (complete, r = 0.5, r = 0.9) like it does
  on the CPU: max |prediction difference| <= FORWARD_TOLERANCE (fp32: cuDNN convolutions use TF32 by default;
  mixed precision: bf16 activations). This checks the device path itself, free of training noise;
* throughput (training samples/s) and peak GPU memory (``torch.cuda.max_memory_allocated``) are printed.

``--check determinism`` (part of ``--check all``, the default) trains each method twice on the device with the
switches ``--deterministic`` sets (``msabench.runner.set_deterministic``) and checks the two give identical test
predictions; where they differ it names the operations torch reports as nondeterministic (its warnings, and the
error of one run under ``torch.use_deterministic_algorithms(True)`` without ``warn_only``).

With ``--device cpu`` the device runs are CPU runs and the mixed precision run is skipped, so the script can be
tested anywhere (the CPU rerun must then match the reference exactly). The last line is ``PASS`` or ``FAIL: ...``.

    python benchmarks/gpu_check.py                    # on a CUDA machine, about 1-3 minutes on an H100
    python benchmarks/gpu_check.py --device cpu --dataset synthetic-small --epochs 1 --methods late-fusion
"""
from __future__ import annotations

import argparse
import copy
import os
import warnings
import logging
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from msabench import runner
from msabench.params import param_defaults
from msabench.plugins import METHODS

# Why these tolerances: same data, masks, seed, initial weights (drawn on the CPU generator, then moved) and batch
# order. What differs: floating-point rounding (other kernels and summation orders; bf16 keeps 8 mantissa bits) and
# dropout, which on CUDA draws from the CUDA generator, so its masks differ from the CPU's. Measured on CPU for late
# fusion on synthetic-mosi, 3 epochs, seed 1111: another dropout stream alone moves the test Non0_F1 by ~0.001 and
# MAE by 0.007-0.010 (mean over r = 0.0-0.9 and at r = 0.0). Non0_F1 changes by ~0.0015 per near-zero prediction
# whose sign flips, so 0.03 allows ~20 flips; MAE here is ~0.7-1.3, so 0.05 is 4-7%: both ~5x the noise, while a
# real fault on the device path (a mask or feature left unmasked, standardisation skipped, the loss computed in
# bf16 and diverging) costs 0.05-0.3.
TOLERANCE = {"Non0_F1": 0.03, "MAE": 0.05}
# MulT at 3 epochs is far from converged and two of its epochs often have near-equal validation scores, so rounding
# alone moves its test metrics by more than the above: on 2026-11-27 two CPU runs of this script (torch 2.11, 16
# threads, and torch 2.13, 2 threads; same seed) gave test MAE 0.727 / 0.770 (mean over conditions) and 0.680 /
# 0.766 (complete), and the CUDA fp32 run selected epoch 0 where the CPU selected epoch 2 (MAE 0.955). Its
# end-to-end tolerance is therefore wide; the forward check below is what tests its device path.
METHOD_TOLERANCE = {"mult": {"Non0_F1": 0.06, "MAE": 0.3}}
# predictions of one CPU-trained model on CPU and on the device (labels in [-3, 3])
FORWARD_TOLERANCE = {"fp32": 0.02, "amp": 0.15}
FORWARD_CONDITIONS = ("0.0", "0.5", "0.9")
DEFAULT_METHODS = ("late-fusion", "corrkd", "mult")
# left out of the mean: with every frame dropped a model outputs one constant, and whether that constant is just
# above or just below zero (an accident of training noise) swings Non0_F1 between the two one-class values
ALL_MISSING = "1.0"


@dataclass
class Outcome:
    label: str
    metrics_mean: dict[str, float]
    metrics_complete: dict[str, float]
    samples_per_s: float
    fit_s: float
    epochs: int
    best_epoch: int | None
    peak_mib: float | None
    devices: set[str]
    linear_dtype: str | None
    method: Any = None
    protocol: Any = None


def module_devices(method: Any) -> set[str]:
    """Devices of every parameter and buffer of the nn.Modules a fitted method holds."""
    devices = set()
    for value in vars(method).values():
        if isinstance(value, nn.Module):
            for t in list(value.parameters()) + list(value.buffers()):
                devices.add(t.device.type)
    return devices


def linear_output_dtype(method: Any, dataset, protocol) -> str | None:
    """The dtype the fitted model's linear layers output during predict (shows whether autocast is on).

    Hooks every ``nn.Linear`` (the first one in module order may be a projection that attention modules use
    through its weight only, whose hook never fires) and reports the first output seen."""
    linears = [m for value in vars(method).values() if isinstance(value, nn.Module)
               for m in value.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return None
    seen: list[torch.dtype] = []
    handles = [m.register_forward_hook(lambda mod, args, out: seen.append(out.dtype)) for m in linears]
    try:
        split = dataset.valid.subset(list(range(min(8, len(dataset.valid)))))
        method.predict(split, protocol.mask(split, protocol.conditions()[0], dataset.fingerprint))
    finally:
        for handle in handles:
            handle.remove()
    return str(seen[0]).replace("torch.", "") if seen else None


def run_spec(name: str, dataset, epochs: int, seed: int) -> runner.RunSpec:
    """A run of ``name`` under random-missing for exactly ``epochs`` epochs (early stopping off)."""
    user = {"patience": 0} if "patience" in param_defaults(METHODS.get(name)) else {}
    _, params = runner.resolve_method_params(name, dataset, user, epochs)
    return runner.RunSpec(name, params, "gpu-check", {}, dataset.fingerprint, "random-missing",
                          runner.make_protocol("random-missing", {}).get_params(), seed, epochs)


def one_run(label: str, name: str, dataset, epochs: int, seed: int, device: str, amp: bool) -> Outcome:
    spec = run_spec(name, dataset, epochs, seed)
    options = runner.ExecOptions(device=device, amp=amp, progress=False)
    dev = runner.resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    method, protocol, fit_s = runner.fit_method(spec, dataset, options)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    rows, _ = runner.evaluate(method, dataset, protocol, ["test"], device=dev)
    values: dict[str, list[float]] = {k: [] for k in TOLERANCE}
    complete: dict[str, float] = {}
    for r in rows:
        if r["metric"] in TOLERANCE:
            if r["condition"] != ALL_MISSING:
                values[r["metric"]].append(r["value"])
            if r["condition"] == protocol.conditions()[0]:
                complete[r["metric"]] = r["value"]
    curve = method.training_curve()
    best = max(curve, key=lambda c: c["valid_score"])["epoch"] if curve else None
    return Outcome(
        label=label,
        metrics_mean={k: float(np.nanmean(v)) for k, v in values.items()},
        metrics_complete=complete,
        samples_per_s=max(len(curve), 1) * len(dataset.train) / fit_s,
        fit_s=fit_s,
        epochs=len(curve),
        best_epoch=best,
        peak_mib=peak,
        devices=module_devices(method),
        linear_dtype=linear_output_dtype(method, dataset, protocol),
        method=method,
        protocol=protocol,
    )


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, (nn.Module, torch.Tensor)):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_moved(v, device) for v in value)
    return value


def moved_method(method: Any, device: torch.device, amp: bool) -> Any:
    """A copy of a fitted method with its modules and tensors on ``device`` (mixed precision on or off)."""
    clone = copy.deepcopy(method)
    for name, value in list(vars(clone).items()):
        setattr(clone, name, _moved(value, device))
    clone.device_ = device
    clone.amp_ = bool(amp and device.type == "cuda")
    clone._prepared_cache = None
    return clone


def forward_difference(method: Any, device: torch.device, amp: bool, dataset, protocol) -> float:
    """Max |prediction difference| on the test split between a CPU-fitted method and its copy on ``device``."""
    other = moved_method(method, device, amp)
    conditions = [c for c in protocol.conditions() if c in FORWARD_CONDITIONS] or protocol.conditions()[:1]
    worst = 0.0
    for condition in conditions:
        mask = protocol.mask(dataset.test, condition, dataset.fingerprint)
        a = np.asarray(method.predict(dataset.test, mask), dtype=np.float64)
        b = np.asarray(other.predict(dataset.test, mask), dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(a - b))))
    return worst


def _fit_predictions(name: str, dataset, epochs: int, seed: int, device: torch.device
                     ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Fit once on ``device`` (mixed precision on); test predictions per condition and the warnings seen."""
    spec = run_spec(name, dataset, epochs, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method, protocol, _ = runner.fit_method(spec, dataset, runner.ExecOptions(device=str(device), amp=True,
                                                                                   progress=False))
        conditions = [c for c in protocol.conditions() if c in FORWARD_CONDITIONS]
        preds = {c: np.asarray(method.predict(dataset.test, protocol.mask(dataset.test, c, dataset.fingerprint)))
                 for c in conditions}
    notes = sorted({str(w.message).split("\n")[0][:160] for w in caught
                    if "determinis" in str(w.message).lower()})
    return preds, notes


def determinism_check(name: str, dataset, epochs: int, seed: int, device: torch.device) -> list[str]:
    """Two runs under ``set_deterministic``'s switches must give identical test predictions."""
    runner.set_deterministic()
    try:
        first, notes = _fit_predictions(name, dataset, epochs, seed, device)
        second, _ = _fit_predictions(name, dataset, epochs, seed, device)
        diff = max(float(np.max(np.abs(first[c].astype(np.float64) - second[c]))) for c in first)
        print(f"{name:<12} deterministic reruns on {device.type}: max |dprediction| = {diff:.2e}", flush=True)
        for note in notes:
            print(f"{name:<12}   torch warns: {note}")
        if diff == 0.0:
            return []
        torch.use_deterministic_algorithms(True)  # strict: the first nondeterministic op raises
        try:
            _fit_predictions(name, dataset, epochs, seed, device)
        except RuntimeError as exc:
            print(f"{name:<12}   strict mode: {str(exc).splitlines()[0][:200]}")
        return [f"{name}: deterministic reruns differ by {diff:.3g}"]
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def compare(ref: Outcome, other: Outcome, exact: bool, tolerance: dict[str, float]) -> list[str]:
    """Failures of ``other`` against the CPU reference."""
    problems = []
    for part in ("metrics_mean", "metrics_complete"):
        for metric, tol in tolerance.items():
            a, b = getattr(ref, part).get(metric, np.nan), getattr(other, part).get(metric, np.nan)
            delta = abs(a - b)
            limit = 0.0 if exact else tol
            if not np.isfinite(delta) or delta > limit:
                where = "mean over conditions" if part == "metrics_mean" else "complete condition"
                problems.append(f"{other.label}: |d{metric}| {where} = {delta:.4f} > {limit}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cuda:N, mps, cpu")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="methods to check; those not registered are skipped (late-fusion is required)")
    parser.add_argument("--dataset", default="synthetic-mosi")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--check", choices=("all", "agreement", "determinism"), default="all",
                        help="agreement with the CPU (training and forward), determinism of reruns, or both")
    args = parser.parse_args(argv)
    # cuBLAS reads this when CUDA starts; only the determinism check depends on it
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    try:
        device = runner.resolve_device(args.device)
    except runner.RunError as exc:
        print(f"FAIL: {exc}")
        return 1
    on_gpu = device.type != "cpu"
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)}, bf16 "
                                f"{'yes' if torch.cuda.is_bf16_supported() else 'no'})" if device.type == "cuda"
                                else "")
          + f"; torch {torch.__version__}, CUDA {torch.version.cuda}; python {platform.python_version()}; "
            f"{args.dataset}, {args.epochs} epochs, seed {args.seed}", flush=True)
    registered = set(METHODS.names())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    skipped = [m for m in methods if m not in registered]
    methods = [m for m in methods if m in registered]
    if skipped:
        print(f"not registered, skipped: {', '.join(skipped)}")
    problems: list[str] = []
    if "late-fusion" not in methods:
        problems.append("late-fusion is not registered")
    dataset = runner.load_dataset_cached(args.dataset)
    start = time.perf_counter()
    header = (f"{'method':<12} {'run':<14} {'Non0_F1':>8} {'MAE':>7} {'Non0_F1@0':>9} {'MAE@0':>7} "
              f"{'samples/s':>10} {'fit s':>7} {'best ep':>7} {'peak MiB':>9} {'dtype':>9}  devices")
    print(header)
    for name in methods if args.check in ("all", "agreement") else []:
        runs = [("cpu reference", "cpu", False)]
        if on_gpu:
            runs += [(f"{device.type} amp", str(device), True), (f"{device.type} fp32", str(device), False)]
        else:
            runs += [("cpu rerun", "cpu", False)]
        outcomes = []
        for label, dev, amp in runs:
            try:
                o = one_run(label, name, dataset, args.epochs, args.seed, dev, amp)
            except Exception as exc:  # noqa: BLE001 - reported as a failure, the other methods go on
                problems.append(f"{name} {label}: {type(exc).__name__}: {exc}")
                break
            outcomes.append(o)
            peak = f"{o.peak_mib:.0f}" if o.peak_mib is not None else "-"
            print(f"{name:<12} {label:<14} {o.metrics_mean['Non0_F1']:>8.4f} {o.metrics_mean['MAE']:>7.4f} "
                  f"{o.metrics_complete.get('Non0_F1', np.nan):>9.4f} {o.metrics_complete.get('MAE', np.nan):>7.4f} "
                  f"{o.samples_per_s:>10.0f} {o.fit_s:>7.2f} {str(o.best_epoch):>7} {peak:>9} "
                  f"{str(o.linear_dtype):>9}  {','.join(sorted(o.devices))}", flush=True)
            want = device.type if dev != "cpu" else "cpu"
            if o.devices and o.devices != {want}:
                problems.append(f"{name} {label}: model tensors on {sorted(o.devices)}, expected {want}")
            if o.linear_dtype is not None:
                reduced = o.linear_dtype in ("bfloat16", "float16")
                if amp and dev != "cpu" and device.type == "cuda" and not reduced:
                    problems.append(f"{name} {label}: mixed precision on but linear layers compute in "
                                    f"{o.linear_dtype}")
                if not amp and reduced:
                    problems.append(f"{name} {label}: mixed precision off but linear layers compute in "
                                    f"{o.linear_dtype}")
        if len(outcomes) == len(runs):
            ref = outcomes[0]
            tolerance = METHOD_TOLERANCE.get(name, TOLERANCE)
            for other in outcomes[1:]:
                problems += [f"{name} {p}" for p in compare(ref, other, exact=not on_gpu, tolerance=tolerance)]
                if other.best_epoch != ref.best_epoch:
                    print(f"note: {name} {other.label} selected epoch {other.best_epoch}, the CPU run "
                          f"{ref.best_epoch} (close validation scores)")
        if outcomes:
            forward_runs = [("amp", True), ("fp32", False)] if device.type == "cuda" else [("fp32", False)]
            for kind, amp in forward_runs:
                try:
                    diff = forward_difference(outcomes[0].method, device, amp, dataset, outcomes[0].protocol)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{name} forward {kind}: {type(exc).__name__}: {exc}")
                    continue
                limit = FORWARD_TOLERANCE[kind] if on_gpu else 0.0
                print(f"{name:<12} forward {kind:<6} CPU-trained model on {device.type}: max |dprediction| = "
                      f"{diff:.2e} (limit {limit})", flush=True)
                if not diff <= limit:
                    problems.append(f"{name} forward {kind}: max |dprediction| {diff:.3g} > {limit}")
            outcomes.clear()
    if args.check in ("all", "determinism"):
        for name in methods:
            try:
                problems += determinism_check(name, dataset, args.epochs, args.seed, device)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{name} determinism: {type(exc).__name__}: {exc}")
    print(f"total {time.perf_counter() - start:.0f} s; tolerances vs CPU: "
          + ", ".join(f"|d{k}| <= {v}" for k, v in TOLERANCE.items())
          + "".join(f"; {m}: " + ", ".join(f"|d{k}| <= {v}" for k, v in t.items())
                    for m, t in METHOD_TOLERANCE.items())
          + ("" if on_gpu else " (CPU rerun: exact)"))
    if problems:
        for p in problems:
            print(f"  - {p}")
        print(f"FAIL: {len(problems)} problem(s)")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
