"""Published results as data: one YAML file per paper table in ``msabench/reported/``, checked on load.

A reported table is never a measurement: it does not enter the results store, significance tests or best marks.
Each file names the paper (title, venue, arXiv id), the table and page, the data set, features and split the authors
used, their model-selection rule when known, and how the table maps onto msabench: the protocol, the condition
names (``{l}``, ``{l,a}``, ... or missing rates ``0.0`` ...), the summaries with their definitions (e.g. ``Avg`` over
the six missing conditions; ``decimals`` the paper prints them with, ``metric_decimals`` per metric where it
differs), the metric of ours it corresponds to (``metric_ours``) and the paper's scale (``100`` for percentages).
Only verified numbers are transcribed; ``omitted`` says what was left out and why.

A row gives the numbers of the table's metric under ``values``, or of several metrics under ``metrics`` (our metric
name -> {column: value}), e.g. LNLN's Acc-7 ... Corr or HRLF's per-emotion F1 on IEMOCAP. ``scales`` overrides
``scale`` per metric (``{MAE: 1, Corr: 1}`` beside percentages) and ``metric_names`` says what each of our metric
names is called in the paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from msabench.leaderboard import LeaderboardError

REQUIRED_KEYS = ("id", "paper", "table", "dataset", "protocol", "metric_ours", "scale", "rows")
PAPER_KEYS = ("title", "venue")
OPTIONAL_KEYS = ("page", "caption", "features", "split", "selection", "metric", "conditions", "summaries",
                 "omitted", "scales", "metric_names")
ROW_KEYS = ("method", "values", "metrics", "verified", "ours")


class ReportedError(LeaderboardError):
    """A reported-results file that is missing, unreadable or does not follow the schema."""


@dataclass
class ReportedRow:
    """One method's published numbers in the paper's units; ``ours`` names the matching msabench entry, if any.

    ``values`` holds the table's own metric (``metric_ours``), ``metrics`` every metric the row gives (that one too).
    """

    method: str
    values: dict[str, float]
    verified: str
    ours: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class ReportedTable:
    """One published table (see the module docstring for the fields)."""

    id: str
    paper: dict[str, str]
    table: str
    dataset: str
    protocol: str
    metric_ours: str
    scale: float
    rows: list[ReportedRow]
    conditions: list[str] = field(default_factory=list)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    page: int | None = None
    caption: str = ""
    features: str = ""
    split: str = ""
    selection: str = ""
    metric: str = ""
    omitted: str = ""
    scales: dict[str, float] = field(default_factory=dict)
    metric_names: dict[str, str] = field(default_factory=dict)

    def scale_of(self, metric: str) -> float:
        """The paper's scale for one of our metrics (``scales`` entry, else ``scale``)."""
        return float(self.scales.get(metric, self.scale))

    @property
    def citation(self) -> str:
        """Short citation, e.g. ``HRLF — NeurIPS 2024, Table 1, p. 7 (arXiv 2411.02793)``."""
        page = f", p. {self.page}" if self.page else ""
        table = self.table if not self.table[:1].isdigit() else f"Table {self.table}"
        return f"{self.paper['title']} — {self.paper['venue']}, {table}{page} (arXiv {self.paper.get('arxiv', '?')})"

    def frame(self) -> pd.DataFrame:
        """Long rows in msabench units: method, ours, metric (ours), condition, kind, value (divided by the
        metric's scale), paper_value, source."""
        records = []
        for row in self.rows:
            for metric, values in row.metrics.items():
                for cond, value in values.items():
                    records.append({"method": row.method, "ours": row.ours or "", "metric": metric, "condition": cond,
                                    "kind": "summary" if cond in self.summaries else "condition",
                                    "value": round(value / self.scale_of(metric), 10), "paper_value": value,
                                    "source": self.id})
        return pd.DataFrame(records, columns=["method", "ours", "metric", "condition", "kind", "value",
                                              "paper_value", "source"])


def _fail(where: str, problem: str) -> ReportedError:
    return ReportedError(f"reported table {where}: {problem}")


