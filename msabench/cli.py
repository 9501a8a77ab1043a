"""Command line: each command parses its arguments and calls one library function."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger("msabench")

# modules that add a subcommand through ``add_command(subparsers)``
COMMAND_MODULES = ("msabench.leaderboard", "msabench.plots", "msabench.tune_cli", "msabench.report")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be integers separated by commas, got {text!r}") from None


# list -------------------------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from msabench.plugins import DATASETS, METHODS, PROTOCOLS

    registry = {"methods": METHODS, "protocols": PROTOCOLS, "datasets": DATASETS}[args.what]
    rows = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = registry.available()
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    for name, cls in available.items():
        info = registry.info(name)
        row = {"name": name, "description": getattr(cls, "description", ""),
               "package": f"{info.package} {info.version}"}
        if args.what == "protocols":
            row["conditions"] = " ".join(cls().conditions())
        if args.what == "methods":
            row["tasks"] = ",".join(sorted(getattr(cls, "tasks", [])))
        rows.append(row)
    frame = pd.DataFrame(rows)
    with pd.option_context("display.max_colwidth", 90, "display.width", 200):
        print(frame.to_string(index=False) if not frame.empty else f"no {args.what}")
    return 0


# run --------------------------------------------------------------------------------------------------------------
def load_config(path: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise CLIError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CLIError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config {path} must be a mapping with keys like method, params, protocol")
    allowed = {"method", "params", "dataset", "protocol", "seeds", "epochs", "protocol_params", "dataset_options",
               "tag", "study"}
    unknown = set(data) - allowed
    if unknown:
        raise CLIError(f"config {path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return data


def build_request(args: argparse.Namespace):
    from msabench.params import parse_assignments
    from msabench.runner import DEFAULT_SEEDS, RunRequest

    config = load_config(args.config) if args.config else {}
    method = args.method or config.get("method")
    if not method:
        raise CLIError("no method given: use --method NAME (see 'msabench list methods') or --config FILE")
    methods = _csv_list(method) if isinstance(method, str) else list(method)
    params = dict(config.get("params") or {})
    params.update(parse_assignments(args.set, "--set"))
    protocol_params = dict(config.get("protocol_params") or {})
    protocol_params.update(parse_assignments(args.protocol_option, "--protocol-option"))
    dataset_options = dict(config.get("dataset_options") or {})
    dataset_options.update(parse_assignments(args.dataset_option, "--dataset-option"))
    dataset = args.dataset or config.get("dataset") or "synthetic-small"
    seeds = args.seeds or config.get("seeds") or list(DEFAULT_SEEDS)
    return RunRequest(
        methods=methods,
        datasets=_csv_list(dataset) if isinstance(dataset, str) else list(dataset),
        protocol=args.protocol or config.get("protocol") or "random-missing",
        seeds=[int(s) for s in seeds],
        params=params,
        protocol_params=protocol_params,
        dataset_options=dataset_options,
        epochs=args.epochs if args.epochs is not None else config.get("epochs"),
        tag=args.tag or config.get("tag") or config.get("study") or "",
    )


def cmd_run(args: argparse.Namespace) -> int:
    from msabench.runner import ExecOptions, run_grid, summary_table

    if args.deterministic:
        from msabench.runner import set_deterministic

        set_deterministic()
    request = build_request(args)
    options = ExecOptions(device=args.device, amp=not args.no_amp, deterministic=args.deterministic,
                          save_predictions=args.save_predictions, save_model=args.save_model,
                          progress=not args.quiet, threads=args.threads, cache=not args.no_cache,
                          data_placement=args.data_placement)
    rows = run_grid(request, out=args.out, options=options, workers=args.workers, scheduler=args.scheduler)
    rows = rows[rows["method"].isin(request.methods) & rows["protocol"].eq(request.protocol)] if not rows.empty else rows
    table = summary_table(rows)
    if not args.quiet and not table.empty:
        table["value"] = table["mean"].map("{:.4f}".format) + " ± " + table["std"].fillna(0).map("{:.4f}".format)
        wide = table.pivot_table(index=["method", "dataset"], columns="condition", values="value", aggfunc="first",
                                 sort=False)
        print(f"\n{table['metric'].iloc[0]} on the test split (mean ± std over seeds); rows in {args.out}/results.csv")
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(wide.to_string())
    if not args.no_report:
        from msabench.run_report import write_run_report

        report = write_run_report(args.out)
        if not args.quiet:
            print("\nwritten (--no-report skips the leaderboard and figures):")
            print("\n".join(f"  {line}" for line in report.lines()))
    return 0


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help="method name(s), comma-separated, or package.module:Class")
    p.add_argument("--protocol", help="missingness protocol (default random-missing); see 'msabench list protocols'")
    p.add_argument("--dataset", help="dataset name(s) or FORMAT:PATH, comma-separated (default synthetic-small), "
                                     "e.g. synthetic-mosi or mmsa:data/mosi.pkl")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE",
                   help="loader option, e.g. text=bert for mmsa, seed=3 for synthetic sets (repeatable)")
    p.add_argument("--protocol-option", action="append", metavar="KEY=VALUE",
                   help="protocol parameter, e.g. rates=l=0.3,a=0.5,v=0.5 or train_recipe=frame+modality")
    p.add_argument("--seeds", type=_seeds, help="comma-separated run seeds (default 1111,1112,1113,1114,1115)")
    p.add_argument("--epochs", type=int, help="override the method's number of training epochs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="set a method hyperparameter, e.g. --set lr=0.001 (repeatable)")
    p.add_argument("--config", help="YAML config (method, params, dataset, protocol, seeds, epochs); "
                                    "command-line options override it")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--no-amp", action="store_true", help="turn off mixed precision on CUDA (on by default)")
    p.add_argument("--deterministic", action="store_true", help="also set the CUDA determinism switches")
    p.add_argument("--data-placement", default="auto", choices=["auto", "device", "host"],
                   help="where the training data lives: whole splits on the device, or on the host with batches "
                        "moved (auto: host when the data would not fit the device; recorded in run.json)")


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="train and evaluate methods under a protocol",
                       description="Train each (method, dataset, seed) once under the protocol's training schedule, "
                                   "select on the validation split, evaluate every condition on the test split.")
    add_run_arguments(p)
    p.add_argument("--out", default="runs", help="results directory (default runs/); finished runs are skipped")
    p.add_argument("--save-predictions", action="store_true", help="write per-sample predictions per run")
    p.add_argument("--save-model", action="store_true", help="write each run's inference model (model.pt)")
    p.add_argument("--no-cache", action="store_true",
                   help="do not reuse artefacts between runs (CorrKD's teacher, kept in OUT/cache); numbers are the "
                        "same either way")
    p.add_argument("--workers", type=int, default=1, help="parallel runs in local processes (default 1)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default: torch's choice in this "
                                               "process, 1 in worker processes; thread count changes the last "
                                               "digits, so pass 1 to reproduce worker numbers sequentially)")
    p.add_argument("--scheduler", help="Dask scheduler: tcp://HOST:8786, or local:N for a LocalCluster of N workers")
    p.add_argument("--tag", help="a label stored with every row (e.g. a tuning study name)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write OUT/leaderboard.md and the robustness curves OUT/figures/*.png at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bars or tables, warnings only")
    p.set_defaults(func=cmd_run)


# masks ------------------------------------------------------------------------------------------------------------
def cmd_masks(args: argparse.Namespace) -> int:
    from msabench.masks import drop_statistics, mask_hash
    from msabench.params import parse_assignments
    from msabench.runner import load_dataset_cached, make_protocol

    protocol = make_protocol(args.protocol, parse_assignments(args.protocol_option, "--protocol-option"))
    dataset = load_dataset_cached(args.dataset, parse_assignments(args.dataset_option, "--dataset-option"))
    split = dataset[args.split]
    rows = []
    for condition in protocol.conditions():
        mask = protocol.mask(split, condition, dataset.fingerprint)
        stats = drop_statistics(split, mask)
        rows.append({"condition": condition, **{k: round(v, 4) for k, v in stats.items()}, "mask_hash": mask_hash(mask)})
    print(f"protocol {protocol.name} v{protocol.version} {protocol.get_params()}; dataset {dataset.name} "
          f"(fingerprint {dataset.fingerprint}), split {args.split}, {len(split)} samples")
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def add_masks_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masks", help="per-condition mask statistics and hashes",
                       description="Print, per condition, the share of frames dropped per modality, the share of "
                                   "samples missing a whole modality, and the mask hash to cite.")
    p.add_argument("--protocol", required=True, help="protocol name")
    p.add_argument("--dataset", default="synthetic-small", help="dataset name or FORMAT:PATH")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="loader option (repeatable)")
    p.add_argument("--protocol-option", action="append", metavar="KEY=VALUE", help="protocol parameter (repeatable)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="split (default test)")
    p.set_defaults(func=cmd_masks)


# pack -------------------------------------------------------------------------------------------------------------
def cmd_pack(args: argparse.Namespace) -> int:
    from msabench.store import ResultsStore

    for root in args.runs:
        store = ResultsStore(root)
        if not store.runs_dir.is_dir():
            raise CLIError(f"{root} has no runs/ directory: give a results directory written by 'msabench run'")
        n, path = len(store.keys()), store.pack()
        print(f"{root}: the rows of {n} runs packed into {path} ({path.stat().st_size / 1e6:.2f} MB); per-run "
              "rows.csv and results.csv removed")
    return 0


def add_pack_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="store a results directory's rows once, compressed (for publishing)",
                       description="Write every run's rows into RUNS_DIR/rows.csv.gz and remove the per-run "
                                   "rows.csv files and results.csv, which hold the same rows. Every command reads a "
                                   "packed directory as before; runs added later are packed by the next pack.")
    p.add_argument("runs", nargs="+", metavar="RUNS_DIR", help="result directories written by 'msabench run'")
    p.set_defaults(func=cmd_pack)


# reproduce --------------------------------------------------------------------------------------------------------
def cmd_reproduce(args: argparse.Namespace) -> int:
    from msabench.reproduce import format_outcome, hardware_here, reproduce, summary_line

    print(f"reproducing runs of {args.runs_dir} on {hardware_here(args.device or 'cpu')}; tolerance {args.tolerance:g} "
          f"(absolute, per value)", flush=True)
    outcomes = reproduce(args.runs_dir, run_ids=args.run, out=args.out, max_runs=args.max, sample_seed=args.seed,
                         tolerance=args.tolerance, threads=args.threads, device=args.device, dataset=args.dataset,
                         methods=_csv_list(args.method) if args.method else None,
                         on_outcome=lambda o: print(format_outcome(o), flush=True))
    print(summary_line(outcomes))
    return 1 if any(o.failed for o in outcomes) else 0


def add_reproduce_parser(sub: argparse._SubParsersAction) -> None:
    from msabench.reproduce import DEFAULT_TOLERANCE

    p = sub.add_parser("reproduce", help="re-run stored runs from their run.json and compare the numbers",
                       description="Rebuild each run from its run.json (method, resolved hyperparameters, dataset, "
                                   "protocol, seed, epochs, threads, determinism), check the dataset fingerprint, "
                                   "re-run it into another directory and report bit-identical / within tolerance / "
                                   "different. Exit status 1 when a run on the same hardware, code, torch and "
                                   "thread count is not bit-identical.")
    p.add_argument("runs_dir", help="a results directory written by 'msabench run --out DIR' (holds runs/)")
    p.add_argument("--run", nargs="+", metavar="RUN_ID", help="only these runs (default: all, or --max of them)")
    p.add_argument("--method", help="only runs of these methods (comma-separated)")
    p.add_argument("--max", type=int, metavar="N", help="a random sample of N runs (drawn with --seed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max sample (default 0)")
    p.add_argument("--out", help="where the reproduced runs go (default: a temporary directory, removed after); "
                                 "never RUNS_DIR")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest absolute difference per value still called 'within tolerance' "
                        f"(default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--threads", type=int, help="torch threads (default: each run's recorded count)")
    p.add_argument("--device", help="device (default: each run's recorded device)")
    p.add_argument("--dataset", metavar="FORMAT:PATH",
                   help="the dataset file when it is not where the run found it (same format; its fingerprint "
                        "must match the recorded one)")
    p.set_defaults(func=cmd_reproduce)


# main -------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msabench", description="Benchmark for multimodal sentiment analysis "
                                                                  "with missing modalities.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list methods, protocols or datasets",
                       description="List the registered plugins of one kind with their package.")
    p.add_argument("what", choices=["methods", "protocols", "datasets"], help="which kind of plugin")
    p.set_defaults(func=cmd_list)
    add_run_parser(sub)
    add_masks_parser(sub)
    add_reproduce_parser(sub)
    add_pack_parser(sub)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "add_command"):
            module.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from msabench.data.base import DataError
    from msabench.leaderboard import LeaderboardError
    from msabench.outputs import WRITE_ERRNOS, WriteFailed, database_write_failure, describe
    from msabench.params import ParameterError
    from msabench.registry import RegistryError
    from msabench.reproduce import ReproduceError
    from msabench.runner import RunError, RunFailed
    from msabench.store import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except WriteFailed as exc:  # any command: full disk, no permission, read-only, quota; nothing half-written kept
        print(f"msabench: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C: what was finished is kept (a grid says how much)
        print(f"msabench: {exc or 'interrupted; finished work is kept and rerunning the same command continues'}",
              file=sys.stderr)
        return 130
    except (CLIError, RunError, RegistryError, ParameterError, DataError, StoreError, LeaderboardError,
            ReproduceError, FileNotFoundError) as exc:
        print(f"msabench: error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:  # some runs raised at run time; the others were stored
        print(f"msabench: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a command writing without msabench.outputs: still one line for a full disk etc.
        if exc.errno not in WRITE_ERRNOS:
            raise
        print(f"msabench: error: {describe(None, exc, verb='use')}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. Optuna's SQLite storage on a full disk (SQLAlchemy OperationalError)
        message = database_write_failure(exc)
        if message is None:
            raise
        print(f"msabench: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
