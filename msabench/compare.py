"""Reported (published) rows beside measured ones in leaderboards and plots.

Reported rows are attached to a built :class:`~msabench.leaderboard.Leaderboard` after its statistics are computed,
so they never take part in best marks or significance tests. They join every measured table of the same protocol
and metric (the row's metric in our names), only in the columns both share, in msabench units (the paper's value ÷
the metric's scale), each marked ``‡ (reported, TABLE)``; the caption says whose numbers they are and what differs
(data, features, split, model selection). A measured data set whose name names a known benchmark (``mosi-utterance``
-> MOSI) gets only the tables of that benchmark; any other (synthetic, custom) gets every table, its caption saying
whose data the numbers are on.
"""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import pandas as pd

from msabench.reported import ReportedTable, load_reported

MARK = "‡"
REPORTED_COLUMNS = ["dataset", "protocol", "method", "metric", "condition", "kind", "mean", "paper_value", "source"]


def _base(protocol_label: str) -> str:
    return str(protocol_label).split("[", 1)[0]


# benchmark families a measured data set name can name, checked in this order
FAMILIES = ("mosei", "mosi", "sims", "iemocap")


def _family(text: str) -> str | None:
    tokens = set(re.split(r"[^a-z0-9]+", text.lower()))
    return next((f for f in FAMILIES if tokens & {f, f"cmu{f}", f"ch{f}"}), None)


def dataset_family(name: str) -> str | None:
    """The benchmark a data set name names (``mosi-utterance`` -> ``mosi``, ``mmsa:/data/mosei_bert.pkl`` ->
    ``mosei``, ``ch-sims`` -> ``sims``), else None; the file name decides before the folders."""
    name = str(name)
    return _family(re.split(r"[/:\\]", name)[-1]) or _family(name)


def fits_dataset(table: ReportedTable, dataset: str) -> bool:
    """Whether a reported table belongs beside measured results on ``dataset`` (see the module docstring)."""
    family = dataset_family(dataset)
    return family is None or dataset_family(table.dataset) in (None, family)


def reported_label(method: str, source: str) -> str:
    """How a reported row is named in tables and legends: ``HRLF ‡ (reported, hrlf-2024-table1)``."""
    return f"{method} {MARK} (reported, {source})"


def attach_reported(board, tables: Iterable[ReportedTable | str]):
    """Set ``board.reported``: the rows of ``tables`` (objects or packaged names) that fit the board's tables."""
    tables = [load_reported(t) if isinstance(t, str) else t for t in tables]
    records = []
    for (dataset, protocol, metric), sub in board.table.groupby(["dataset", "protocol", "metric"], sort=False):
        columns = set(sub["condition"])
        for table in tables:
            if table.protocol != _base(protocol) or not fits_dataset(table, dataset):
                continue
            frame = table.frame()
            for rec in frame[frame["condition"].isin(columns) & (frame["metric"] == metric)].to_dict("records"):
                records.append({"dataset": dataset, "protocol": protocol, "method": reported_label(rec["method"], table.id),
                                "metric": metric, "condition": rec["condition"], "kind": rec["kind"],
                                "mean": rec["value"], "paper_value": rec["paper_value"], "source": table.id})
    board.reported = pd.DataFrame(records, columns=REPORTED_COLUMNS)
    board.reported_tables = {t.id: t for t in tables}
    return board


def reported_for(board, dataset: str, protocol: str, metric: str) -> pd.DataFrame:
    """The reported rows of one table (empty when none)."""
    rep = getattr(board, "reported", None)
    if rep is None or rep.empty:
        return pd.DataFrame(columns=REPORTED_COLUMNS)
    return rep[(rep["dataset"] == dataset) & (rep["protocol"] == protocol) & (rep["metric"] == metric)]


def table_cells(board, dataset: str, protocol: str, metric: str, cols: list[str], digits: int
                ) -> list[tuple[str, list[str]]]:
    """(label, cells) per reported method of one table, ``–`` where the paper gives no value."""
    rep = reported_for(board, dataset, protocol, metric)
    out = []
    for label in dict.fromkeys(rep["method"]):
        values = rep[rep["method"] == label].set_index("condition")["mean"]
        out.append((label, [f"{values[c]:.{digits}f}" if c in values.index else "–" for c in cols]))
    return out


