"""Leaderboards as text: the tidy CSV, and the wide paper layout as Markdown or LaTeX tables."""
from __future__ import annotations

import numpy as np
import pandas as pd

from msabench.leaderboard import ALPHA, Leaderboard, LeaderboardError

CSV_COLUMNS = ["dataset", "protocol", "method", "method_name", "metric", "direction", "condition", "kind", "mean",
               "std", "n", "ci_low", "ci_high", "best", "reference", "p_value", "p_value_holm", "test", "test_note",
               "split", "msabench_version", "params_hash", "mask_hashes", "dataset_fingerprint", "git_commits",
               "run_ids", "seeds"]


def to_csv(board: Leaderboard) -> str:
    """The tidy published CSV: one row per dataset × protocol × method × column (conditions and summaries) × metric."""
    if not board.reported.empty:  # measured rows, then the published ones, told apart by a source column
        from msabench.compare import csv_frame
        return csv_frame(board, CSV_COLUMNS).to_csv(index=False)
    return board.table[CSV_COLUMNS].to_csv(index=False)


def _cell(row: pd.Series, digits: int, bold: tuple[str, str], dagger: str) -> str:
    if not np.isfinite(row["mean"]):
        return "–"
    text = f"{row['mean']:.{digits}f}"
    if np.isfinite(row["std"]):
        text += f" ± {row['std']:.{digits}f}"
    if row["best"]:
        text = bold[0] + text + bold[1]
    if np.isfinite(row["p_value_holm"]) and row["p_value_holm"] < ALPHA:
        text += dagger
    return text


def _entry_order(sub: pd.DataFrame, reference: str) -> list[str]:
    labels = sorted(sub["method"].unique())
    return [lab for lab in labels if lab != reference] + ([reference] if reference in labels else [])


def _tables(board: Leaderboard):
    t = board.table
    for (dataset, protocol), sub in t.groupby(["dataset", "protocol"], sort=True):
        for metric in dict.fromkeys(sub["metric"]):
            yield dataset, protocol, metric, sub[sub["metric"] == metric]


def _caption(board: Leaderboard, sub: pd.DataFrame, mark: str = "†") -> str:
    direction = "higher" if sub["direction"].iloc[0] == "maximize" else "lower"
    parts = [f"mean ± std (ddof=1) over seeds, {board.split} split; {direction} is better; best per column in bold"]
    ref = sub["reference"].iloc[0]
    if ref and sub["method"].nunique() > 1:
        tests = sorted({x for x in sub["test"] if x not in ("", "reference")})
        names = {"wilcoxon": "Wilcoxon signed-rank", "ttest_rel": "paired t-test"}
        used = " / ".join(names.get(x, x) for x in tests) or "no test possible"
        parts.append(f"{mark} Holm-corrected p < {ALPHA} vs {ref} ({used}, paired by seed)")
    if "EffRob" in set(sub["condition"]):
        parts.append(f"EffRob: effective robustness vs {board.baseline} (MultiBench)")
    if "AUC" in set(sub["condition"]):
        parts.append("AUC: trapezoid over the missing ratio")
    return "; ".join(parts)


def to_markdown(board: Leaderboard, digits: int = 4) -> str:
    """The wide paper layout as Markdown tables, one per dataset × protocol × metric."""
    out = []
    for dataset, protocol, metric, sub in _tables(board):
        cols = board.column_order(dataset, protocol, metric)
        ref = sub["reference"].iloc[0]
        lines = [f"### {dataset} · {protocol} · {metric}", "",
                 "| Method | " + " | ".join(cols) + " | Seeds |", "|---|" + "---:|" * (len(cols) + 1)]
        for lab in _entry_order(sub, ref):
            e = sub[sub["method"] == lab].set_index("condition")
            cells = [_cell(e.loc[c], digits, ("**", "**"), "†") if c in e.index else "–" for c in cols]
            name = lab.replace("|", "\\|")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {int(e['n'].max())} |")
        if not board.reported.empty:
            from msabench import compare
            lines += compare.markdown_lines(board, dataset, protocol, metric, cols, digits)
            lines += ["", "; ".join(x for x in (_caption(board, sub), compare.caption(board, dataset, protocol, metric))
                                    if x), ""]
        else:
            lines += ["", _caption(board, sub), ""]
        out.append("\n".join(lines))
    out += [f"Note: {n}" for n in board.notes]
    return "\n".join(out).rstrip() + "\n"


def _tex(text: str) -> str:
    """Escape LaTeX special characters in plain text."""
    text = text.replace("\\", "\x00")
    for a, b in (("_", "\\_"), ("&", "\\&"), ("%", "\\%"), ("#", "\\#"), ("{", "\\{"), ("}", "\\}"),
                 ("<", "$<$"), ("±", "$\\pm$")):
        text = text.replace(a, b)
    return text.replace("\x00", "\\textbackslash{}")


def to_latex(board: Leaderboard, digits: int = 4) -> str:
    """The wide paper layout as LaTeX (booktabs) tables, one per dataset × protocol × metric."""
    out = []
    for dataset, protocol, metric, sub in _tables(board):
        cols = board.column_order(dataset, protocol, metric)
        ref = sub["reference"].iloc[0]
        caption = _tex(f"{dataset}, {protocol}, {metric}: {_caption(board, sub, mark=chr(1))}")
        lines = ["\\begin{table}[t]", "\\centering", "\\small",
                 "\\caption{" + caption.replace(chr(1), "$^\\dagger$") + "}",
                 "\\begin{tabular}{l" + "c" * len(cols) + "}", "\\toprule",
                 "Method & " + " & ".join(f"${_tex(c)}$" if c.startswith("{") else _tex(c) for c in cols)
                 + " \\\\", "\\midrule"]
        for lab in _entry_order(sub, ref):
            e = sub[sub["method"] == lab].set_index("condition")
            cells = [_cell(e.loc[c], digits, ("\\textbf{", "}"), "$^\\dagger$").replace("±", "$\\pm$")
                     if c in e.index else "--" for c in cols]
            lines.append(_tex(lab) + " & " + " & ".join(cells) + " \\\\")
        if not board.reported.empty:
            from msabench import compare
            lines += compare.latex_lines(board, dataset, protocol, metric, cols, digits)
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
        out.append("\n".join(lines))
    return "\n".join(out)


def render(board: Leaderboard, fmt: str = "md", digits: int = 4) -> str:
    """The leaderboard as ``csv``, ``md`` or ``latex`` text."""
    if fmt == "csv":
        return to_csv(board)
    if fmt == "md":
        return to_markdown(board, digits)
    if fmt == "latex":
        return to_latex(board, digits)
    raise LeaderboardError(f"unknown format {fmt!r}; use csv, md or latex")