def parse_table(data: Any, where: str) -> ReportedTable:
    """Check one parsed YAML document against the schema and build the :class:`ReportedTable`."""
    if not isinstance(data, dict):
        raise _fail(where, "must be a mapping with keys " + ", ".join(REQUIRED_KEYS))
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise _fail(where, f"lacks keys {missing}")
    unknown = set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    if unknown:
        raise _fail(where, f"unknown keys {sorted(unknown)}; allowed: {sorted(REQUIRED_KEYS + OPTIONAL_KEYS)}")
    paper = data["paper"]
    if not isinstance(paper, dict) or any(not paper.get(k) for k in PAPER_KEYS):
        raise _fail(where, f"paper must give at least {list(PAPER_KEYS)}")
    scale = data["scale"]
    if not isinstance(scale, (int, float)) or scale <= 0:
        raise _fail(where, f"scale must be a positive number (100 for percentages), got {scale!r}")
    conditions = [str(c) for c in data.get("conditions") or []]
    summaries = data.get("summaries") or {}
    for name, spec in summaries.items():
        if not isinstance(spec, dict) or not spec.get("members") or not spec.get("definition"):
            raise _fail(where, f"summary {name} needs members and a definition")
        stray = [m for m in spec["members"] if m not in conditions]
        if stray:
            raise _fail(where, f"summary {name} has members {stray} that are not among the conditions")
    columns = set(conditions) | set(summaries)
    scales = data.get("scales") or {}
    if not isinstance(scales, dict) or any(not isinstance(v, (int, float)) or v <= 0 for v in scales.values()):
        raise _fail(where, f"scales must map metric names to positive numbers, got {scales!r}")
    names = data.get("metric_names") or {}
    if not isinstance(names, dict):
        raise _fail(where, f"metric_names must map our metric names to the paper's, got {names!r}")
    rows = []
    for i, row in enumerate(data["rows"] or []):
        if not isinstance(row, dict) or not row.get("method"):
            raise _fail(where, f"row {i + 1} needs a method and a values (or metrics) mapping")
        stray_keys = set(row) - set(ROW_KEYS)
        if stray_keys:
            raise _fail(where, f"row {row['method']}: unknown keys {sorted(stray_keys)}; allowed: {list(ROW_KEYS)}")
        if not row.get("verified"):
            raise _fail(where, f"row {row['method']} does not say how it was verified (key verified)")
        if row.get("metrics") is not None and not isinstance(row["metrics"], dict):
            raise _fail(where, f"row {row['method']}: metrics must map metric names to {{column: value}}")
        given = dict(row.get("metrics") or {})
        if "values" in row:
            if str(data["metric_ours"]) in given:
                raise _fail(where, f"row {row['method']} gives {data['metric_ours']} twice (values and metrics)")
            given[str(data["metric_ours"])] = row["values"]
        if not given or any(not isinstance(v, dict) for v in given.values()):
            raise _fail(where, f"row {row['method']} needs a values mapping (or metrics: name -> mapping)")
        metrics: dict[str, dict[str, float]] = {}
        for metric, mapping in given.items():
            values = {}
            for cond, value in mapping.items():
                if str(cond) not in columns:
                    raise _fail(where, f"row {row['method']}: column {cond} is neither a condition nor a summary")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise _fail(where, f"row {row['method']}: {metric} {cond} = {value!r} is not a number")
                values[str(cond)] = float(value)
            metrics[str(metric)] = values
        rows.append(ReportedRow(str(row["method"]), metrics.get(str(data["metric_ours"]), {}), str(row["verified"]),
                                row.get("ours"), metrics))
    page = data.get("page")
    return ReportedTable(id=str(data["id"]), paper={k: str(v) for k, v in paper.items()}, table=str(data["table"]),
                         dataset=str(data["dataset"]), protocol=str(data["protocol"]),
                         metric_ours=str(data["metric_ours"]), scale=float(scale), rows=rows, conditions=conditions,
                         summaries=summaries, page=int(page) if page else None,
                         scales={str(k): float(v) for k, v in scales.items()},
                         metric_names={str(k): str(v) for k, v in names.items()},
                         **{k: str(data.get(k) or "") for k in ("caption", "features", "split", "selection",
                                                                  "metric", "omitted")})


def _packaged() -> dict[str, Any]:
    folder = resources.files("msabench") / "reported"
    return {p.name[:-5]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def available_reported() -> list[str]:
    """Names of the packaged reported tables (file stems, e.g. ``hrlf-2024-table1``)."""
    return sorted(_packaged())


def load_reported(name: str) -> ReportedTable:
    """A packaged table by name, or a YAML file by path; checked against the schema."""
    files = _packaged()
    if name in files:
        text, where = files[name].read_text(encoding="utf-8"), name
    elif Path(name).is_file():
        text, where = Path(name).read_text(encoding="utf-8"), name
    else:
        raise ReportedError(f"no reported table {name!r}; packaged: {', '.join(sorted(files))} (or give a YAML path)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _fail(where, f"is not valid YAML: {exc}") from None
    table = parse_table(data, where)
    if name in files and table.id != name:
        raise _fail(where, f"id {table.id!r} differs from the file name")
    return table


def summary_decimals(spec: dict[str, Any], metric: str) -> int:
    """Decimals the paper prints a summary with: ``metric_decimals`` for ``metric``, else ``decimals`` (2)."""
    return int((spec.get("metric_decimals") or {}).get(metric, spec.get("decimals", 2)))


def summary_check(table: ReportedTable) -> list[str]:
    """Stated summaries that differ from the mean of their members by more than the paper's rounding allows."""
    problems = []
    for row in table.rows:
        for metric, values in row.metrics.items():
            for name, spec in table.summaries.items():
                members = spec["members"]
                if name not in values or any(m not in values for m in members):
                    continue
                decimals = summary_decimals(spec, metric)
                mean = sum(values[m] for m in members) / len(members)
                # the stated value is rounded (half a unit) and so are the members (half a unit over their mean)
                if abs(mean - values[name]) > 10 ** -decimals + 1e-9:
                    problems.append(f"{table.id}: {row.method} {metric} {name} = {values[name]} but the mean of "
                                    f"{members} is {mean:.{decimals + 2}f}")
    return problems
