"""Reported (published) tables: every packaged file parses, and every stated average matches its conditions."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from msabench.reported import (ReportedError, available_reported, load_reported, parse_table, summary_check,
                               summary_decimals)

NAMES = available_reported()


REQUIRED = ("corrkd-2024-table1", "corrkd-2024-table1-mosei", "corrkd-2024-iemocap", "corrkd-2024-ablation",
            "hrlf-2024-table1", "hrlf-2024-table1-mosei", "hrlf-2024-table2", "hrlf-2024-ablation",
            "lnln-2024-table2", "lnln-2024-table2-mosei")


def test_the_required_tables_are_packaged():
    for name in REQUIRED:
        assert name in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_file_parses_and_says_where_it_comes_from(name):
    table = load_reported(name)
    assert table.paper["title"] and table.paper["venue"] and table.paper["arxiv"]
    assert table.rows or table.omitted, "an empty table must say what was left out and why"
    for row in table.rows:
        assert row.verified


@pytest.mark.parametrize("name", NAMES)
def test_each_stated_average_is_the_mean_of_its_conditions(name):
    table = load_reported(name)
    checked = 0
    for row in table.rows:
        for metric, values in row.metrics.items():
            for summary, spec in table.summaries.items():
                if summary in values and all(m in values for m in spec["members"]):
                    mean = np.mean([values[m] for m in spec["members"]])
                    # the stated value and each member are rounded to the paper's decimals (0.01, or 0.1 on IEMOCAP)
                    unit = 10.0 ** -summary_decimals(spec, metric)  # e.g. LNLN's MAE and Corr: 0.001
                    assert abs(mean - values[summary]) <= unit + 1e-9, (row.method, metric, summary, mean)
                    checked += 1
    assert summary_check(table) == []
    if name.startswith("hrlf-"):  # every HRLF row gives all six conditions and the average: all of them checked
        assert checked == sum(len(r.metrics) for r in table.rows) > 0
    if name.startswith("lnln-"):  # LNLN's Table 2 averages against its per-rate Table 9 (TETFN on MOSEI left out)
        assert checked == 8 * (8 if name == "lnln-2024-table2" else 7)


@pytest.mark.parametrize("name", NAMES)
def test_every_value_is_in_its_metric_s_range(name):
    for rec in load_reported(name).frame().to_dict("records"):
        if rec["metric"] == "MAE":
            assert 0 < rec["value"] < 3, rec
        elif rec["metric"] == "Corr":
            assert -1 <= rec["value"] <= 1, rec
        else:  # accuracies and F1: a fraction after dividing by the paper's scale
            assert 0 < rec["value"] < 1, rec


def test_known_values_and_units():
    t = load_reported("hrlf-2024-table1")
    rows = {r.method: r.values for r in t.rows}
    assert rows["HRLF"]["Avg"] == 76.74 and rows["CorrKD"]["{l,a,v}"] == 83.94
    # (83.36 + 69.47 + 64.59 + 83.82 + 83.56 + 75.62) / 6 = 76.7367 (by hand)
    assert abs(np.mean([83.36, 69.47, 64.59, 83.82, 83.56, 75.62]) - 76.7367) < 1e-4
    frame = t.frame()
    hrlf_l = frame[(frame["method"] == "HRLF") & (frame["condition"] == "{l}")]
    assert hrlf_l["value"].item() == pytest.approx(0.8336)
    assert set(frame.loc[frame["condition"] == "Avg", "kind"]) == {"summary"}


def test_corrkd_row_agrees_between_the_two_papers():
    for suffix in ("", "-mosei"):
        a = {r.method: r.values for r in load_reported("corrkd-2024-table1" + suffix).rows}["CorrKD"]
        b = {r.method: r.values for r in load_reported("hrlf-2024-table1" + suffix).rows}["CorrKD"]
        assert a == b


def rows_of(name: str) -> dict[str, dict[str, dict[str, float]]]:
    return {r.method: r.metrics for r in load_reported(name).rows}


def test_known_values_hrlf_mosei_half_and_the_methods_in_it():
    t = load_reported("hrlf-2024-table1-mosei")
    assert t.dataset == "mosei" and t.page == 8 and len(t.rows) == 9
    r = rows_of("hrlf-2024-table1-mosei")
    # HRLF Table 1, MOSEI half (HRLF text p. 8): HRLF {l} 82.05, Avg 75.63; CubeMLP {v} 32.58; GCNet Avg 73.54
    assert r["HRLF"]["Non0_F1"]["{l}"] == 82.05 and r["HRLF"]["Non0_F1"]["Avg"] == 75.63
    assert r["CubeMLP"]["Non0_F1"]["{v}"] == 32.58 and r["GCNet"]["Non0_F1"]["Avg"] == 73.54
    # by hand: (82.05 + 69.32 + 64.90 + 82.62 + 81.09 + 73.80) / 6 = 453.78 / 6 = 75.63
    assert abs(453.78 / 6 - 75.63) < 1e-9
    assert list(rows_of("hrlf-2024-table1")) == ["Self-MM", "CubeMLP", "DMD", "MCTN", "TransM", "SMIL", "GCNet",
                                                  "CorrKD", "HRLF"]


def test_known_values_hrlf_iemocap_per_emotion():
    t = load_reported("hrlf-2024-table2")
    r = rows_of("hrlf-2024-table2")
    assert set(r["HRLF"]) == {"Happy_F1", "Sad_F1", "Angry_F1", "Neutral_F1"}
    # HRLF Table 2 (p. 9): HRLF happy Avg 78.5; CorrKD neutral {a,v} 57.2; DMD happy complete 91.1
    assert r["HRLF"]["Happy_F1"]["Avg"] == 78.5 and r["CorrKD"]["Neutral_F1"]["{a,v}"] == 57.2
    assert r["DMD"]["Happy_F1"]["{l,a,v}"] == 91.1
    # by hand: (84.9 + 71.8 + 69.7 + 86.4 + 85.6 + 72.3) / 6 = 470.7 / 6 = 78.45, printed 78.5
    assert abs(470.7 / 6 - 78.45) < 1e-9
    frame = t.frame()
    happy = frame[(frame["method"] == "HRLF") & (frame["metric"] == "Happy_F1") & (frame["condition"] == "Avg")]
    assert happy["value"].item() == pytest.approx(0.785)


def test_known_values_hrlf_ablation():
    r = {k: v["Non0_F1"] for k, v in rows_of("hrlf-2024-ablation").items()}
    # HRLF Table 3 (p. 10)
    assert r["HRLF w/o FRF"]["Avg"] == 74.43 and r["HRLF w/o HMI"]["{v}"] == 62.70
    assert r["HRLF w/o HAL"]["{l,a}"] == 83.12 and r["HRLF (Full)"] == rows_of("hrlf-2024-table1")["HRLF"]["Non0_F1"]


def test_known_values_lnln_every_metric_and_its_scale():
    t = load_reported("lnln-2024-table2")
    r = rows_of("lnln-2024-table2")
    assert list(r) == ["MISA", "Self-MM", "MMIM", "CENET", "TETFN", "TFR-Net", "ALMT", "LNLN"]
    lnln = {m: v["LNLN-Avg"] for m, v in r["LNLN"].items()}
    # its Table 9 (p. 16), r = 0.0 and r = 0.9: Acc-7 44.56 and 22.98, MAE 0.751 and 1.349
    assert r["LNLN"]["Mult_acc_7"]["0.0"] == 44.56 and r["LNLN"]["Mult_acc_7"]["0.9"] == 22.98
    assert r["LNLN"]["MAE"]["0.0"] == 0.751 and r["LNLN"]["MAE"]["0.9"] == 1.349
    # by hand: LNLN's MOSI Acc-7 over the ten rates, (44.56 + 42.37 + 39.74 + 38.00 + 36.49 + 33.92 + 30.37 + 27.79
    # + 26.34 + 22.98) / 10 = 342.56 / 10 = 34.256, printed 34.26
    assert abs(sum(r["LNLN"]["Mult_acc_7"][f"0.{i}"] for i in range(10)) - 342.56) < 1e-9
    # LNLN Table 2, MOSI (p. 8): 34.26 | 38.27 | 72.55 / 70.94 | 72.73 / 71.25 | 1.046 | 0.527, the left value of a
    # pair being negative/positive (our Non0) and the right negative/non-negative (our Has0), per its Sec. 4.2
    assert lnln == {"Mult_acc_7": 34.26, "Mult_acc_5": 38.27, "Non0_acc_2": 72.55, "Has0_acc_2": 70.94,
                    "Non0_F1": 72.73, "Has0_F1": 71.25, "MAE": 1.046, "Corr": 0.527}
    frame = t.frame().set_index(["method", "metric", "condition"])["value"]
    assert frame[("LNLN", "MAE", "LNLN-Avg")] == pytest.approx(1.046)  # MAE and Corr are not percentages
    assert frame[("LNLN", "Corr", "LNLN-Avg")] == pytest.approx(0.527)
    assert frame[("LNLN", "Mult_acc_7", "LNLN-Avg")] == pytest.approx(0.3426)
    assert frame[("LNLN", "Mult_acc_7", "0.9")] == pytest.approx(0.2298)
    mosei = rows_of("lnln-2024-table2-mosei")
    assert mosei["LNLN"]["Has0_F1"]["LNLN-Avg"] == 79.95 and mosei["Self-MM"]["Mult_acc_7"]["LNLN-Avg"] == 44.70
    assert mosei["ALMT"]["MAE"]["LNLN-Avg"] == 0.674
    assert load_reported("lnln-2024-table2-mosei").dataset == "mosei"


def test_unverifiable_tables_say_so():
    for name in ("corrkd-2024-iemocap",):
        t = load_reported(name)
        assert not t.rows and "not reachable" in t.omitted
    for name in ("corrkd-2024-table1", "corrkd-2024-table1-mosei", "corrkd-2024-ablation"):
        t = load_reported(name)
        assert t.page is None and "not reachable" in t.omitted


def _base():
    return yaml.safe_load("""
