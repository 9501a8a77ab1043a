"""Training speed and peak memory of msabench against MMSA 2.2.1 on MOSI-shaped data (MulT, TFN, LF-DNN).

What it does:

1. makes a throwaway virtual environment (``python -m venv --system-site-packages``, so the installed torch is
   reused) under a temporary directory and ``pip install MMSA==2.2.1`` into it;
2. writes one MOSI-shaped MMSA pickle (1284/229/686 samples, length 50, text 300-d, audio 5, vision 20, random
   values) that both sides read: MMSA through ``custom_feature``, msabench through its ``mmsa:`` loader;
3. trains each model for a fixed number of epochs in its own subprocess, MMSA's through ``MMSA.MMSA_run`` and
   msabench's through ``msabench.runner.fit_method`` (protocol ``none``, early stopping off), with the same
   architecture hyperparameters and batch size (MMSA's MOSI defaults);
4. prints train samples/s and peak RSS per run and the ratios msabench / MMSA;
5. prints the arithmetic behind the speeds: FLOPs per training sample on each side (matrix products,
   convolutions, attention; forward + backward; ``torch.utils.flop_counter`` on the second training batch, with
   oneDNN off for that step so that fused RNN kernels are counted; that step's time is left out of samples/s),
   the GFLOP/s each side achieves, the GFLOP/s msabench would need for 3x MMSA's samples/s, and the CPU's fp32
   matrix-product rate at the same thread count.

Only the training batches are timed on both sides (from asking the first batch of an epoch to the end of its last
optimiser step); validation, checkpointing and test are not. Peak RSS is the subprocess's own maximum resident set
size (``getrusage(RUSAGE_SELF)``); with ``--mmsa-workers 0`` (default) MMSA loads batches in that process too.

MMSA on a CPU today needs two run-time patches, applied inside its subprocess only (the package is not edited):
``torch.cuda.set_device`` is made a no-op (its runner calls it unconditionally) and ``ReduceLROnPlateau`` drops
the ``verbose`` argument that current torch rejects. ``HF_HUB_OFFLINE=1`` and ``use_bert=False``: no model is
downloaded. MMSA trains until early stopping; here its train loader stops the run after ``--epochs`` epochs.

Usage::

    python benchmarks/mmsa_speed.py [--epochs 2] [--models mult,tfn,lf_dnn] [--venv DIR] [--json OUT.json]
    python benchmarks/mmsa_speed.py --msabench-set lf_dnn:dropout=0 ...   # what-if: msabench without dropout
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import time
import venv
from pathlib import Path

import numpy as np

log = logging.getLogger("mmsa_speed")

MMSA_VERSION = "2.2.1"
SIZES = {"train": 1284, "valid": 229, "test": 686}
SEQ_LEN = 50
DIMS = {"text": 300, "audio": 5, "vision": 20}

# MMSA model name -> (MMSA config overrides, msabench method, msabench hyperparameters); MMSA's MOSI defaults
MODELS: dict[str, tuple[dict, str, dict]] = {
    "mult": (
        {"dst_feature_dim_nheads": [50, 10], "nlevels": 4, "conv1d_kernel_size_l": 5, "conv1d_kernel_size_a": 5,
         "conv1d_kernel_size_v": 5, "batch_size": 16},
        "mult",
        {"d": 50, "heads": 10, "layers": 4, "kernel_l": 5, "kernel_a": 5, "kernel_v": 5, "batch_size": 16},
    ),
    "tfn": (
        {"hidden_dims": [128, 32, 128], "text_out": 32, "post_fusion_dim": 64, "batch_size": 32},
        "tfn",
        {"text_hidden": 128, "audio_hidden": 32, "video_hidden": 128, "text_out": 32, "post_fusion_dim": 64,
         "batch_size": 32},
    ),
    "lf_dnn": (
        {"hidden_dims": [128, 16, 128], "text_out": 256, "post_fusion_dim": 128, "batch_size": 128},
        "late-fusion",
        {"hidden": 128, "batch_size": 128},
    ),
}

# Runs inside the MMSA virtual environment. argv: pickle, model, config json, epochs, workers, threads, workdir
MMSA_RUNNER = textwrap.dedent('''
    import contextlib, json, os, resource, sys, time
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    import torch.optim.lr_scheduler as sched
    from torch.utils.flop_counter import FlopCounterMode

    @contextlib.contextmanager
    def counted_flops():
        """FLOPs of the step run inside; with oneDNN off, whose fused RNN kernels the counter cannot see."""
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            yield counter

    pkl, model, config, epochs, workers, threads, workdir = sys.argv[1:8]
    config, epochs, workers, threads = json.loads(config), int(epochs), int(workers), int(threads)
    if threads > 0:
        torch.set_num_threads(threads)

    # run-time patches for MMSA 2.2.1 on CPU with current torch (the installed package is not edited)
    torch.cuda.set_device = lambda *a, **k: None
    _Plateau = sched.ReduceLROnPlateau
    class ReduceLROnPlateau(_Plateau):
        def __init__(self, *args, verbose=None, **kwargs):
            super().__init__(*args, **kwargs)
    sched.ReduceLROnPlateau = ReduceLROnPlateau

    import MMSA.run as mmsa_run

    class Done(Exception):
        pass

    stats = {"seconds": 0.0, "samples": 0, "epochs": 0}

    class TimedLoader:
        """The train DataLoader, timing each full pass; asking for pass epochs + 1 ends the run."""
        def __init__(self, loader):
            self.loader = loader
        def __len__(self):
            return len(self.loader)
        def __getattr__(self, name):
            return getattr(self.loader, name)
        def __iter__(self):
            if stats["epochs"] >= epochs:
                raise Done()
            return self._timed()
        def _timed(self):
            start, skipped = time.perf_counter(), 0.0
            for i, batch in enumerate(self.loader):
                if stats["epochs"] == 0 and i == 1:  # this step's FLOPs are counted, its time is not
                    t0 = time.perf_counter()
                    with counted_flops() as counter:
                        yield batch
                    skipped += time.perf_counter() - t0
                    stats["flops_per_sample"] = counter.get_total_flops() / len(batch["index"])
                    continue
                stats["samples"] += len(batch["index"])
                yield batch
            stats["seconds"] += time.perf_counter() - start - skipped
            stats["epochs"] += 1

    _loader = mmsa_run.MMDataLoader
    def timed_loader(args, num_workers):
        loaders = _loader(args, num_workers)
        loaders["train"] = TimedLoader(loaders["train"])
        return loaders
    mmsa_run.MMDataLoader = timed_loader

    try:
        mmsa_run.MMSA_run(model, "mosi", config=config, seeds=[1111], custom_feature=pkl, gpu_ids=[],
                          num_workers=workers, verbose_level=0, model_save_dir=workdir, res_save_dir=workdir,
                          log_dir=workdir)
    except Done:
        pass
    if stats["epochs"] < epochs:
        raise SystemExit(f"MMSA stopped after {stats['epochs']} of {epochs} epochs")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("RESULT " + json.dumps({**stats, "peak_rss_mb": peak, "torch": torch.__version__,
                                  "threads": torch.get_num_threads()}))
''')

# Runs with this interpreter. argv: pickle, method, params json, epochs, threads
MSABENCH_RUNNER = textwrap.dedent('''
    import contextlib, json, resource, sys, time
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    @contextlib.contextmanager
    def counted_flops():
        """FLOPs of the step run inside; with oneDNN off, whose fused RNN kernels the counter cannot see."""
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            yield counter

    pkl, method, params, epochs, threads = sys.argv[1:6]
    params, epochs, threads = json.loads(params), int(epochs), int(threads)
    if threads > 0:
        torch.set_num_threads(threads)

    from msabench.plugins import METHODS, load_dataset
    from msabench.registry import RegistryError
    from msabench.runner import ExecOptions, RunSpec, fit_method, resolve_method_params

    try:
        cls = METHODS.get(method)
    except RegistryError as exc:
        print("SKIP " + json.dumps({"reason": f"msabench method {method!r} is not registered ({exc})"}))
        raise SystemExit(0)

    stats = {"seconds": 0.0, "samples": 0, "epochs": 0}
    _batches = cls.train_batches

    def timed_batches(self, split, generator):
        batches = _batches(self, split, generator)
        def timed():
            start, skipped = time.perf_counter(), 0.0
            for i, idx in enumerate(batches):
                if stats["epochs"] == 0 and i == 1:  # this step's FLOPs are counted, its time is not
                    t0 = time.perf_counter()
                    with counted_flops() as counter:
                        yield idx
                    skipped += time.perf_counter() - t0
                    stats["flops_per_sample"] = counter.get_total_flops() / len(idx)
                    continue
                stats["samples"] += len(idx)
                yield idx
            stats["seconds"] += time.perf_counter() - start - skipped
            stats["epochs"] += 1
        return timed()

    cls.train_batches = timed_batches
    spec_name = "mmsa:" + pkl
    dataset = load_dataset(spec_name)
    _, resolved = resolve_method_params(method, dataset, {**params, "epochs": epochs, "patience": 0})
    spec = RunSpec(method, resolved, spec_name, {}, dataset.fingerprint, "none", {}, 1111, None)
    _, _, fit_seconds = fit_method(spec, dataset, ExecOptions(device="cpu", amp=False, progress=False))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("RESULT " + json.dumps({**stats, "fit_seconds": fit_seconds, "peak_rss_mb": peak,
                                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
''')


def write_mosi_pickle(path: Path, seed: int = 0) -> None:
    """A MOSI-shaped MMSA pickle with random features and labels in [-3, 3] (all sequences full length)."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in SIZES.items():
        labels = np.round(rng.uniform(-3, 3, n) * 3) / 3
        data[split] = {
            "text": rng.normal(size=(n, SEQ_LEN, DIMS["text"])).astype(np.float32),
            "audio": rng.normal(size=(n, SEQ_LEN, DIMS["audio"])).astype(np.float32),
            "vision": rng.normal(size=(n, SEQ_LEN, DIMS["vision"])).astype(np.float32),
            "audio_lengths": [SEQ_LEN] * n,
            "vision_lengths": [SEQ_LEN] * n,
            "regression_labels": labels.astype(np.float32),
            "classification_labels": np.digitize(labels, [-1e-9, 1e-9]).astype(np.float32),
            "raw_text": [f"utterance {i}" for i in range(n)],
            "id": [f"{split}_{i}" for i in range(n)],
        }
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)


