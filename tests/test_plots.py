"""Plots: the returned matplotlib objects hold the expected lines, cells and values; files are written."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.colors import to_rgb

from msabench.cli import main
from msabench.leaderboard import seed_scores
from msabench.plots import condition_heatmap, make_figures, method_colors, robustness_curve, save_figures
from msabench.plots import training_figure
from msabench.store import ResultsStore, RunRecord

RATIOS = [f"{0.1 * i:.1f}" for i in range(11)]
MODALITY = ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}", "{l,a,v}"]


def long_rows(method: str, seed: int, protocol: str, values: dict[str, float]) -> pd.DataFrame:
    run_id = f"{method}-{seed}-{protocol}"
    return pd.DataFrame([{
        "run_id": run_id, "tag": "", "method": method, "method_package_version": "0.1.0", "params_hash": "p",
        "dataset": "ds", "dataset_fingerprint": "fp", "task": "mosi", "protocol": protocol, "protocol_version": "1",
        "protocol_params": json.dumps({"mask_seed": 0, "train_recipe": "default"}), "seed": seed, "epochs": 2,
        "msabench_version": "0.1.0", "git_commit": "abc", "split": "test", "condition": c, "mask_hash": f"m{c}",
        "metric": "Non0_F1", "value": v} for c, v in values.items()])


def curve_values(method: str, seed: int) -> dict[str, float]:
    slope = {"alpha": 0.1, "beta": 0.2, "gamma": 0.3}[method]
    return {r: 0.8 - slope * float(r) + 0.01 * seed for r in RATIOS}


@pytest.fixture()
def rows() -> pd.DataFrame:
    frames = []
    for method in ("gamma", "alpha", "beta"):
        for seed in (1, 2):
            frames.append(long_rows(method, seed, "random-missing", curve_values(method, seed)))
            frames.append(long_rows(method, seed, "modality-missing",
                                    {c: 0.5 + 0.01 * i + 0.1 * seed for i, c in enumerate(MODALITY)}))
    return pd.concat(frames, ignore_index=True)


def test_robustness_curve_has_one_line_per_method_through_the_seed_means(rows):
    scores = seed_scores(rows)
    scores = scores[scores["protocol"] == "random-missing"]
    colors = method_colors(["gamma", "beta", "alpha"])
    fig = robustness_curve(scores, colors)
    (ax,) = fig.axes
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(RATIOS)]
    assert len(lines) == 3
    for method, line in zip(("alpha", "beta", "gamma"), lines):  # hue order is sorted
        expected = np.mean([list(curve_values(method, s).values()) for s in (1, 2)], axis=0)
        np.testing.assert_allclose(line.get_ydata(), expected, rtol=1e-12)
        np.testing.assert_allclose(line.get_xdata(), [float(r) for r in RATIOS])
        np.testing.assert_allclose(to_rgb(line.get_color()), colors[method])
    assert len(ax.collections) == 3  # one sd band per method


def test_colors_are_stable_sorted_colorblind_palette():
    import seaborn as sns

    palette = sns.color_palette("colorblind")
    assert method_colors(["b", "a", "c"]) == {"a": palette[0], "b": palette[1], "c": palette[2]}
    assert method_colors(["c", "a", "b"]) == method_colors(["a", "b", "c"])


def test_more_entries_than_colours_still_look_different():
    frames = [long_rows(f"m{i:02d}", seed, "random-missing", {r: 0.5 + 0.01 * i for r in RATIOS})
              for i in range(12) for seed in (1, 2)]
    scores = seed_scores(pd.concat(frames, ignore_index=True))
    scores["dataset"] = "mmsa:../shared/data/mosi-utterance/mosi_utterance.pkl"
    (ax,) = robustness_curve(scores).axes
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(RATIOS)]
    assert len(lines) == 12
    looks = {(to_rgb(ln.get_color()), str(ln.get_dashes() if hasattr(ln, "get_dashes") else ln.get_linestyle()),
              ln.get_marker()) for ln in lines}
    assert len(looks) == 12  # the colour-blind palette has 10 colours; style tells the others apart
    assert ax.get_title().startswith("mmsa:mosi_utterance.pkl · ")


def test_heatmap_has_a_cell_per_method_and_condition(rows):
    scores = seed_scores(rows)
    scores = scores[scores["protocol"] == "modality-missing"]
    fig = condition_heatmap(scores)
    ax = fig.axes[0]
    mesh = [c for c in ax.collections if isinstance(c, QuadMesh)][0]
    cells = np.asarray(mesh.get_array()).reshape(3, len(MODALITY))
    assert cells.shape == (3, 7)
    np.testing.assert_allclose(cells[0], [0.5 + 0.01 * i + 0.15 for i in range(7)])  # mean of seeds 1 and 2
    assert len(ax.texts) == 21
    assert [t.get_text() for t in ax.get_xticklabels()] == MODALITY


def test_training_figure_has_two_panels_with_a_line_per_method():
    curves = pd.DataFrame([{"entry": m, "dataset": "ds", "protocol_label": "p", "seed": s, "epoch": e,
                            "train_loss": 1.0 / (e + 1) + s, "valid_score": 0.1 * e * s, "stage": ""}
                           for m in ("x", "y") for s in (1, 3) for e in range(4)])
    fig = training_figure(curves)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len([ln for ln in ax.get_lines() if len(ln.get_xdata()) == 4]) == 2
    valid = [ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 4][0]
    np.testing.assert_allclose(valid.get_ydata(), [0.1 * e * 2 for e in range(4)])  # mean over seeds 1 and 3


def _write_store(root, rows: pd.DataFrame) -> None:
    store = ResultsStore(root)
    store.ensure_writable()
    for run_id, r in rows.groupby("run_id"):
        first = r.iloc[0].to_dict()
        info = {k: first[k] for k in ("run_id", "method", "params_hash", "msabench_version", "dataset", "protocol",
                                      "protocol_version", "seed", "epochs", "tag", "method_package_version")}
        info["protocol_params"] = json.loads(first["protocol_params"])
        info["training_curve"] = [{"epoch": e, "train_loss": 1.0 - 0.1 * e, "valid_score": 0.2 * e, "stage": ""}
                                  for e in range(3)]
        store.save(RunRecord(key=str(run_id), info=info, rows=r))


def test_files_from_stored_runs(tmp_path, rows):
    _write_store(tmp_path / "runs", rows)
    figures = make_figures("curves", [tmp_path / "runs"])
    assert list(figures) == ["curves-ds-random-missing-Non0_F1"]  # modality-missing has no ratios
    written = save_figures(figures, tmp_path / "out", ["png", "svg"])
    assert sorted(p.suffix for p in written) == [".png", ".svg"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert written[0].read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in written[1].read_bytes()[:2000]
    heat = make_figures("heatmap", [tmp_path / "runs"])
    assert len(heat) == 2
    training = make_figures("training", [tmp_path / "runs"])
    assert len(training) == 2


def test_cli_plot(tmp_path, rows, capsys):
    _write_store(tmp_path / "runs", rows)
    assert main(["plot", "training", str(tmp_path / "runs"), "--out", str(tmp_path / "figs"), "--format", "png"]) == 0
    files = sorted((tmp_path / "figs").iterdir())
    assert [f.name for f in files] == ["training-ds-modality-missing.png", "training-ds-random-missing.png"]
    assert str(files[0]) in capsys.readouterr().out