def caption(board, dataset: str, protocol: str, metric: str) -> str:
    """What the reported rows are and what differs from the measured ones ('' when there are none)."""
    return " ".join(captions(board, dataset, protocol, metric))


def captions(board, dataset: str, protocol: str, metric: str) -> list[str]:
    """One sentence per reported table of a leaderboard table (see :func:`caption`)."""
    rep = reported_for(board, dataset, protocol, metric)
    parts: list[str] = []
    for source in dict.fromkeys(rep["source"]):
        t = board.reported_tables[source]
        details = "; ".join(x for x in (f"their data: {t.dataset}" + (f" ({t.features})" if t.features else ""),
                                        f"split: {t.split}" if t.split else "",
                                        f"model selection: {t.selection}" if t.selection else "") if x)
        scales = "".join(f", {m} ÷ {v:g}" for m, v in t.scales.items() if v != t.scale)
        parts.append(f"{MARK} reported by {t.citation}, {t.metric or metric} (paper values ÷ {t.scale:g}{scales}): "
                     f"not measured here, never bolded or tested; {details}.")
    return parts


def markdown_lines(board, dataset: str, protocol: str, metric: str, cols: list[str], digits: int) -> list[str]:
    """Markdown table rows for the reported methods (appended below the measured ones)."""
    return [f"| {label} | " + " | ".join(cells) + " | reported |"
            for label, cells in table_cells(board, dataset, protocol, metric, cols, digits)]


def latex_lines(board, dataset: str, protocol: str, metric: str, cols: list[str], digits: int) -> list[str]:
    """LaTeX rows for the reported methods, after a rule."""
    rows = table_cells(board, dataset, protocol, metric, cols, digits)
    if not rows:
        return []
    from msabench.render import _tex

    return ["\\midrule"] + [_tex(label).replace(MARK, "$^\\ddagger$") + " & " + " & ".join(
        c.replace("–", "--") for c in cells) + " \\\\" for label, cells in rows] + [
        f"\\multicolumn{{{len(cols) + 1}}}{{p{{0.95\\linewidth}}}}{{\\footnotesize "
        + _tex(caption(board, dataset, protocol, metric)).replace(MARK, "$^\\ddagger$") + "} \\\\"]


def csv_frame(board, columns: list[str]) -> pd.DataFrame:
    """The measured rows (``source`` = measured) followed by the reported rows (``source`` = reported:ID)."""
    measured = board.table[columns].assign(source="measured")
    rep = getattr(board, "reported", None)
    if rep is None or rep.empty:
        return measured
    extra = rep.assign(source="reported:" + rep["source"], best=False, n=0, std=np.nan, direction="",
                       method_name=rep["method"], split="", reference="", test="", test_note="")
    for col in columns:
        if col not in extra:
            extra[col] = np.nan
    return pd.concat([measured, extra[columns + ["source"]]], ignore_index=True)


def overlay_points(tables: Iterable[ReportedTable | str], protocol: str, metric: str,
                   ratios: dict[str, float], dataset: str = "", methods: Iterable[str] | None = None
                   ) -> dict[str, list[tuple[float, float]]]:
    """Reported (ratio, value) points per label for a robustness curve of ``protocol`` and ``metric`` (on
    ``dataset``, when given: only tables that fit it; with ``methods``, only rows whose ``ours`` names one of them,
    so a figure overlays the published curves of the methods it draws)."""
    wanted = None if methods is None else set(methods)
    points: dict[str, list[tuple[float, float]]] = {}
    for t in tables:
        t = load_reported(t) if isinstance(t, str) else t
        if t.protocol != _base(protocol) or (dataset and not fits_dataset(t, dataset)):
            continue
        for row in t.rows:
            if wanted is not None and (row.ours or "").split(" ", 1)[0] not in wanted:
                continue
            pts = [(ratios[c], v / t.scale_of(metric)) for c, v in row.metrics.get(metric, {}).items() if c in ratios]
            if pts:
                points[reported_label(row.method, t.id)] = sorted(pts)
    return points
