"""Leaderboards from hand-made long rows: numbers are checked against hand computations, scipy and numpy."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from msabench.cli import main
from msabench.leaderboard import LeaderboardError, build_leaderboard, seed_scores
from msabench.render import render
from msabench.store import ResultsStore, RunRecord, read_rows_csv

MISSING = ["{l}", "{a}", "{v}", "{l,a}", "{l,v}", "{a,v}"]
MODALITY = MISSING + ["{l,a,v}"]
RATIOS = [f"{0.1 * i:.1f}" for i in range(11)]


def run_rows(method: str, seed: int, values: dict[str, float], metric: str = "Non0_F1", *,
             protocol: str = "modality-missing", task: str = "mosi", params_hash: str = "p1",
             version: str = "0.1.0", dataset: str = "ds", fingerprint: str = "fp1", masks: dict | None = None,
             run_id: str | None = None, extra: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """The long rows of one run: one per condition × metric, with the runner's provenance columns."""
    run_id = run_id or f"{method}-{params_hash}-{version}-{seed}-{protocol}-{dataset}"
    records = []
    metrics = {metric: values, **(extra or {})}
    for name, per_condition in metrics.items():
        for condition, value in per_condition.items():
            records.append({
                "run_id": run_id, "tag": "", "method": method, "method_package": "msabench",
                "method_package_version": "0.1.0", "params": json.dumps({"h": params_hash}),
                "params_hash": params_hash, "dataset": dataset, "dataset_fingerprint": fingerprint, "task": task,
                "protocol": protocol, "protocol_version": "1",
                "protocol_params": json.dumps({"mask_seed": 0, "train_recipe": "default"}),
                "protocol_package": "msabench", "protocol_package_version": "0.1.0", "seed": seed, "epochs": 2,
                "msabench_version": version, "git_commit": "abc123", "torch_version": "2", "device": "cpu",
                "started": "", "finished": "", "train_seconds": 1.0, "split": "test", "condition": condition,
                "mask_hash": (masks or {}).get(condition, f"mask{condition}"), "metric": name, "value": value,
            })
    return pd.DataFrame(records)


def modality_values(base: float, complete: float = 0.9) -> dict[str, float]:
    out = {c: base + 0.01 * i for i, c in enumerate(MISSING)}
    out["{l,a,v}"] = complete
    return out


