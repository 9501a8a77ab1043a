"""What ``msabench run`` leaves next to its results: a Markdown leaderboard and the robustness-curve figures.

Both are built from the stored rows of the whole results directory with the ordinary leaderboard and plot functions
(:func:`msabench.leaderboard.build_leaderboard`, :func:`msabench.plots.make_figures`), exactly what
``msabench leaderboard OUT`` and ``msabench plot curves OUT`` would give.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    """The files one report wrote (``None`` / empty where a part could not be made, with the reason in ``notes``)."""

    results: Path
    leaderboard: Path | None = None
    figures: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable 'what was written where' lines."""
        out = [f"results:     {self.results}"]
        if self.leaderboard is not None:
            out.append(f"leaderboard: {self.leaderboard}")
        out += [f"figure:      {path}" for path in self.figures]
        out += [f"not written: {note}" for note in self.notes]
        return out


def write_run_report(out: str | Path, figure_format: str = "png") -> RunReport:
    """Write ``OUT/leaderboard.md`` and ``OUT/figures/curves-*.png`` (a condition heatmap for protocols without
    missing ratios) from every run stored in ``out``. A part that cannot be built is skipped with a note; this never
    raises for the content of the results, so a finished run is never reported as failed because of its report."""
    from msabench.leaderboard import LeaderboardError, build_leaderboard
    from msabench.render import to_markdown
    from msabench.plots import make_figures, save_figures
    from msabench.store import read_rows

    out = Path(out)
    report = RunReport(results=out / "results.csv")
    try:
        rows = read_rows([out])
    except (LeaderboardError, FileNotFoundError, ValueError) as exc:
        rows, reason = None, str(exc)
    else:
        reason = "no stored runs"
    if rows is None or rows.empty:
        report.notes.append(f"leaderboard and figures ({reason})")
        log.warning("msabench run: %s", report.notes[-1])
        return report
    try:
        board = build_leaderboard(rows)
        path = out / "leaderboard.md"
        path.write_text(to_markdown(board))
        report.leaderboard = path
        report.notes += [f"leaderboard note: {note}" for note in board.notes]
    except (LeaderboardError, ValueError) as exc:
        report.notes.append(f"leaderboard ({exc})")
    figures = {}
    for kind in ("curves", "heatmap"):  # heatmaps only where no protocol has missing ratios
        try:
            figures = make_figures(kind, [out])
            break
        except (LeaderboardError, ValueError) as exc:
            if kind == "heatmap":
                report.notes.append(f"figures ({exc})")
    report.figures = save_figures(figures, out / "figures", [figure_format]) if figures else []
    for note in report.notes:
        log.warning("msabench run: %s", note)
    return report
