"""Reported (published) tables: every packaged file parses, and every stated average matches its conditions."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from msabench.reported import ReportedError, available_reported, load_reported, parse_table, summary_check

NAMES = available_reported()


def test_the_required_tables_are_packaged():
    for name in ("corrkd-2024-table1", "corrkd-2024-iemocap", "corrkd-2024-ablation", "hrlf-2024-table1",
                 "hrlf-2024-table2", "hrlf-2024-ablation", "lnln-2024-table2"):
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
    for row in table.rows:
        for summary, spec in table.summaries.items():
            if summary in row.values and all(m in row.values for m in spec["members"]):
                mean = np.mean([row.values[m] for m in spec["members"]])
                # two decimals: the stated value and each member are rounded to 0.01
                assert abs(mean - row.values[summary]) <= 0.01 + 1e-9, (row.method, summary, mean)
    assert summary_check(table) == []


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
    a = {r.method: r.values for r in load_reported("corrkd-2024-table1").rows}["CorrKD"]
    b = {r.method: r.values for r in load_reported("hrlf-2024-table1").rows}["CorrKD"]
    assert a == b


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


def test_a_wrong_average_is_caught():
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
])
def test_schema_errors_name_the_problem(edit, message):
    data = _base()
    edit(data)
    with pytest.raises(ReportedError, match=message):
        parse_table(data, "x")


def test_unknown_name_lists_the_packaged_tables():
    with pytest.raises(ReportedError, match="hrlf-2024-table1"):
        load_reported("no-such-table")
