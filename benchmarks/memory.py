"""Peak host memory (RSS) per phase of a run, against the bytes of the dataset's features.

Not a timed test: a measurement, its output recorded in benchmarks/README.md. Two modes:

* ``phases`` (default): one run in this process, the library called step by step (load, plan, fit, evaluate every
  condition, store), while a thread samples this process's RSS every few milliseconds; per phase the peak RSS, and
  the peak over the whole run against the target 1.3 x feature bytes + 1 GB.
* ``cli``: the same run through ``msabench run`` in a subprocess, its peak RSS from ``getrusage(RUSAGE_CHILDREN)``
  (the largest single process), and with ``--workers N`` the peak summed RSS and PSS of its process tree, sampled.

``--write-mmsa PATH`` first writes the synthetic set as an MMSA pickle (one array at a time, protocol 4, as MMSA's
pickles are written), so that the run reads ``mmsa:PATH``; ``--load-only`` measures just the load.

    python benchmarks/memory.py --dataset synthetic-mosei --dataset-option aligned=false \
        --dataset-option text_dim=768 --dataset-option scale=0.25 --method late-fusion
    python benchmarks/memory.py --dataset synthetic-mosei ... --write-mmsa /tmp/mosei25.pkl --load-only
    python benchmarks/memory.py --grid 3 ...        # three seeds in one process: one loaded copy or three?
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psutil

GB = 1024 ** 3
MB = 1024 ** 2


class RSSSampler:
    """Samples this process's RSS in a thread; ``phase(name)`` records the peak inside a block."""

    def __init__(self, interval: float = 0.005) -> None:
        self.proc = psutil.Process()
        self.interval = interval
        self.current_peak = 0
        self.phases: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.current_peak = max(self.current_peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "RSSSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.current_peak = self.proc.memory_info().rss
        try:
            yield
        finally:
            self.current_peak = max(self.current_peak, self.proc.memory_info().rss)
            self.phases[name] = max(self.phases.get(name, 0), self.current_peak)

    def rss(self) -> int:
        return self.proc.memory_info().rss


def feature_bytes(dataset: Any) -> int:
    """Bytes of every split's feature tensors (the quantity the memory targets are relative to)."""
    return sum(x.element_size() * x.nelement() for s in dataset.splits.values() for x in s.features.values())


def write_mmsa(dataset: Any, path: str) -> None:
    """``dataset`` as an MMSA pickle (text/audio/vision, lengths, regression_labels, id), protocol 4."""
    import numpy as np

    out = {}
    for name, split in dataset.splits.items():
        out[name] = {
            "text": split.features["l"].numpy(), "audio": split.features["a"].numpy(),
            "vision": split.features["v"].numpy(),
            "audio_lengths": split.lengths["a"].numpy(), "vision_lengths": split.lengths["v"].numpy(),
            "regression_labels": split.labels.numpy().astype(np.float32), "id": np.asarray(split.ids, dtype=object),
        }
    with open(path, "wb") as f:
        pickle.dump(out, f, protocol=4)


def parse_options(items: list[str] | None) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items or [])


