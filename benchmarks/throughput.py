"""Training throughput per method, the runner's time outside the model, and the cost of evaluation.

For every registered method (or ``--methods a,b``) one run on ``synthetic-mosi`` under ``random-missing``: a fixed
number of epochs (``--epochs``, default 2; early stopping off with patience 0 where the method has it), then the
evaluation of the test and validation splits under all 11 conditions, then storing the run. Reported:

* samples/s: training samples processed per second of ``fit`` (epochs trained x train size / fit seconds; the
  per-epoch validation scoring is part of ``fit``),
* eval/epoch: seconds to evaluate all conditions (test only, and test + valid) over the seconds of one training
  epoch,
* for every method whose model comes from ``build`` (late fusion included): the share of the run's wall time spent
  outside the model's forward, backward and optimizer step, and where it goes (mask drawing, masking, batch
  slicing, standardisation, metrics, mask hashing, result writing, the rest).

The timers are put in by this script (wrappers and module hooks, removed afterwards); the library's hot path has
no timing code. On CUDA every timer synchronises, which slows the run a little but attributes time correctly.

    python benchmarks/throughput.py                       # every registered method
    python benchmarks/throughput.py --methods late-fusion --epochs 3 --json out.json
    python benchmarks/throughput.py --methods late-fusion --epochs 30 --repeats 5   # medians and ranges
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch

from msabench import runner, training
from msabench.params import param_defaults
from msabench.plugins import METHODS
from msabench.protocol import EvalProtocol, TrainingSchedule
from msabench.store import ResultsStore
from msabench.training import PreparedSplit, TorchMethod

log = logging.getLogger("throughput")

MODEL = ("forward", "loss", "backward", "optimizer")
# (owner, attribute, label) of the pieces outside the model that are timed
OVERHEAD_PIECES: list[tuple[Any, str, str]] = [
    (TrainingSchedule, "mask", "draw training masks"),
    (EvalProtocol, "mask", "draw evaluation masks"),
    (PreparedSplit, "masked_batch", "slice + mask batches"),
    (training.copy, "deepcopy", "checkpoint copies"),
    (TorchMethod, "prepare", "device copy + standardise"),
    (training, "compute_metrics", "metrics (validation)"),
    (runner, "compute_metrics", "metrics (evaluation)"),
    (runner, "mask_hash", "mask hashes"),
    (runner, "prediction_frame", "prediction frames"),
    (ResultsStore, "save", "write run"),
    (ResultsStore, "rebuild_results", "rebuild results.csv"),
]


class Timers:
    """Accumulated seconds per label; synchronises CUDA around each timed call when ``cuda`` is set."""

    def __init__(self, cuda: bool) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = cuda
        self._active = 0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def time(self, label: str) -> Iterator[None]:
        if self._active:  # nested inside another timed piece: counted there already
            yield
            return
        self._active += 1
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[label] += time.perf_counter() - start
            self._active -= 1

    def wrap(self, fn: Callable, label: str) -> Callable:
        def timed(*args, **kwargs):
            with self.time(label):
                return fn(*args, **kwargs)

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed


@contextmanager
def patched(owner: Any, attr: str, value: Any) -> Iterator[None]:
    """Set ``owner.attr`` for the duration; an inherited attribute is removed again rather than copied down."""
    own = vars(owner)
    had, original = attr in own, own.get(attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        if had:
            setattr(owner, attr, original)
        else:
            delattr(owner, attr)


@contextmanager
def instrument(timers: Timers, method_cls: type) -> Iterator[None]:
    """Time the model (forward hooks, Tensor.backward, optimizer step) and the pieces outside it."""
    with ExitStack() as stack:
        for owner, attr, label in OVERHEAD_PIECES:
            stack.enter_context(patched(owner, attr, timers.wrap(getattr(owner, attr), label)))
        stack.enter_context(patched(torch.Tensor, "backward", timers.wrap(torch.Tensor.backward, "backward")))
        stack.enter_context(patched(training, "task_loss", timers.wrap(training.task_loss, "loss")))

        if issubclass(method_cls, TorchMethod):
            build, make_optimizer = method_cls.build, method_cls.make_optimizer
            starts: list[float] = []

            def pre_hook(module, args):
                if not timers._active:
                    timers.sync()
                    starts.append(time.perf_counter())

            def post_hook(module, args, output):
                if starts:
                    timers.sync()
                    timers.seconds["forward"] += time.perf_counter() - starts.pop()

            def timed_build(self, *args, **kwargs):
                model = build(self, *args, **kwargs)
                model.register_forward_pre_hook(pre_hook)
                model.register_forward_hook(post_hook)
                return model

            def timed_optimizer(self, params):
                opt = make_optimizer(self, params)
                opt.step = timers.wrap(opt.step, "optimizer")
                opt.zero_grad = timers.wrap(opt.zero_grad, "optimizer")
                return opt

            stack.enter_context(patched(method_cls, "build", timed_build))
            stack.enter_context(patched(method_cls, "make_optimizer", timed_optimizer))
        yield


def split_evaluation(timers: Timers) -> Callable:
    """``runner.evaluate`` timed per split (same rows, same order)."""
    evaluate = runner.evaluate

    def per_split(method, dataset, protocol, splits, keep_predictions=False, device=None):
        rows, frames = [], []
        for name in splits:
            start = time.perf_counter()
            r, f = evaluate(method, dataset, protocol, [name], keep_predictions, device=device)
            timers.seconds[f"eval {name}"] += time.perf_counter() - start
            rows.extend(r)
            if f is not None:
                frames.append(f)
        import pandas as pd

        return rows, (pd.concat(frames, ignore_index=True) if frames else None)

    return per_split


def benchmark_method(name: str, dataset_spec: str, epochs: int, options: runner.ExecOptions,
                     seed: int) -> dict[str, Any]:
    """One instrumented run of ``name``: fit, evaluate every condition, store."""
    dataset = runner.load_dataset_cached(dataset_spec)
    cls = METHODS.get(name)
    user = {"patience": 0} if "patience" in param_defaults(cls) else {}
    _, params = runner.resolve_method_params(name, dataset, user, epochs)
    protocol = runner.make_protocol("random-missing", {})
    spec = runner.RunSpec(name, params, dataset_spec, {}, dataset.fingerprint, "random-missing",
                          protocol.get_params(), seed, epochs)
    device = runner.resolve_device(options.device)
    timers = Timers(device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp, instrument(timers, cls), \
            patched(runner, "evaluate", split_evaluation(timers)):
        store = ResultsStore(tmp)
        timers.sync()
        start = time.perf_counter()
        record = runner.execute_run(spec, options, dataset)
        store.save(record)
        store.rebuild_results()
        timers.sync()
        total = time.perf_counter() - start
    info = record.info
    n_epochs = max(len(info["training_curve"]), 1)
    epoch_s = info["train_seconds"] / n_epochs
    model_s = sum(timers.seconds.get(k, 0.0) for k in MODEL)
    pieces = {label: timers.seconds.get(label, 0.0) for _, _, label in OVERHEAD_PIECES}
    result = {
        "method": name,
        "device": str(device),
        "amp": info.get("amp"),
        "epochs_trained": n_epochs,
        "n_train": len(dataset.train),
        "fit_s": info["train_seconds"],
        "epoch_s": epoch_s,
        "samples_per_s": n_epochs * len(dataset.train) / info["train_seconds"],
        "eval_test_s": timers.seconds.get("eval test", 0.0),
        "eval_all_s": info["eval_seconds"],
        "eval_test_per_epoch": timers.seconds.get("eval test", 0.0) / epoch_s,
        "eval_all_per_epoch": info["eval_seconds"] / epoch_s,
        "total_s": total,
        "model_s": model_s,
        "forward_s": timers.seconds.get("forward", 0.0),
        "loss_s": timers.seconds.get("loss", 0.0),
        "backward_s": timers.seconds.get("backward", 0.0),
        "optimizer_s": timers.seconds.get("optimizer", 0.0),
        "outside_model_share": (total - model_s) / total if model_s > 0 else float("nan"),
        "pieces_s": pieces,
        "untimed_s": total - model_s - sum(pieces.values()),
        "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }
    return result


def default_methods() -> list[str]:
    """Every registered method except the test suite's plugins."""
    out = []
    for name in METHODS.names():
        try:
            package = METHODS.info(name).package
        except Exception:  # noqa: BLE001 - a broken plugin is skipped
            continue
        if name.startswith("test-") or package.startswith("msabench-testplugin"):
            continue
        out.append(name)
    return out


