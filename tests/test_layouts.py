"""LNLN-Avg and LNLN's Table 2 layout, against hand-computed means."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import json

from msabench.cli import main
from msabench.layouts import lnln_metrics, lnln_table
from msabench.leaderboard import build_leaderboard
from msabench.plugins import PROTOCOLS
from msabench.store import ResultsStore, RunRecord

RATIOS = [f"{0.1 * i:.1f}" for i in range(11)]

MOSI_METRICS = ["Mult_acc_7", "Mult_acc_5", "Has0_acc_2", "Non0_acc_2", "Has0_F1", "Non0_F1", "MAE", "Corr"]


def run_rows(method: str, seed: int, values: dict[str, dict[str, float]]) -> pd.DataFrame:
    """The long rows of one random-missing run, with the runner's provenance columns."""
    run_id = f"{method}-{seed}"
    return pd.DataFrame([{
        "run_id": run_id, "tag": "", "method": method, "method_package": "msabench", "method_package_version": "0.1.0",
        "params": "{}", "params_hash": "p1", "dataset": "ds", "dataset_fingerprint": "fp1", "task": "mosi",
        "protocol": "random-missing", "protocol_version": "1",
        "protocol_params": json.dumps({"mask_seed": 0, "train_recipe": "default"}), "protocol_package": "msabench",
        "protocol_package_version": "0.1.0", "seed": seed, "epochs": 2, "msabench_version": "0.1.0",
        "git_commit": "abc", "torch_version": "2", "device": "cpu", "started": "", "finished": "",
        "train_seconds": 1.0, "split": "test", "condition": c, "mask_hash": f"mask{c}", "metric": name, "value": v}
        for name, per_condition in values.items() for c, v in per_condition.items()])


def write_store(root, rows: pd.DataFrame) -> None:
    store = ResultsStore(root)
    store.ensure_writable()
    for run_id, r in rows.groupby("run_id"):
        first = r.iloc[0].to_dict()
        info = {k: first[k] for k in ("run_id", "method", "params_hash", "msabench_version", "dataset", "protocol",
                                      "seed", "epochs", "tag", "method_package_version", "protocol_version")}
        info["protocol_params"] = json.loads(first["protocol_params"])
        store.save(RunRecord(key=str(run_id), info=info, rows=r))
    store.rebuild_results()


def cell(board, method: str, condition: str, metric: str) -> pd.Series:
    t = board.table
    sel = t[(t["method"] == method) & (t["condition"] == condition) & (t["metric"] == metric)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def curve(seed: int, k: int, offset: float) -> dict[str, float]:
    """A per-rate curve: distinct values, so a wrong set of rates gives a different mean."""
    return {r: offset + 0.01 * k - 0.03 * i + 0.002 * seed * i for i, r in enumerate(RATIOS)}


def rows_for(method: str, seed: int, offset: float) -> pd.DataFrame:
    return run_rows(method, seed, {m: curve(seed, k, offset) for k, m in enumerate(MOSI_METRICS)})


def test_random_missing_summaries():
    proto = PROTOCOLS.get("random-missing")()
    assert proto.summaries() == {"LNLN-Avg": RATIOS[:10], "Mean": RATIOS}
    assert PROTOCOLS.get("random-missing")(rates="l=0.3,a=0.5,v=0.5").summaries() == {"Mean": ["l=0.3,a=0.5,v=0.5"]}


def test_lnln_avg_is_the_mean_over_rates_below_one_by_hand():
    rows = pd.concat([rows_for("A", s, 0.8) for s in (1, 2, 3)])
    board = build_leaderboard(rows, MOSI_METRICS)
    for k, metric in enumerate(MOSI_METRICS):
        per_seed = []
        for s in (1, 2, 3):
            c = curve(s, k, 0.8)
            per_seed.append(sum(c[r] for r in ("0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"))
                            / 10)
        got = cell(board, "A", "LNLN-Avg", metric)
        assert got["mean"] == pytest.approx(np.mean(per_seed))
        assert got["std"] == pytest.approx(np.std(per_seed, ddof=1))
        assert got["n"] == 3
    # the plain mean still covers r = 1.0 as well
    c = curve(1, 0, 0.8)
    assert cell(board, "A", "Mean", "Mult_acc_7")["mean"] != pytest.approx(cell(board, "A", "LNLN-Avg",
                                                                                  "Mult_acc_7")["mean"])
    assert np.mean(list(c.values())) != pytest.approx(np.mean([c[r] for r in RATIOS[:10]]))


def test_lnln_layout_markdown_and_cli(tmp_path, capsys):
    rows = pd.concat([rows_for(m, s, off) for m, off in (("A", 0.8), ("B", 0.7)) for s in (1, 2)])
    assert lnln_metrics(rows) == MOSI_METRICS
    board = build_leaderboard(rows, MOSI_METRICS)
    md = lnln_table(board)
    assert "| Method | Acc-7 | Acc-5 | Acc-2 (Has0/Non0) | F1 (Has0/Non0) | MAE | Corr | Seeds |" in md
    # A's Acc-7: seeds 1 and 2, mean over the ten rates, in percent
    a7 = [np.mean([curve(s, 0, 0.8)[r] for r in RATIOS[:10]]) * 100 for s in (1, 2)]
    has0 = [np.mean([curve(s, 2, 0.8)[r] for r in RATIOS[:10]]) * 100 for s in (1, 2)]
    non0 = [np.mean([curve(s, 3, 0.8)[r] for r in RATIOS[:10]]) * 100 for s in (1, 2)]
    mae = [np.mean([curve(s, 6, 0.8)[r] for r in RATIOS[:10]]) for s in (1, 2)]
    line = next(x for x in md.splitlines() if x.startswith("| A |"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[1] == f"{np.mean(a7):.2f} ± {np.std(a7, ddof=1):.2f}"
    assert cells[3] == f"{np.mean(has0):.2f} ± {np.std(has0, ddof=1):.2f} / {np.mean(non0):.2f} ± " \
                       f"{np.std(non0, ddof=1):.2f}"
    assert cells[5] == f"{np.mean(mae):.4f} ± {np.std(mae, ddof=1):.4f}"
    assert cells[-1] == "2"

    write_store(tmp_path / "runs", rows)
    assert main(["leaderboard", str(tmp_path / "runs"), "--layout", "lnln"]) == 0
    assert capsys.readouterr().out == md
