"""Reported rows beside measured ones: marked, never best, never tested; plots overlay them; plot with no kind."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import yaml

from msabench.cli import main
from msabench.compare import attach_reported, overlay_points
from msabench.leaderboard import build_leaderboard
from msabench.render import render
from msabench.plots import make_figures, robustness_curve
from msabench.leaderboard import seed_scores
from msabench.reported import parse_table
from tests.test_leaderboard import MODALITY, run_rows
from tests.test_plots import _write_store, rows  # noqa: F401 - the fixture

HRLF = {"{l}": 83.36, "{a}": 69.47, "{v}": 64.59, "{l,a}": 83.82, "{l,v}": 83.56, "{a,v}": 75.62, "Avg": 76.74,
        "{l,a,v}": 84.15}


def measured() -> pd.DataFrame:
    frames = []
    for seed in (1, 2, 3):
        frames.append(run_rows("corrkd", seed, {c: 0.60 + 0.01 * seed for c in MODALITY}))
        frames.append(run_rows("late-fusion", seed, {c: 0.55 + 0.02 * seed for c in MODALITY}))
    return pd.concat(frames, ignore_index=True)


def board_with_reported(**kwargs):
    board = build_leaderboard(measured(), reference="corrkd", **kwargs)
    return attach_reported(board, ["hrlf-2024-table1"])


def test_reported_rows_join_in_msabench_units_and_are_not_best():
    board = board_with_reported()
    rep = board.reported
    hrlf = rep[rep["method"].str.startswith("HRLF")].set_index("condition")["mean"]
    assert set(hrlf.index) == set(HRLF)
    for cond, value in HRLF.items():
        assert hrlf[cond] == pytest.approx(value / 100)
    # the reported numbers are higher than every measured one, yet the measured best keeps the bold
    t = board.table
    best = t[t["best"]]
    assert set(best["method"]) == {"corrkd"}  # 0.63 > 0.61 in every column (seed means by hand)
    assert not t["method"].str.contains("‡").any()  # never inside the statistics table


def test_reported_rows_never_enter_the_tests():
    plain = build_leaderboard(measured(), reference="corrkd")
    board = board_with_reported()
    cols = ["method", "condition", "p_value", "p_value_holm", "best"]
    pd.testing.assert_frame_equal(plain.table[cols], board.table[cols])


def test_markdown_marks_reported_rows_and_says_what_differs():
    text = render(board_with_reported(), "md")
    line = next(ln for ln in text.splitlines() if ln.startswith("| HRLF"))
    assert "‡ (reported, hrlf-2024-table1)" in line and "**" not in line and "±" not in line
    assert "0.8336" in line and "0.7674" in line and line.rstrip().endswith("| reported |")
    assert "NeurIPS 2024, Table 1 (MOSI half), p. 8" in text and "never bolded or tested" in text
    assert "their data: mosi" in text and "model selection" in text


def test_csv_has_a_source_column():
    frame = pd.read_csv(io.StringIO(render(board_with_reported(), "csv")))
    assert set(frame["source"]) == {"measured", "reported:hrlf-2024-table1"}
    rep = frame[frame["source"] != "measured"]
    assert not rep["best"].any() and rep["p_value"].isna().all()
    first = rep[rep["condition"] == "{l}"].set_index("method")["mean"]
    assert first["HRLF ‡ (reported, hrlf-2024-table1)"] == pytest.approx(0.8336)
    assert first["CorrKD ‡ (reported, hrlf-2024-table1)"] == pytest.approx(0.8120)
    assert first["Self-MM ‡ (reported, hrlf-2024-table1)"] == pytest.approx(0.6780)  # HRLF Table 1, first MOSI row
    plain = pd.read_csv(io.StringIO(render(build_leaderboard(measured()), "csv")))
    assert "source" not in plain  # the published CSV format is unchanged without --reported


def test_latex_puts_reported_rows_below_a_rule():
    text = render(board_with_reported(), "latex")
    assert "HRLF $^\\ddagger$ (reported, hrlf-2024-table1) & 0.8336" in text


def test_only_tables_of_the_same_protocol_and_metric_get_reported_rows():
    frames = [run_rows("corrkd", s, {"0.0": 0.7, "0.5": 0.6}, protocol="random-missing") for s in (1, 2)]
    board = attach_reported(build_leaderboard(pd.concat(frames)), ["hrlf-2024-table1"])
    assert board.reported.empty
    assert "‡" not in render(board, "md")


def test_cli_leaderboard_reported(tmp_path, capsys):
    path = tmp_path / "results.csv"
    measured().to_csv(path, index=False)
    assert main(["leaderboard", str(path), "--reported", "hrlf-2024-table1,corrkd-2024-ablation"]) == 0
    out = capsys.readouterr().out
    assert "CorrKD w/o SCD ‡ (reported, corrkd-2024-ablation) | – |" in out and "0.7246" in out
    assert main(["leaderboard", str(path), "--reported", "no-such-table"]) == 2
    assert "no reported table 'no-such-table'" in capsys.readouterr().err


LNLN_LIKE = yaml.safe_load("""
id: curve
paper: {title: T, venue: V}
table: "2"
dataset: mosi
protocol: random-missing
metric_ours: Non0_F1
scale: 100
conditions: ["0.0", "0.5", "1.0"]
rows:
  - {method: P, ours: alpha, values: {"0.0": 80.0, "0.5": 70.0}, verified: by hand}
  - {method: Q, ours: not-measured, values: {"0.0": 50.0}, verified: by hand}
  - {method: R, values: {"0.0": 40.0}, verified: by hand}