def cell(board, method: str, condition: str, metric: str = "Non0_F1") -> pd.Series:
    t = board.table
    sel = t[(t["method"] == method) & (t["condition"] == condition) & (t["metric"] == metric)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


# aggregation ----------------------------------------------------------------------------------------------------
def test_mean_std_n_by_hand():
    rows = pd.concat([run_rows("A", s, {"{l}": v, "{l,a,v}": 0.8}) for s, v in [(1, 0.5), (2, 0.6), (3, 0.7)]])
    board = build_leaderboard(rows)
    c = cell(board, "A", "{l}")
    assert c["mean"] == pytest.approx(0.6)
    assert c["std"] == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    assert c["n"] == 3
    assert c["ci_low"] <= 0.6 <= c["ci_high"]
    assert c["run_ids"].count(";") == 2 and c["seeds"] == "1;2;3"
    assert c["mask_hashes"] == "mask{l}"


def test_avg_uses_exactly_the_six_missing_conditions():
    rows = []
    per_seed_avg = []
    for seed, base in [(1, 0.40), (2, 0.46), (3, 0.49)]:
        vals = modality_values(base, complete=1000.0)  # an extreme complete score must not leak into Avg
        rows.append(run_rows("A", seed, vals))
        per_seed_avg.append(np.mean([vals[c] for c in MISSING]))
    board = build_leaderboard(pd.concat(rows))
    avg = cell(board, "A", "Avg")
    assert avg["mean"] == pytest.approx(np.mean(per_seed_avg))
    assert avg["std"] == pytest.approx(np.std(per_seed_avg, ddof=1))
    assert avg["kind"] == "summary"
    assert avg["mask_hashes"] == ";".join(sorted(f"mask{c}" for c in MISSING))
    assert board.column_order("ds", "modality-missing", "Non0_F1") == [*MISSING, "Avg", "{l,a,v}"]


def test_ratio_protocol_mean_and_auc_by_hand():
    curves = {1: [0.8 - 0.05 * i for i in range(11)], 2: [0.7 - 0.02 * i ** 1.5 for i in range(11)]}
    rows = pd.concat([run_rows("A", s, dict(zip(RATIOS, v)), protocol="random-missing") for s, v in curves.items()])
    board = build_leaderboard(rows)
    r = np.linspace(0, 1, 11)
    aucs = [sum((r[i + 1] - r[i]) * (v[i] + v[i + 1]) / 2 for i in range(10)) for v in curves.values()]
    auc = cell(board, "A", "AUC")
    assert auc["mean"] == pytest.approx(np.mean(aucs))
    assert auc["std"] == pytest.approx(np.std(aucs, ddof=1))
    assert cell(board, "A", "Mean")["mean"] == pytest.approx(np.mean([np.mean(v) for v in curves.values()]))
    assert board.column_order("ds", "random-missing", "Non0_F1") == [*RATIOS[:10], "LNLN-Avg", "1.0", "Mean", "AUC"]


def test_best_follows_metric_direction():
    rows = pd.concat([run_rows("A", s, {"{l}": 0.9 + s / 100}, metric="MAE") for s in (1, 2)]
                     + [run_rows("B", s, {"{l}": 0.7 + s / 100}, metric="MAE") for s in (1, 2)])
    board = build_leaderboard(rows, metric="MAE")
    assert cell(board, "B", "{l}", "MAE")["best"] and not cell(board, "A", "{l}", "MAE")["best"]
    assert "**0.7150" in render(board, "md")


def test_default_metric_per_task_and_iemocap_blocks():
    rows = run_rows("A", 1, {"{l}": 0.5}, extra={"MAE": {"{l}": 1.0}})
    assert set(build_leaderboard(rows).table["metric"]) == {"Non0_F1"}
    emo = {"Mean_F1": {"{l}": 0.5}, "Happy_F1": {"{l}": 0.6}, "Sad_F1": {"{l}": 0.4}, "Happy_acc": {"{l}": 0.7}}
    rows = run_rows("A", 1, {"{l}": 0.55}, metric="Mean_acc", task="iemocap", extra=emo, dataset="iemo",
                    fingerprint="fp2")
    board = build_leaderboard(rows)
    assert list(dict.fromkeys(board.table["metric"])) == ["Mean_F1", "Happy_F1", "Sad_F1"]
    assert render(board, "md").count("### iemo") == 3


# never pooled ---------------------------------------------------------------------------------------------------
def test_different_hyperparameters_are_separate_entries():
    rows = pd.concat([run_rows("A", 1, {"{l}": 0.5}, params_hash="p1"),
                      run_rows("A", 2, {"{l}": 0.7}, params_hash="p1"),
                      run_rows("A", 1, {"{l}": 0.1}, params_hash="p2")])
    board = build_leaderboard(rows)
    assert set(board.table["method"]) == {"A [p1]", "A [p2]"}
    assert cell(board, "A [p1]", "{l}")["mean"] == pytest.approx(0.6)
    assert cell(board, "A [p2]", "{l}")["mean"] == pytest.approx(0.1)
    assert cell(board, "A [p2]", "{l}")["params_hash"] == "p2"


def test_different_msabench_versions_are_separate_entries():
    rows = pd.concat([run_rows("A", 1, {"{l}": 0.5}, version="0.1.0"), run_rows("A", 2, {"{l}": 0.7}, version="0.2.0")])
    assert set(build_leaderboard(rows).table["method"]) == {"A [msabench 0.1.0]", "A [msabench 0.2.0]"}


def test_different_masks_in_one_condition_are_refused():
    rows = pd.concat([run_rows("A", 1, {"{l}": 0.5}), run_rows("B", 1, {"{l}": 0.6}, masks={"{l}": "other"})])
    with pytest.raises(LeaderboardError, match="different masks"):
        build_leaderboard(rows)


def test_different_data_under_one_name_is_refused():
    rows = pd.concat([run_rows("A", 1, {"{l}": 0.5}), run_rows("B", 1, {"{l}": 0.6}, fingerprint="fp9")])
    with pytest.raises(LeaderboardError, match="different contents"):
        build_leaderboard(rows)


def test_two_runs_for_one_seed_are_refused():
    rows = pd.concat([run_rows("A", 1, {"{l}": 0.5}, run_id="r1"), run_rows("A", 1, {"{l}": 0.6}, run_id="r2")])
    with pytest.raises(LeaderboardError, match="several runs for seed 1"):
        build_leaderboard(rows)


def test_the_same_run_read_twice_is_counted_once():
    rows = run_rows("A", 1, {"{l}": 0.5})
    assert cell(build_leaderboard(pd.concat([rows, rows])), "A", "{l}")["n"] == 1


def test_unknown_metric_and_reference_are_clear_errors():
    rows = run_rows("A", 1, {"{l}": 0.5})
    with pytest.raises(LeaderboardError, match="not in the results"):
        build_leaderboard(rows, metric="Corr")
    with pytest.raises(LeaderboardError, match="reference 'Z'"):
        build_leaderboard(rows, reference="Z")


# significance ---------------------------------------------------------------------------------------------------
def _three_methods(seeds: list[int]) -> tuple[pd.DataFrame, dict[str, dict[int, float]]]:
    rng = np.random.default_rng(7)
    values = {m: {s: float(rng.uniform(0.4, 0.8)) for s in seeds} for m in ("A", "B", "REF")}
    frames = [run_rows(m, s, {"{l}": v}) for m, per_seed in values.items() for s, v in per_seed.items()]
    rows = pd.concat(frames).sample(frac=1.0, random_state=3)  # row order must not matter: pairing is by seed
    return rows, values


@pytest.mark.parametrize("n_seeds, test", [(4, "ttest_rel"), (7, "wilcoxon")])
def test_paired_p_values_equal_scipy_and_holm_by_hand(n_seeds, test):
    seeds = list(range(100, 100 + n_seeds))
    rows, values = _three_methods(seeds)
    board = build_leaderboard(rows, reference="REF")
    ref = [values["REF"][s] for s in seeds]
    scipy_test = sps.ttest_rel if test == "ttest_rel" else sps.wilcoxon
    p = {m: scipy_test([values[m][s] for s in seeds], ref).pvalue for m in ("A", "B")}
    lo, hi = sorted(p, key=p.get)
    holm = {lo: min(1.0, 2 * p[lo])}
    holm[hi] = min(1.0, max(holm[lo], p[hi]))
    for m in ("A", "B"):
        c = cell(board, m, "{l}")
        assert c["test"] == test
        assert c["p_value"] == pytest.approx(p[m], rel=1e-10)
        assert c["p_value_holm"] == pytest.approx(holm[m], rel=1e-10)
    assert cell(board, "REF", "{l}")["test"] == "reference"
    assert math.isnan(cell(board, "REF", "{l}")["p_value"])


def test_tests_pair_only_shared_seeds_and_report_impossible_ones():
    rows = pd.concat([run_rows("A", 1, {"{l}": 0.5}), run_rows("A", 2, {"{l}": 0.6}),
                      run_rows("REF", 2, {"{l}": 0.4}), run_rows("REF", 3, {"{l}": 0.3})])
    c = cell(build_leaderboard(rows, reference="REF"), "A", "{l}")
    assert math.isnan(c["p_value"]) and math.isnan(c["p_value_holm"])
    assert "1 seed pair" in c["test_note"]


def test_markdown_marks_significant_entries():
    seeds = [1, 2, 3]
    rows = pd.concat([run_rows("A", s, {"{l}": 0.5 + 0.01 * s + 0.001 * s * s}) for s in seeds]
                     + [run_rows("REF", s, {"{l}": 0.8 + 0.01 * s}) for s in seeds])
    board = build_leaderboard(rows, reference="REF")
    p = sps.ttest_rel([0.5 + 0.01 * s + 0.001 * s * s for s in seeds], [0.8 + 0.01 * s for s in seeds]).pvalue
    assert p < 0.05
    md = render(board, "md")
    line = next(x for x in md.splitlines() if x.startswith("| A |"))
    assert "†" in line
    assert md.splitlines()[-1].startswith("mean ± std") or "paired t-test" in md
    latex = render(board, "latex")
    assert "\\textbf{" in latex and "$^\\dagger$" in latex and "$\\{l\\}$" in latex


# robustness -----------------------------------------------------------------------------------------------------
def test_effective_robustness_against_a_baseline_in_the_table():
    rows = []
    base = {1: (0.50, 0.80), 2: (0.54, 0.84)}  # seed: (missing mean, complete)
    other = {1: (0.60, 0.82), 2: (0.58, 0.86)}
    for method, per_seed in (("BASE", base), ("X", other)):
        for seed, (miss, comp) in per_seed.items():
            vals = {c: miss for c in MISSING}
            vals["{l,a,v}"] = comp
            rows.append(run_rows(method, seed, vals))
    board = build_leaderboard(pd.concat(rows), baseline="BASE")
    ratio = np.mean([m for m, _ in base.values()]) / np.mean([c for _, c in base.values()])
    er = [m - c * ratio for m, c in other.values()]
    assert cell(board, "X", "EffRob")["mean"] == pytest.approx(np.mean(er))
    assert cell(board, "X", "EffRob")["std"] == pytest.approx(np.std(er, ddof=1))
    assert cell(board, "BASE", "EffRob")["mean"] == pytest.approx(0.0, abs=1e-12)


def test_unknown_protocol_falls_back_to_observed_conditions():
    rows = pd.concat([run_rows("A", s, {"c1": 0.2 * s, "c2": 0.4}, protocol="my-plugin-protocol") for s in (1, 2)])
    board = build_leaderboard(rows)
    assert board.column_order("ds", "my-plugin-protocol", "Non0_F1") == ["c1", "c2", "Mean"]
    assert cell(board, "A", "Mean")["mean"] == pytest.approx(np.mean([(0.2 + 0.4) / 2, (0.4 + 0.4) / 2]))


def test_tidy_csv_has_one_row_per_entry_column_metric():
    rows = pd.concat([run_rows(m, s, modality_values(0.5)) for m in ("A", "B") for s in (1, 2)])
    board = build_leaderboard(rows, reference="B")
    csv = pd.read_csv(io.StringIO(render(board, "csv")), dtype={"condition": str})
    assert len(csv) == 2 * (len(MODALITY) + 1)  # 7 conditions + Avg, per method
    assert not csv.duplicated(["method", "condition", "metric"]).any()
    for col in ("mean", "std", "n", "ci_low", "ci_high", "p_value", "p_value_holm", "test", "best",
                "msabench_version", "params_hash", "mask_hashes", "dataset_fingerprint", "git_commits", "run_ids"):
        assert col in csv


def test_seed_scores_only_from_the_requested_split():
    rows = run_rows("A", 1, {"{l}": 0.5})
    valid = rows.assign(split="valid", value=0.9)
    scores = seed_scores(pd.concat([rows, valid]), split="valid")
    assert scores["value"].tolist() == [0.9]


# command line ---------------------------------------------------------------------------------------------------
def write_store(root, rows: pd.DataFrame) -> None:
    """The runner's runs/<id>/{rows.csv,run.json} layout, written by the store itself."""
    store = ResultsStore(root)
    store.ensure_writable()
    for run_id, r in rows.groupby("run_id"):
        first = r.iloc[0].to_dict()
        info = {k: first[k] for k in ("run_id", "method", "params_hash", "msabench_version", "dataset", "protocol",
                                      "seed", "epochs", "tag", "method_package_version", "protocol_version")}
        info["protocol_params"] = json.loads(first["protocol_params"])
        info["training_curve"] = [{"epoch": e, "train_loss": 1.0 / (e + 1), "valid_score": 0.1 * e, "stage": ""}
                                  for e in range(3)]
        store.save(RunRecord(key=str(run_id), info=info, rows=r))
    store.rebuild_results()


def test_cli_leaderboard_md_and_csv(tmp_path, capsys):
    values = {("A", 1): 0.5, ("A", 2): 0.7, ("B", 1): 0.6, ("B", 2): 0.62}
    rows = pd.concat([run_rows(m, s, {**modality_values(v), "{l}": v}) for (m, s), v in values.items()])
    write_store(tmp_path / "runs", rows)
    assert main(["leaderboard", str(tmp_path / "runs"), "--reference", "B", "--baseline", "B"]) == 0
    md = capsys.readouterr().out
    assert "| Method | {l} | {a} | {v} | {l,a} | {l,v} | {a,v} | Avg | {l,a,v} | EffRob | Seeds |" in md
    assert "| A | 0.6000 ± 0.1414 |" in md  # mean of 0.5, 0.7; std sqrt(0.02)
    out = tmp_path / "board.csv"
    assert main(["leaderboard", str(tmp_path / "runs"), "--format", "csv", "--out", str(out)]) == 0
    csv = read_rows_csv(out)
    a = csv[(csv["method"] == "A") & (csv["condition"] == "{l}")].iloc[0]
    assert float(a["mean"]) == pytest.approx(0.6) and int(a["n"]) == 2
    assert sorted(a["run_ids"].split(";")) == sorted(rows[rows["method"] == "A"]["run_id"].unique())


def test_tagged_variants_are_labelled_by_tag():
    from msabench.leaderboard import _entry_labels

    rows = pd.DataFrame({
        "method": ["corrkd"] * 4, "dataset": ["d"] * 4, "protocol_label": ["p"] * 4,
        "params_hash": ["aaa", "aaa", "bbb", "bbb"], "msabench_version": ["0.1.0"] * 4,
        "method_package_version": ["0.1.0"] * 4, "tag": ["", "", "no-scd", "no-scd"], "epochs": ["5"] * 4,
    })
    assert list(_entry_labels(rows)) == ["corrkd", "corrkd", "corrkd [no-scd]", "corrkd [no-scd]"]
    # a tag shared by two configurations does not identify them: fall back to the hashes
    rows.loc[1, "params_hash"] = "ccc"
    labels = list(_entry_labels(rows))
    assert labels[0] != labels[1] and "aaa" in labels[0]