id: x
paper: {title: T, venue: V}
table: "1"
dataset: mosi
protocol: modality-missing
metric_ours: Non0_F1
scale: 100
conditions: ["{l}", "{a}"]
summaries: {Avg: {members: ["{l}", "{a}"], definition: mean of two, decimals: 2}}
rows:
  - {method: M, values: {"{l}": 80.0, "{a}": 60.0, "Avg": 70.0}, verified: by hand}
""")


def test_a_wrong_average_is_caught_in_any_metric_of_a_row():
    data = _base()
    data["rows"][0]["metrics"] = {"Has0_F1": {"{l}": 50.0, "{a}": 70.0, "Avg": 60.0}}
    assert summary_check(parse_table(data, "x")) == []
    data["rows"][0]["metrics"]["Has0_F1"]["Avg"] = 61.0
    problems = summary_check(parse_table(data, "x"))
    assert len(problems) == 1 and "Has0_F1" in problems[0]


def test_rows_with_several_metrics_and_their_scales():
    data = _base()
    data["scales"] = {"MAE": 1}
    data["rows"].append({"method": "N", "metrics": {"MAE": {"{l}": 0.9}, "Non0_F1": {"{l}": 81.0}}, "verified": "x"})
    table = parse_table(data, "x")
    assert table.rows[1].values == {"{l}": 81.0}  # values: the table's own metric
    frame = table.frame().set_index(["method", "metric", "condition"])["value"]
    assert frame[("N", "MAE", "{l}")] == pytest.approx(0.9) and frame[("N", "Non0_F1", "{l}")] == pytest.approx(0.81)
    assert frame[("M", "Non0_F1", "{a}")] == pytest.approx(0.6)
    data = _base()
    data["rows"][0]["values"]["Avg"] = 70.05
    assert summary_check(parse_table(data, "x"))
    data["rows"][0]["values"]["Avg"] = 70.01
    assert summary_check(parse_table(data, "x")) == []


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("scale"), "lacks keys"),
    (lambda d: d.update(colour="red"), "unknown keys"),
    (lambda d: d["rows"][0].pop("verified"), "verified"),
    (lambda d: d["rows"][0]["values"].update({"{v}": 1.0}), "neither a condition nor a summary"),
    (lambda d: d["rows"][0]["values"].update({"{l}": "n/a"}), "not a number"),
    (lambda d: d["summaries"]["Avg"]["members"].append("{v}"), "not among the conditions"),
    (lambda d: d["rows"][0].update(colour="red"), "unknown keys"),
    (lambda d: d["rows"][0].update(metrics={"Non0_F1": {"{l}": 1.0}}), "twice"),
    (lambda d: d["rows"][0].update(metrics=[1, 2]), "metrics must map"),
    (lambda d: d["rows"][0].pop("values"), "needs a values mapping"),
    (lambda d: d.update(scales={"MAE": 0}), "scales must map"),
    (lambda d: d["rows"][0]["values"].update({"{l}": True}), "not a number"),
])
def test_schema_errors_name_the_problem(edit, message):
    data = _base()
    edit(data)
    with pytest.raises(ReportedError, match=message):
        parse_table(data, "x")


def test_unknown_name_lists_the_packaged_tables():
    with pytest.raises(ReportedError, match="hrlf-2024-table1"):
        load_reported("no-such-table")


def test_metric_decimals_tighten_the_check_for_that_metric():
    data = _base()
    data["rows"][0]["metrics"] = {"MAE": {"{l}": 1.0, "{a}": 1.0, "Avg": 1.005}}
    assert summary_check(parse_table(data, "x")) == []  # 0.005 is within two decimals' rounding
    data["summaries"]["Avg"]["metric_decimals"] = {"MAE": 3}
    problems = summary_check(parse_table(data, "x"))
    assert len(problems) == 1 and "MAE" in problems[0]  # ... but not within three
