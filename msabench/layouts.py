"""Paper table layouts of a leaderboard: one row per method, one column per metric, at one summary column.

``lnln``: LNLN's Table 2 (Zhang et al., NeurIPS 2024): the ``LNLN-Avg`` summary of ``random-missing`` (metrics
averaged over r = 0.0 ... 0.9) for the whole metric set: MOSI/MOSEI Acc-7, Acc-5, Acc-2 and F1 as Has0 / Non0,
MAE, Corr; CH-SIMS Acc-5, Acc-3, Acc-2, F1, MAE, Corr. Accuracies and F1 in percent (as the paper), MAE and Corr as
they are; mean ± std over seeds of the per-seed averages. Published rows attached with ``--reported`` (e.g.
``lnln-2024-table2``) follow the measured ones, marked ‡ and ``reported``, at their ``LNLN-Avg`` values.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from msabench.leaderboard import Leaderboard, LeaderboardError

LNLN_SUMMARY = "LNLN-Avg"
# (column title, metrics shown in it, percent?) per metric set
LNLN_COLUMNS: dict[str, list[tuple[str, tuple[str, ...], bool]]] = {
    "mosi": [("Acc-7", ("Mult_acc_7",), True), ("Acc-5", ("Mult_acc_5",), True),
             ("Acc-2 (Has0/Non0)", ("Has0_acc_2", "Non0_acc_2"), True),
             ("F1 (Has0/Non0)", ("Has0_F1", "Non0_F1"), True), ("MAE", ("MAE",), False), ("Corr", ("Corr",), False)],
    "sims": [("Acc-5", ("Mult_acc_5",), True), ("Acc-3", ("Mult_acc_3",), True), ("Acc-2", ("Mult_acc_2",), True),
             ("F1", ("F1_score",), True), ("MAE", ("MAE",), False), ("Corr", ("Corr",), False)],
}


def lnln_metrics(rows: pd.DataFrame) -> list[str]:
    """The metrics of LNLN's table that occur in ``rows`` (MOSI/MOSEI and CH-SIMS names)."""
    available = set(rows["metric"].astype(str))
    wanted = [m for cols in LNLN_COLUMNS.values() for _, ms, _ in cols for m in ms]
    found = [m for m in dict.fromkeys(wanted) if m in available]
    if not found:
        raise LeaderboardError("--layout lnln needs MOSI/MOSEI or CH-SIMS regression metrics; none in the results")
    return found


def _cell(row: pd.Series | None, percent: bool, digits: int) -> str:
    if row is None or not np.isfinite(row["mean"]):
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{row['mean'] * scale:.{digits}f}"
    if np.isfinite(row["std"]):
        text += f" ± {row['std'] * scale:.{digits}f}"
    return text


def _reported_lines(board: Leaderboard, dataset: str, protocol: str,
                    columns: list[tuple[str, tuple[str, ...], bool]], digits: int) -> tuple[list[str], list[str]]:
    """Table rows and caption sentences for the published rows of one dataset × protocol (see msabench.compare)."""
    rep = getattr(board, "reported", None)
    if rep is None or rep.empty:
        return [], []
    from msabench.compare import captions

    rep = rep[(rep["dataset"] == dataset) & (rep["protocol"] == protocol) & (rep["condition"] == LNLN_SUMMARY)]
    lines = []
    for label in dict.fromkeys(rep["method"]):
        values = rep[rep["method"] == label].set_index("metric")["mean"]
        cells = [" / ".join(f"{values[m] * (100.0 if percent else 1.0):.{digits if percent else digits + 2}f}"
                            if m in values.index else "–" for m in metrics) for _, metrics, percent in columns]
        lines.append(f"| {label.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " | reported |")
    notes = [c for metric in dict.fromkeys(rep["metric"]) for c in captions(board, dataset, protocol, metric)]
    return lines, list(dict.fromkeys(notes))


def lnln_table(board: Leaderboard, digits: int = 2) -> str:
    """Markdown tables in LNLN's Table 2 layout, one per dataset × protocol that has an ``LNLN-Avg`` column."""
    t = board.table
    t = t[t["condition"] == LNLN_SUMMARY]
    if t.empty:
        raise LeaderboardError("no LNLN-Avg column: --layout lnln needs random-missing results at r = 0.0 ... 0.9")
    out = []
    for (dataset, protocol), sub in t.groupby(["dataset", "protocol"], sort=True):
        metric_set = "sims" if "F1_score" in set(sub["metric"]) else "mosi"
        columns = LNLN_COLUMNS[metric_set]
        lines = [f"### {dataset} · {protocol} · {LNLN_SUMMARY} (r = 0.0 … 0.9)", "",
                 "| Method | " + " | ".join(c for c, _, _ in columns) + " | Seeds |",
                 "|---|" + "---:|" * (len(columns) + 1)]
        for method in sorted(sub["method"].unique()):
            e = sub[sub["method"] == method].set_index("metric")
            cells = []
            for _, metrics, percent in columns:
                parts = [_cell(e.loc[m] if m in e.index else None, percent, digits if percent else digits + 2)
                         for m in metrics]
                cells.append(" / ".join(parts))
            n = int(e["n"].max())
            lines.append(f"| {method.replace('|', chr(92) + '|')} | " + " | ".join(cells) + f" | {n} |")
        reported, notes = _reported_lines(board, dataset, protocol, columns, digits)
        lines += reported
        lines += ["", f"mean ± std (ddof=1) over seeds of each seed's average over r = 0.0 … 0.9 ({board.split} "
                  "split); accuracies and F1 in %, MAE and Corr as they are; one checkpoint per run, selected on "
                  "the validation split", ""]
        lines += [" ".join(notes), ""] if notes else []
        out.append("\n".join(lines))
    return "\n".join(out).rstrip() + "\n"