def run_phases(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from msabench import runner
    from msabench.store import ResultsStore

    torch.set_num_threads(args.threads)
    options = parse_options(args.dataset_option)
    out: dict[str, Any] = {}
    with RSSSampler() as sampler:
        out["rss_after_imports_mb"] = sampler.rss() / MB
        dataset_spec = args.dataset
        if args.write_mmsa:
            with sampler.phase("generate"):
                ds = runner.dataset_source(args.dataset, **options).load()
            write_mmsa(ds, args.write_mmsa)
            out["file_mb"] = os.path.getsize(args.write_mmsa) / MB
            del ds
            runner._load_cached.cache_clear()
            dataset_spec, options = f"mmsa:{args.write_mmsa}", {}
            out["rss_before_load_mb"] = sampler.rss() / MB
        with sampler.phase("load"):
            ds = runner.load_dataset_cached(dataset_spec, options)
        fbytes = feature_bytes(ds)
        out.update(dataset=dataset_spec, dataset_options=options, feature_mb=fbytes / MB)
        if not args.load_only:
            request = runner.RunRequest(methods=[args.method], datasets=[dataset_spec], protocol=args.protocol,
                                        seeds=list(range(1111, 1111 + args.grid)), dataset_options=options,
                                        epochs=args.epochs)
            exec_opts = runner.ExecOptions(device=args.device, progress=False, threads=args.threads)
            with tempfile.TemporaryDirectory() as tmp:
                with sampler.phase("plan"):
                    specs, datasets = runner.plan(request)
                store = ResultsStore(tmp)
                for i, spec in enumerate(specs):
                    tag = "" if args.grid == 1 else f"[{i}]"
                    with sampler.phase("fit" + tag):
                        method, protocol, _ = runner.fit_method(spec, datasets[dataset_spec], exec_opts)
                    with sampler.phase("evaluate" + tag):
                        rows, _ = runner.evaluate(method, ds, protocol, ["test", "valid"],
                                                  device=runner.resolve_device(args.device))
                    out.setdefault("data_placement", getattr(method, "data_placement_", None))
                    del method
                with sampler.phase("full run (execute_run + store)"):
                    store.save(runner.execute_run(specs[0], exec_opts, datasets[dataset_spec]))
                out["load_calls"] = runner._load_cached.cache_info().misses
    out["phase_peak_mb"] = {k: v / MB for k, v in sampler.phases.items()}
    peak = max(v for k, v in sampler.phases.items() if k != "generate")
    out["peak_mb"] = peak / MB
    out["peak_over_features"] = peak / fbytes
    out["target_mb"] = (1.3 * fbytes + GB) / MB
    out["meets_target"] = peak <= 1.3 * fbytes + GB
    return out


def run_cli(args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "msabench.cli", "run", "--quiet", "--method", args.method, "--dataset", args.dataset,
           "--protocol", args.protocol, "--epochs", str(args.epochs), "--threads", str(args.threads),
           "--seeds", ",".join(str(s) for s in range(1111, 1111 + args.grid)), "--device", args.device]
    for item in args.dataset_option or []:
        cmd += ["--dataset-option", item]
    if args.workers > 1:
        cmd += ["--workers", str(args.workers)]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd + ["--out", tmp])
        tree_rss = tree_pss = 0
        while proc.poll() is None:  # the process tree's memory: RSS counts shared pages once per process, PSS
            try:  # splits them between the processes that map them (what the machine actually spends)
                procs = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
                infos = [p.memory_full_info() for p in procs]
                tree_rss = max(tree_rss, sum(i.rss for i in infos))
                tree_pss = max(tree_pss, sum(i.pss for i in infos))
            except psutil.Error:
                pass
            time.sleep(0.2)
        if proc.returncode:
            raise SystemExit(f"msabench run failed ({proc.returncode})")
        seconds = time.perf_counter() - start
        run_json = next(Path(tmp, "runs").glob("*/run.json"), None)
        placement = json.loads(run_json.read_text()).get("data_placement") if run_json else None
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    return {"command": " ".join(cmd), "peak_mb": peak / MB, "seconds": round(seconds, 1),
            "data_placement": placement, "tree_peak_rss_mb": tree_rss / MB, "tree_peak_pss_mb": tree_pss / MB}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["phases", "cli"], default="phases")
    p.add_argument("--dataset", default="synthetic-mosi")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--method", default="late-fusion")
    p.add_argument("--protocol", default="random-missing")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--grid", type=int, default=1, help="seeds run one after another in this process")
    p.add_argument("--workers", type=int, default=1, help="cli mode: msabench run --workers N")
    p.add_argument("--write-mmsa", metavar="PATH", help="write the set as an MMSA pickle first and run on that")
    p.add_argument("--load-only", action="store_true", help="measure only the load")
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    result = run_phases(args) if args.mode == "phases" else run_cli(args)
    if args.mode == "cli":
        from msabench import runner

        ds = runner.load_dataset_cached(args.dataset, parse_options(args.dataset_option))
        fbytes = feature_bytes(ds)
        result.update(feature_mb=fbytes / MB, peak_over_features=result["peak_mb"] * MB / fbytes,
                      target_mb=(1.3 * fbytes + GB) / MB, meets_target=result["peak_mb"] * MB <= 1.3 * fbytes + GB)
    text = json.dumps(result, indent=2, default=lambda v: round(v, 1) if isinstance(v, float) else str(v))
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
