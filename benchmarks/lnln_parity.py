"""Peer parity: msabench's ``lnln`` beside the authors' LNLN code on the same MMSA pickle, seeds and rates.

What it does:

1. copies a checkout of Haoyu-ha/LNLN (``--lnln-repo``; fetched by you, never part of msabench) into a temporary
   directory, so its checkpoints and logs land there and the checkout stays untouched;
2. runs the authors' own ``train.train`` / ``train.evaluate`` / ``build_model`` / ``MMDataLoader`` /
   ``MultimodalLoss`` / ``get_scheduler`` in a subprocess per seed, with run-time patches only:
   - **validation-split selection**: one checkpoint, the epoch with the lowest validation MAE at r = 0.5, instead
     of their per-metric best on the test split (``train.main`` is not called);
   - **local text encoder**: ``bert_pretrained`` points at ``--text-encoder`` (a local BERT-vocabulary model
     directory, e.g. the offline all-MiniLM-L6-v2), ``input_dims``/``input_length`` are read from the pickle;
   - ``num_workers = 0``, ``n_epochs = --epochs``, the data path and the seed;
   then evaluates that checkpoint on the test split at each rate with their ``MMDataEvaluationLoader`` (their masks);
3. runs ``msabench run --method lnln --protocol random-missing`` on the same pickle and seeds (text through the same
   encoder with ``--set text_encoder=...`` when msabench has the TorchMethod text encoder, feature text otherwise);
4. prints per rate and for ``LNLN-Avg`` (mean over r = 0.0 ... 0.9) mean ± std over seeds of both sides.

The two sides draw different (equally distributed) test masks: the authors' ``generate_m`` seeds numpy with the run
seed; msabench's masks are the protocol's. Differences within the seed spread are what parity means here.

Needs the authors' dependencies in the Python that runs it (``--python``, default this one): torch, transformers,
einops, pyyaml, scikit-learn. Usage::

    python benchmarks/lnln_parity.py --lnln-repo /path/to/LNLN \\
        --data ../shared/data/mosi-utterance/mosi_utterance_bert.pkl \\
        --text-encoder /path/to/all-MiniLM-L6-v2/model --seeds 1111,1112,1113,1114,1115 --epochs 50
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RATES = [round(0.1 * i, 1) for i in range(10)]
METRICS = {"Has0_acc_2": "Has0_acc_2", "Has0_F1_score": "Has0_F1", "Non0_acc_2": "Non0_acc_2",
           "Non0_F1_score": "Non0_F1", "Mult_acc_5": "Mult_acc_5", "Mult_acc_7": "Mult_acc_7", "MAE": "MAE",
           "Corr": "Corr"}

# run inside the copy of the authors' checkout (cwd); everything it calls is theirs, only the loop is patched
DRIVER = r'''
import json, pickle, sys
import numpy as np, torch, yaml
spec = json.loads(sys.argv[1])
sys.argv = ["train.py"]          # train.py parses its arguments at import
import train as T
from core.dataset import MMDataLoader, MMDataEvaluationLoader
from core.losses import MultimodalLoss
from core.metric import MetricsTop
from core.scheduler import get_scheduler
from core.utils import setup_seed
from models.lnln import build_model

with open("configs/train_mosi.yaml") as f:
    args = yaml.load(f, Loader=yaml.FullLoader)
with open(spec["data"], "rb") as f:
    train = pickle.load(f)["train"]
fe = args["model"]["feature_extractor"]
fe["bert_pretrained"] = spec["encoder"]
fe["input_dims"] = [spec["text_dim"], train["vision"].shape[-1], train["audio"].shape[-1]]
fe["input_length"] = [train["text_bert"].shape[-1], train["vision"].shape[1], train["audio"].shape[1]]
args["dataset"]["dataPath"] = spec["data"]
args["base"].update(seed=spec["seed"], n_epochs=spec["epochs"], num_workers=0, missing_rate_eval_test=0.5)
setup_seed(spec["seed"])
model = build_model(args).to(T.device)
loaders = MMDataLoader(args)
opt = torch.optim.AdamW(model.parameters(), lr=args["base"]["lr"], weight_decay=args["base"]["weight_decay"])
sched = get_scheduler(opt, args)
loss_fn = MultimodalLoss(args)
metrics = MetricsTop(train_mode="regression").getMetics("mosi")
best, state = float("inf"), None
for epoch in range(1, args["base"]["n_epochs"] + 1):
    T.train(model, loaders["train"], opt, loss_fn, epoch, metrics)
    valid = T.evaluate(model, loaders["valid"], loss_fn, epoch, metrics)   # patched: validation selection
    if valid["MAE"] < best:
        best, state = valid["MAE"], {k: v.detach().clone() for k, v in model.state_dict().items()}
    sched.step()
model.load_state_dict(state)
for r in spec["rates"]:
    args["base"]["missing_rate_eval_test"] = r
    res = T.evaluate(model, MMDataEvaluationLoader(args), loss_fn, 0, metrics)
    print("RESULT " + json.dumps({"seed": spec["seed"], "rate": r, **{k: float(v) for k, v in res.items()}}))
'''


def text_dim(encoder: str) -> int:
    with open(Path(encoder) / "config.json") as f:
        return int(json.load(f)["hidden_size"])


def run_authors(repo: Path, data: Path, encoder: str, seeds: list[int], epochs: int, python: str,
                work: Path) -> list[dict]:
    copy = work / "LNLN"
    shutil.copytree(repo, copy, ignore=shutil.ignore_patterns(".git"))
    (copy / "parity_driver.py").write_text(DRIVER)
    out = []
    for seed in seeds:
        spec = {"data": str(data.resolve()), "encoder": encoder, "text_dim": text_dim(encoder), "seed": seed,
                "epochs": epochs, "rates": RATES}
        proc = subprocess.run([python, "parity_driver.py", json.dumps(spec)], cwd=copy, capture_output=True,
                              text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode:
            sys.exit(f"the authors' LNLN failed for seed {seed}:\n{proc.stderr[-3000:]}")
        out += [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    return out


def run_msabench(data: Path, encoder: str | None, seeds: list[int], epochs: int, out: Path,
                 threads: int) -> list[dict]:
    cmd = [sys.executable, "-m", "msabench.cli", "run", "--method", "lnln", "--protocol", "random-missing",
           "--dataset", f"mmsa:{data.resolve()}", "--seeds", ",".join(map(str, seeds)), "--epochs", str(epochs),
           "--out", str(out), "--threads", str(threads), "--quiet"]
    if encoder:
        cmd += ["--dataset-option", "text=bert", "--set", f"text_encoder={encoder}"]
    subprocess.run(cmd, check=True)
    from msabench.store import read_rows

    rows = read_rows([str(out)])
    rows = rows[(rows["split"] == "test") & (rows["method"] == "lnln")]
    result = []
    for (seed, cond), g in rows.groupby(["seed", "condition"]):
        if float(cond) in RATES:
            result.append({"seed": int(seed), "rate": float(cond), **dict(zip(g["metric"], g["value"].astype(float)))})
    return result


def summarise(results: list[dict], names: dict[str, str]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per rate (and LNLN-Avg: each seed's mean over the rates first) mean and std over seeds of each metric."""
    table: dict[str, dict[str, tuple[float, float]]] = {}
    seeds = sorted({r["seed"] for r in results})
    for src, name in names.items():
        per_seed_avg = []
        for rate in RATES:
            vals = [r[src] for r in results if r["rate"] == rate and src in r]
            if vals:
                table.setdefault(f"{rate:.1f}", {})[name] = (float(np.mean(vals)), float(np.std(vals, ddof=1))
                                                              if len(vals) > 1 else float("nan"))
        for s in seeds:
            vals = [r[src] for r in results if r["seed"] == s and src in r]
            if len(vals) == len(RATES):
                per_seed_avg.append(np.mean(vals))
        if per_seed_avg:
            table.setdefault("LNLN-Avg", {})[name] = (float(np.mean(per_seed_avg)), float(np.std(per_seed_avg, ddof=1))
                                                      if len(per_seed_avg) > 1 else float("nan"))
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lnln-repo", required=True, type=Path, help="checkout of Haoyu-ha/LNLN")
    p.add_argument("--data", required=True, type=Path, help="MMSA pickle with text_bert (e.g. mosi_utterance_bert.pkl)")
    p.add_argument("--text-encoder", required=True, help="local BERT-vocabulary model directory (config.json)")
    p.add_argument("--seeds", default="1111,1112,1113")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--python", default=sys.executable, help="Python with the authors' dependencies")
    p.add_argument("--msabench-encoder", action="store_true",
                   help="give msabench the same encoder (needs the TorchMethod text encoder); default: feature text")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write both sides' per-seed results here")
    a = p.parse_args(argv)
    if not (a.lnln_repo / "models" / "lnln.py").is_file():
        sys.exit(f"--lnln-repo {a.lnln_repo}: no models/lnln.py; give a checkout of Haoyu-ha/LNLN")
    if not (Path(a.text_encoder) / "config.json").is_file():
        sys.exit(f"--text-encoder {a.text_encoder}: no config.json; give a local model directory")
    seeds = [int(s) for s in a.seeds.split(",")]
    with tempfile.TemporaryDirectory(prefix="lnln-parity-") as tmp:
        theirs = run_authors(a.lnln_repo, a.data, a.text_encoder, seeds, a.epochs, a.python, Path(tmp))
        ours = run_msabench(a.data, a.text_encoder if a.msabench_encoder else None, seeds, a.epochs,
                            Path(tmp) / "msabench", a.threads)
    if a.json:
        a.json.write_text(json.dumps({"authors": theirs, "msabench": ours}, indent=1))
    t, o = summarise(theirs, METRICS), summarise(ours, {v: v for v in METRICS.values()})
    cols = list(METRICS.values())
    print(f"seeds {seeds}, {a.epochs} epochs; authors' LNLN (validation-selected) | msabench lnln")
    print("| rate | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for key in [f"{r:.1f}" for r in RATES] + ["LNLN-Avg"]:
        cells = []
        for c in cols:
            tv, ov = t.get(key, {}).get(c), o.get(key, {}).get(c)
            fmt = lambda v: "–" if v is None else f"{v[0]:.4f}±{v[1]:.4f}"  # noqa: E731
            cells.append(f"{fmt(tv)} \\| {fmt(ov)}")
        print(f"| {key} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
