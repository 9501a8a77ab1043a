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
* throughput (training samples/s) and peak GPU memory (``torch.cuda.max_memory_allocated``) are printed.

With ``--device cpu`` the device runs are CPU runs and the mixed precision run is skipped, so the script can be
tested anywhere (the CPU rerun must then match the reference exactly). The last line is ``PASS`` or ``FAIL: ...``.

    python benchmarks/gpu_check.py                    # on a CUDA machine, about 1-3 minutes on an H100
    python benchmarks/gpu_check.py --device cpu --dataset synthetic-small --epochs 1 --methods late-fusion
"""
from __future__ import annotations

import argparse
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


def module_devices(method: Any) -> set[str]:
    """Devices of every parameter and buffer of the nn.Modules a fitted method holds."""
    devices = set()
    for value in vars(method).values():
        if isinstance(value, nn.Module):
            for t in list(value.parameters()) + list(value.buffers()):
                devices.add(t.device.type)
    return devices


def linear_output_dtype(method: Any, dataset, protocol) -> str | None:
    """The dtype a linear layer of the fitted model outputs during predict (shows whether autocast is on)."""
    linear = None
    for value in vars(method).values():
        if isinstance(value, nn.Module):
            linear = next((m for m in value.modules() if isinstance(m, nn.Linear)), None)
            if linear is not None:
                break
    if linear is None:
        return None
    seen: list[torch.dtype] = []
    handle = linear.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    try:
        split = dataset.valid.subset(list(range(min(8, len(dataset.valid)))))
        method.predict(split, protocol.mask(split, protocol.conditions()[0], dataset.fingerprint))
    finally:
        handle.remove()
    return str(seen[0]).replace("torch.", "") if seen else None


def one_run(label: str, name: str, dataset, epochs: int, seed: int, device: str, amp: bool) -> Outcome:
    cls = METHODS.get(name)
    user = {"patience": 0} if "patience" in param_defaults(cls) else {}
    _, params = runner.resolve_method_params(name, dataset, user, epochs)
    protocol = runner.make_protocol("random-missing", {})
    spec = runner.RunSpec(name, params, "gpu-check", {}, dataset.fingerprint, "random-missing",
                          protocol.get_params(), seed, epochs)
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
    )


def compare(ref: Outcome, other: Outcome, exact: bool) -> list[str]:
    """Failures of ``other`` against the CPU reference."""
    problems = []
    for part in ("metrics_mean", "metrics_complete"):
        for metric, tol in TOLERANCE.items():
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
    args = parser.parse_args(argv)
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
    for name in methods:
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
            for other in outcomes[1:]:
                problems += [f"{name} {p}" for p in compare(ref, other, exact=not on_gpu)]
                if other.best_epoch != ref.best_epoch:
                    print(f"note: {name} {other.label} selected epoch {other.best_epoch}, the CPU run "
                          f"{ref.best_epoch} (close validation scores)")
    print(f"total {time.perf_counter() - start:.0f} s; tolerances vs CPU: "
          + ", ".join(f"|d{k}| <= {v}" for k, v in TOLERANCE.items())
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