SUMMARISED = ("samples_per_s", "eval_test_per_epoch", "eval_all_per_epoch", "outside_model_share")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one method as one result: the run with the median outside-model share (its breakdown),
    with the median of each summarised figure, its min and max (``ranges``) and every run (``runs``)."""
    if len(runs) == 1:
        return runs[0]
    ordered = sorted(runs, key=lambda r: r["outside_model_share"])
    result = dict(ordered[(len(ordered) - 1) // 2])
    for key in SUMMARISED:
        result[key] = statistics.median(r[key] for r in runs)
    result["ranges"] = {key: (min(r[key] for r in runs), max(r[key] for r in runs)) for key in SUMMARISED}
    result["runs"] = runs
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| method | epochs | fit s | samples/s | eval test / epoch | eval test+valid / epoch | outside model |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} | | | | | |")
            continue
        share = r["outside_model_share"]
        ranges = r.get("ranges", {})

        def spread(key: str, fmt: str, scale: float = 1.0) -> str:
            if key not in ranges:
                return ""
            lo, hi = ranges[key]
            return f" ({format(scale * lo, fmt)}–{format(scale * hi, fmt)})"

        name = r["method"] + (f", median of {len(r['runs'])}" if "runs" in r else "")
        lines.append(f"| {name} | {r['epochs_trained']} | {r['fit_s']:.1f} | {r['samples_per_s']:.0f}"
                     f"{spread('samples_per_s', '.0f')} | {r['eval_test_per_epoch']:.2f}"
                     f"{spread('eval_test_per_epoch', '.2f')} | {r['eval_all_per_epoch']:.2f}"
                     f"{spread('eval_all_per_epoch', '.2f')} | "
                     f"{'n/a' if share != share else f'{100 * share:.1f}%'}"
                     f"{spread('outside_model_share', '.1f', 100.0)} |")
    return "\n".join(lines)


def breakdown(r: dict[str, Any]) -> str:
    total = r["total_s"]
    rows = [("model: forward", r["forward_s"]), ("model: loss", r.get("loss_s", 0.0)),
            ("model: backward", r["backward_s"]),
            ("model: optimizer step", r["optimizer_s"])]
    rows += sorted(r["pieces_s"].items(), key=lambda kv: -kv[1])
    rows.append(("other (untimed: loop, provenance, setup)", r["untimed_s"]))
    lines = [f"Where the wall time of one {r['method']} run goes ({total:.1f} s, {r['device']}):", "",
             "| part | s | share |", "|---|---:|---:|"]
    lines += [f"| {label} | {sec:.2f} | {100 * sec / total:.1f}% |" for label, sec in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    parser.add_argument("--dataset", default="synthetic-mosi")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=1111)
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per method; with more than one the table gives medians and (min-max)")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else default_methods()
    options = runner.ExecOptions(device=args.device, amp=not args.no_amp, progress=False)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"# throughput: {args.dataset}, random-missing, {args.epochs} epochs, seed {args.seed}, device "
          f"{runner.resolve_device(args.device)}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average before "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    if "late-fusion" in methods:  # the breakdown first, so it exists even if a long benchmark is cut short
        methods = ["late-fusion"] + [m for m in methods if m != "late-fusion"]
    # warm-up, not measured: first-use costs (imports torch.optim pulls in, allocator, kernels) once per process
    warm = runner.load_dataset_cached("synthetic-small")
    spec = runner.RunSpec("late-fusion", runner.resolve_method_params("late-fusion", warm, {}, 1)[1],
                          "synthetic-small", {}, warm.fingerprint, "random-missing",
                          runner.make_protocol("random-missing", {}).get_params(), 0, 1)
    runner.execute_run(spec, options, warm)
    results = []
    for name in methods:
        try:
            results.append(median_run([benchmark_method(name, args.dataset, args.epochs, options, args.seed)
                                       for _ in range(args.repeats)]))
        except Exception as exc:  # noqa: BLE001 - one broken method must not stop the table
            log.warning("%s failed: %s: %s", name, type(exc).__name__, exc)
            results.append({"method": name, "error": f"{type(exc).__name__}: {str(exc)[:80]}"})
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=2, default=str)
        r = results[-1]
        if "error" not in r:
            print(f"{name}: {r['samples_per_s']:.0f} samples/s, eval test+valid = {r['eval_all_per_epoch']:.2f} "
                  f"epochs, outside model {100 * r['outside_model_share']:.1f}%", flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print(markdown(results))
    for r in results:
        if r.get("method") == "late-fusion" and "error" not in r:
            print("\n" + breakdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
