"""The README's first run: every seed of the quick start learns, and the one command writes results, a Markdown
leaderboard and a robustness-curve PNG (``--no-report`` skips the last two)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr

from msabench import cli
from msabench.runner import DEFAULT_SEEDS
from msabench.store import ResultsStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _main_one_thread(args: list[str]) -> int:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return cli.main(args)
    finally:
        torch.set_num_threads(before)


def _test_predictions(out: Path, condition: str) -> dict[int, pd.DataFrame]:
    store = ResultsStore(out)
    frames = {}
    for key in store.keys():
        pred = store.predictions(key)
        frames[int(store.run_info(key)["seed"])] = pred[(pred["split"] == "test") & (pred["condition"] == condition)]
    return frames


@pytest.mark.slow  # the README's main command as it stands: 5 seeds x (teacher + student), about a minute on 2 cores
def test_quick_start_every_seed_learns(tmp_path):
    out = tmp_path / "runs"
    assert _main_one_thread(["run", "--method", "corrkd", "--protocol", "random-missing", "--out", str(out),
                             "--save-predictions", "--quiet"]) == 0
    preds = _test_predictions(out, "0.0")
    assert sorted(preds) == sorted(DEFAULT_SEEDS)
    for seed, frame in preds.items():
        assert len(frame) == 160  # synthetic-small's test split
        corr = pearsonr(frame["label"].to_numpy(), frame["prediction"].to_numpy())[0]
        assert corr > 0.5, f"seed {seed} did not learn: test Corr {corr:.3f} at r = 0"
    assert (out / "leaderboard.md").read_text().count("corrkd") >= 1
    assert [p.read_bytes()[:8] for p in (out / "figures").glob("curves-*.png")] == [PNG_MAGIC]


def test_run_ends_by_saying_where_results_leaderboard_and_curve_are(tmp_path, capsys):
    out = tmp_path / "runs"
    assert _main_one_thread(["run", "--method", "late-fusion", "--seeds", "1,2", "--epochs", "1",
                             "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    tail = printed[printed.index("written"):]
    board, (curve,) = out / "leaderboard.md", list((out / "figures").glob("curves-*.png"))
    for path in (out / "results.csv", board, curve):
        assert str(path) in tail
    assert curve.read_bytes()[:8] == PNG_MAGIC
    # the leaderboard's r = 0 cell is the mean over the two seeds of the stored rows, computed here with pandas
    rows = pd.read_csv(out / "results.csv")
    r0 = rows[(rows["split"] == "test") & (rows["condition"] == 0.0) & (rows["metric"] == "Non0_F1")]["value"]
    assert len(r0) == 2 and f"{np.mean(r0):.4f}" in board.read_text()


def test_no_report_writes_only_the_results(tmp_path, capsys):
    out = tmp_path / "runs"
    assert _main_one_thread(["run", "--method", "late-fusion", "--seeds", "1", "--epochs", "1", "--no-report",
                             "--out", str(out)]) == 0
    assert (out / "results.csv").exists()
    assert not (out / "leaderboard.md").exists() and not (out / "figures").exists()
    assert "leaderboard.md" not in capsys.readouterr().out


def test_modality_protocol_gets_a_heatmap_instead_of_a_curve(tmp_path):
    out = tmp_path / "runs"
    assert _main_one_thread(["run", "--method", "late-fusion", "--protocol", "modality-missing", "--seeds", "1",
                             "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert (out / "leaderboard.md").exists()
    assert [p.name.split("-")[0] for p in (out / "figures").glob("*.png")] == ["heatmap"]