""")


def test_overlay_points_and_curve(rows):  # noqa: F811 - the fixture
    table = parse_table(LNLN_LIKE, "curve")
    ratios = {f"{0.1 * i:.1f}": 0.1 * i for i in range(11)}
    assert overlay_points([table], "random-missing", "Non0_F1", ratios) == {
        "P ‡ (reported, curve)": [(0.0, 0.8), (0.5, 0.7)], "Q ‡ (reported, curve)": [(0.0, 0.5)],
        "R ‡ (reported, curve)": [(0.0, 0.4)]}
    # a figure overlays only the published rows of the methods it draws
    assert list(overlay_points([table], "random-missing", "Non0_F1", ratios, methods={"alpha", "beta"})) == [
        "P ‡ (reported, curve)"]
    assert overlay_points([table], "random-missing", "Non0_F1", ratios, "synthetic-mosei") == {}  # a MOSI table
    assert overlay_points([table], "random-missing", "MAE", ratios) == {}
    scores = seed_scores(rows)
    fig = robustness_curve(scores[scores["protocol"] == "random-missing"], reported=[table])
    ax = fig.axes[0]
    assert [ln.get_label() for ln in ax.get_lines() if "‡" in ln.get_label()] == ["P ‡ (reported, curve)"]
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("P ‡"))
    np.testing.assert_allclose(line.get_xdata(), [0.0, 0.5])
    np.testing.assert_allclose(line.get_ydata(), [0.8, 0.7])


def test_plot_without_kind_draws_every_figure_that_applies(tmp_path, rows, capsys):  # noqa: F811
    _write_store(tmp_path / "runs", rows)
    assert main(["plot", str(tmp_path / "runs"), "--out", str(tmp_path / "figs"), "--format", "png"]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["curves-ds-random-missing-Non0_F1.png", "heatmap-ds-modality-missing-Non0_F1.png",
                     "heatmap-ds-random-missing-Non0_F1.png", "training-ds-modality-missing.png",
                     "training-ds-random-missing.png"]
    expected = set(make_figures("curves", [tmp_path / "runs"])) | set(make_figures("heatmap", [tmp_path / "runs"]))
    assert expected <= {n[:-4] for n in names}


def test_dataset_family_keeps_mosei_rows_out_of_mosi_tables():
    from msabench.compare import dataset_family

    names = {"mosi-utterance": "mosi", "synthetic-mosei": "mosei", "CMU-MOSI": "mosi", "ch-sims": "sims",
             "iemocap": "iemocap", "ds": None, "synthetic-small": None, "mmsa:mosi_bert.pkl": "mosi",
             "mmsa:../shared/data/mosi-utterance/mosi_utterance.pkl": "mosi", "mmsa:/data/MOSEI/aligned_50.pkl": "mosei",
             "mmsa:/data/mosi/mosei_bert.pkl": "mosei", "mosiac": None}
    assert {n: dataset_family(n) for n in names} == names
    frames = [run_rows("corrkd", s, {c: 0.6 for c in MODALITY}, dataset="mosi-utterance") for s in (1, 2)]
    board = attach_reported(build_leaderboard(pd.concat(frames)), ["hrlf-2024-table1", "hrlf-2024-table1-mosei"])
    assert set(board.reported["source"]) == {"hrlf-2024-table1"}
    # a data set that names no benchmark (synthetic, custom) gets both, each labelled by its table
    board = attach_reported(build_leaderboard(measured()), ["hrlf-2024-table1", "hrlf-2024-table1-mosei"])
    assert set(board.reported["source"]) == {"hrlf-2024-table1", "hrlf-2024-table1-mosei"}
    hrlf = board.reported[board.reported["method"] == "HRLF ‡ (reported, hrlf-2024-table1-mosei)"]
    assert hrlf.set_index("condition")["mean"]["Avg"] == pytest.approx(0.7563)  # HRLF Table 1, MOSEI half


def test_per_emotion_rows_join_the_per_emotion_tables():
    values = {c: 0.5 for c in MODALITY}
    frames = [run_rows("hrlf", s, values, metric="Happy_F1", task="iemocap", dataset="iemocap",
                       extra={"Sad_F1": values, "Mean_F1": values}) for s in (1, 2)]
    board = attach_reported(build_leaderboard(pd.concat(frames), ["Happy_F1", "Sad_F1", "Mean_F1"]),
                            ["hrlf-2024-table2"])
    rep = board.reported
    assert set(rep["metric"]) == {"Happy_F1", "Sad_F1"}  # the paper gives no mean over emotions
    cell = rep[(rep["method"] == "HRLF ‡ (reported, hrlf-2024-table2)") & (rep["metric"] == "Sad_F1")
               & (rep["condition"] == "{l}")]
    assert cell["mean"].item() == pytest.approx(0.837)  # HRLF Table 2: sad, {l} = 83.7


def test_lnln_layout_shows_reported_rows_in_its_columns(tmp_path, capsys):
    from msabench.layouts import lnln_table
    from tests.test_layouts import MOSI_METRICS, rows_for, write_store

    rows = pd.concat([rows_for("A", s, 0.8) for s in (1, 2)])
    board = attach_reported(build_leaderboard(rows, MOSI_METRICS), ["lnln-2024-table2"])
    md = lnln_table(board)
    line = next(x for x in md.splitlines() if x.startswith("| LNLN ‡"))
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # LNLN Table 2, MOSI: Acc-7 34.26, Acc-5 38.27, Acc-2 72.55 (neg/pos) / 70.94 (neg/non-neg), F1 72.73 / 71.25,
    # MAE 1.046, Corr 0.527 -- shown in the layout's Has0 / Non0 order
    assert cells == ["LNLN ‡ (reported, lnln-2024-table2)", "34.26", "38.27", "70.94 / 72.55", "71.25 / 72.73",
                     "1.0460", "0.5270", "reported"]
    assert md.count("(reported, lnln-2024-table2)") == 8  # every method of the table
    assert "Towards Robust Multimodal Sentiment Analysis with Incomplete Data" in md and "MAE ÷ 1" in md
    measured_line = next(x for x in md.splitlines() if x.startswith("| A |"))
    assert "±" in measured_line and "reported" not in measured_line

    write_store(tmp_path / "runs", rows)
    assert main(["leaderboard", str(tmp_path / "runs"), "--layout", "lnln", "--reported", "lnln-2024-table2"]) == 0
    assert capsys.readouterr().out == md