def make_mmsa_venv(root: Path) -> Path:
    """A venv sharing the system site-packages (torch), with MMSA installed; returns its python."""
    env_dir = root / "mmsa-venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    log.info("installing MMSA==%s into %s", MMSA_VERSION, env_dir)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"MMSA=={MMSA_VERSION}"], check=True)
    return python


def run_child(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run one measurement subprocess; its last ``RESULT``/``SKIP`` line as a dict."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
        if line.startswith("SKIP "):
            return {"skip": json.loads(line[5:])["reason"]}
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    return {"error": f"exit {proc.returncode}: {tail}"}


def parse_overrides(items: list[str]) -> dict[str, dict]:
    """``["tfn:post_fusion_dropout=0", ...]`` -> {"tfn": {"post_fusion_dropout": 0}} (values parsed as JSON)."""
    out: dict[str, dict] = {}
    for item in items:
        model, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq or model not in MODELS or not key:
            raise ValueError(f"--msabench-set {item!r}: expected MODEL:key=value with MODEL one of {sorted(MODELS)}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(model, {})[key] = parsed
    return out


def measure(models: list[str], python_mmsa: str, pkl: Path, workdir: Path, epochs: int, threads: int,
            mmsa_workers: int, timeout: float, overrides: dict[str, dict] | None = None) -> list[dict]:
    """One MMSA and one msabench subprocess per model; rows with samples/s and peak RSS."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    mmsa_script = workdir / "mmsa_runner.py"
    mmsa_script.write_text(MMSA_RUNNER)
    ours_script = workdir / "msabench_runner.py"
    ours_script.write_text(MSABENCH_RUNNER)
    rows = []
    for model in models:
        config, method, params = MODELS[model]
        params = {**params, **(overrides or {}).get(model, {})}
        log.info("MMSA %s ...", model)
        out_dir = workdir / f"mmsa-{model}"
        out_dir.mkdir(exist_ok=True)
        theirs = run_child([python_mmsa, str(mmsa_script), str(pkl), model, json.dumps(config), str(epochs),
                            str(mmsa_workers), str(threads), str(out_dir)], env, timeout)
        log.info("msabench %s ...", method)
        ours = run_child([sys.executable, str(ours_script), str(pkl), method, json.dumps(params), str(epochs),
                          str(threads)], env, timeout)
        rows.append({"model": model, "method": method, "mmsa": theirs, "msabench": ours,
                     "msabench_params": params})
    return rows


def _fmt(res: dict) -> tuple[str, str, str]:
    if "skip" in res or "error" in res:
        return "-", "-", "-"
    sps = res["samples"] / max(res["seconds"], 1e-9)
    return f"{sps:,.0f}", f"{res['seconds']:.1f}", f"{res['peak_rss_mb']:,.0f}"


def gemm_gflops(threads: int, n: int = 1024, repeats: int = 7) -> float:
    """The CPU's fp32 matrix-product rate at ``threads`` torch threads (best of ``repeats`` n x n x n products)."""
    import torch

    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _sps(res: dict) -> float | None:
    if "skip" in res or "error" in res or not res.get("seconds"):
        return None
    return res["samples"] / res["seconds"]


def report(rows: list[dict], gemm: float | None = None) -> str:
    """The Markdown table of samples/s, train seconds, peak RSS and ratios, and the arithmetic behind them."""
    lines = ["| model | MMSA samples/s | msabench samples/s | speed ratio | MMSA peak RSS MB | msabench peak RSS MB "
             "| RSS ratio | MMSA train s | msabench train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for row in rows:
        theirs, ours = row["mmsa"], row["msabench"]
        t_sps, t_s, t_rss = _fmt(theirs)
        o_sps, o_s, o_rss = _fmt(ours)
        speed = rss = "-"
        if t_sps != "-" and o_sps != "-":
            speed = (f"{(ours['samples'] / ours['seconds']) / (theirs['samples'] / theirs['seconds']):.1f}x")
            rss = f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}"
        name = f"{row['model']} / {row['method']}"
        lines.append(f"| {name} | {t_sps} | {o_sps} | {speed} | {t_rss} | {o_rss} | {rss} | {t_s} | {o_s} |")
        for side in ("mmsa", "msabench"):
            res = row[side]
            if "skip" in res:
                notes.append(f"{name} {side}: skipped: {res['skip']}")
            elif "error" in res:
                notes.append(f"{name} {side}: failed: {res['error']}")
    arithmetic = ["", "Arithmetic of one training step (matrix products, convolutions and attention, forward + backward, "
                  "counted by torch.utils.flop_counter on the second batch of each side; elementwise work such as "
                  "dropout and the optimizer is not counted):", "",
                  "| model | MMSA GFLOP/sample | msabench GFLOP/sample | MMSA GFLOP/s | msabench GFLOP/s "
                  "| 3x MMSA needs msabench at GFLOP/s |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        theirs, ours = row["mmsa"], row["msabench"]
        t_sps, o_sps = _sps(theirs), _sps(ours)
        t_f, o_f = theirs.get("flops_per_sample"), ours.get("flops_per_sample")
        if None in (t_sps, o_sps, t_f, o_f):
            continue
        arithmetic.append(f"| {row['model']} / {row['method']} | {t_f / 1e9:.4f} | {o_f / 1e9:.4f} | "
                          f"{t_sps * t_f / 1e9:.1f} | {o_sps * o_f / 1e9:.1f} | {3 * t_sps * o_f / 1e9:.1f} |")
    if gemm is not None:
        arithmetic += ["", f"fp32 matrix-product rate of this CPU at the same thread count (best of 7 "
                           f"1024 x 1024 x 1024 products): {gemm:.1f} GFLOP/s"]
    return "\n".join(lines + [""] + notes + arithmetic)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per run (default 2)")
    parser.add_argument("--models", default="mult,tfn,lf_dnn", help="MMSA model names, comma-separated")
    parser.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: torch default)")
    parser.add_argument("--mmsa-workers", type=int, default=0, help="MMSA DataLoader workers (default 0)")
    parser.add_argument("--venv", help="python of an existing venv with MMSA installed (skips the install)")
    parser.add_argument("--workdir", help="keep files here instead of a temporary directory")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    parser.add_argument("--msabench-set", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="override one of msabench's hyperparameters for MODEL (what-if runs, e.g. "
                             "tfn:post_fusion_dropout=0); repeatable")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.msabench_set)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {sorted(MODELS)}")
    with tempfile.TemporaryDirectory(prefix="mmsa-speed-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        python_mmsa = args.venv or str(make_mmsa_venv(workdir))
        pkl = workdir / "mosi_shaped.pkl"
        write_mosi_pickle(pkl)
        rows = measure(models, python_mmsa, pkl, workdir, args.epochs, args.threads, args.mmsa_workers,
                       args.timeout, overrides)
    load = os.getloadavg()
    gemm = gemm_gflops(args.threads)
    print(report(rows, gemm))
    print(f"\nepochs={args.epochs} threads={args.threads or 'torch default'} mmsa_workers={args.mmsa_workers} "
          f"cpus={os.cpu_count()} load average at end={load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "args": vars(args), "loadavg": load,
                                               "gemm_gflops": gemm}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
