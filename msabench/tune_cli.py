"""``msabench tune``: the command line of :mod:`msabench.tune` (parsing, the budget statement, the summary)."""
from __future__ import annotations

import argparse

from msabench.runner import ExecOptions
from msabench.tune import PRUNERS, TuneError, TuneRequest, budget_statement, prepare, summary_frame, tune
from msabench.tune_storage import _redact, storage_url


def cmd_tune(args: argparse.Namespace) -> int:
    import optuna

    from msabench.cli import _csv_list
    from msabench.params import parse_assignments
    from msabench.runner import summary_table

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    request = TuneRequest(
        methods=_csv_list(args.method), dataset=args.dataset, protocol=args.protocol, trials=args.trials,
        timeout=args.timeout, storage=args.storage, study=args.study, seed=args.seed, epochs=args.epochs,
        pruner=args.pruner, out=args.out, final_seeds=args.final_seeds or [],
        params=parse_assignments(args.set, "--set"),
        protocol_params=parse_assignments(args.protocol_option, "--protocol-option"),
        dataset_options=parse_assignments(args.dataset_option, "--dataset-option"),
    )
    if args.threads is not None and args.threads < 1:
        raise TuneError(f"--threads must be at least 1, got {args.threads}")
    options = ExecOptions(device=args.device, amp=not args.no_amp, progress=not args.quiet, threads=args.threads)
    targets = prepare(request, options)
    print(budget_statement(request, targets))
    results = tune(request, options, progress=not args.quiet, targets=targets)
    print(f"\ntuning summary (storage {_redact(storage_url(request.storage, request.out))})")
    print(summary_frame(results).to_string(index=False))
    for r in results:
        if r.final_rows is not None and not r.final_rows.empty:
            table = summary_table(r.final_rows)
            if not table.empty:
                print(f"\n{r.method}: best config on the test split, {table['metric'].iloc[0]} over seeds "
                      f"{','.join(map(str, request.final_seeds))} (tag {r.study}); rows in {request.out}/results.csv")
                print(table[["condition", "mean", "std", "seeds"]].to_string(index=False))
    return 0 if all(r.best_value is not None for r in results) else 1


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``msabench tune`` to the CLI."""
    from msabench.cli import _seeds

    p = subparsers.add_parser(
        "tune", help="tune hyperparameters with Optuna on the validation split",
        description="Tune each method's search space with a seeded TPE sampler and per-epoch pruning, on the "
                    "validation split only. Every method gets the same trial budget and epoch cap (one study per "
                    "method, named STUDY-METHOD). Run the same command again to resume; run it in several "
                    "processes or machines against one storage to share one global budget. Writes "
                    "OUT/METHOD.best.yaml (and OUT/STUDY-METHOD.best.yaml with --study) for 'msabench run --config'.")
    p.add_argument("--method", required=True, help="method name(s), comma-separated; each gets the same budget")
    p.add_argument("--protocol", required=True, help="missingness protocol (validation conditions score trials)")
    p.add_argument("--dataset", required=True, help="dataset name or FORMAT:PATH")
    p.add_argument("--trials", type=int, required=True, help="trials per method, global over all workers")
    p.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds (per method)")
    p.add_argument("--storage", help="sqlite:///FILE (default OUT/optuna.db), journal:///FILE (several processes "
                                     "on one machine) or an RDB URL like postgresql://user:pw@host/db (machines)")
    p.add_argument("--study", help="study name prefix (default DATASET-PROTOCOL); studies are named STUDY-METHOD")
    p.add_argument("--seed", type=int, default=1111, help="sampler seed and training seed of trials (default 1111)")
    p.add_argument("--epochs", type=int, help="epoch cap for every method (default: the largest method default)")
    p.add_argument("--pruner", choices=PRUNERS, default="hyperband", help="per-epoch pruner (default hyperband)")
    p.add_argument("--out", default="tune", help="directory for optuna.db, METHOD.best.yaml and final runs "
                                                 "(default tune/)")
    p.add_argument("--final-seeds", type=_seeds, help="retrain the best config on these seeds and evaluate it on "
                                                      "the test split once, e.g. 1111,1112,1113")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="fix a hyperparameter (repeatable)")
    p.add_argument("--protocol-option", action="append", metavar="KEY=VALUE", help="protocol parameter (repeatable)")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="loader option (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-amp", action="store_true", help="turn off mixed precision on CUDA")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is fastest for "
                                               "small models on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    p.set_defaults(func=cmd_tune)
