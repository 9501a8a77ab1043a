"""Plots from stored runs: robustness curves, modality-condition heatmaps, training curves.

Figures are built as ``matplotlib.figure.Figure`` objects on the Agg canvas (no pyplot state, no display needed)
and returned, so tests and notebooks can inspect them. Colours come from seaborn's colour-blind-safe
``colorblind`` palette with a stable mapping: all entry labels of one call are sorted and given colours in that
order, so a method has the same colour in every plot of a call.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from msabench.leaderboard import DEFAULT_METRIC, LeaderboardError, _entry_labels, _protocol_labels
from msabench.leaderboard import protocol_layout, seed_scores

log = logging.getLogger(__name__)

PLOT_KINDS = ("curves", "heatmap", "training")
PALETTE = "colorblind"


def method_colors(labels: Iterable[str]) -> dict[str, Any]:
    """Stable colours: sorted labels get the ``colorblind`` palette's colours in order (cycling after 10)."""
    import seaborn as sns

    names = sorted(set(map(str, labels)))
    base = sns.color_palette(PALETTE)
    return {name: base[i % len(base)] for i, name in enumerate(names)}


LINE_STYLES = (("", "o"), ((4, 2), "s"), ((1, 1), "^"), ((6, 2, 1, 2), "D"))  # (dashes, marker) per palette cycle


def line_styles(labels: Iterable[str]) -> dict[str, tuple[Any, str]]:
    """(dashes, marker) per label, changing each time the colours cycle, so no two entries look alike (≤ 40)."""
    import seaborn as sns

    names = sorted(set(map(str, labels)))
    n_colors = len(sns.color_palette(PALETTE))
    return {name: LINE_STYLES[(i // n_colors) % len(LINE_STYLES)] for i, name in enumerate(names)}


def short_dataset(name: str) -> str:
    """``mmsa:../data/mosi/unaligned_50.pkl`` → ``mmsa:unaligned_50.pkl`` (titles stay readable)."""
    fmt, sep, path = str(name).partition(":")
    return f"{fmt}:{Path(path).name}" if sep and ("/" in path or "\\" in path) else str(name)


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _plot_metric(seeds: pd.DataFrame, metric: str | None) -> pd.DataFrame:
    """Keep one metric per table: ``metric`` or the task's default."""
    if metric:
        return seeds[seeds["metric"] == metric]
    default = seeds["task"].map(DEFAULT_METRIC)
    return seeds[seeds["metric"] == default]


def _layout(scores: pd.DataFrame):
    first = scores.iloc[0]
    params = first.get("protocol_params")
    params = json.loads(params) if isinstance(params, str) and params else {}
    return protocol_layout(str(first["protocol"]), params, list(dict.fromkeys(scores["condition"])))


def metric_name(scores: pd.DataFrame) -> str:
    return str(scores["metric"].iloc[0])


# the figures --------------------------------------------------------------------------------------------------
def robustness_curve(scores: pd.DataFrame, colors: dict[str, Any] | None = None,
                     reported: list[Any] | None = None):
    """Metric vs missing ratio for one dataset × protocol × metric: a line per entry, ± 1 sd band across seeds;
    ``reported`` tables (names or :class:`msabench.reported.ReportedTable`) add the points of the methods drawn
    (a reported row's ``ours``), marked reported.

    ``scores`` are :func:`msabench.leaderboard.seed_scores` rows of one table whose conditions are ratios.
    """
    import seaborn as sns

    layout = _layout(scores)
    if not layout.ratios:
        raise LeaderboardError(f"protocol {scores['protocol'].iloc[0]} has no missing-ratio conditions; "
                               "robustness curves need e.g. random-missing or block-missing (try heatmap)")
    data = scores.assign(ratio=scores["condition"].map(layout.ratios))
    order = sorted(data["entry"].unique())
    colors = colors or method_colors(order)
    fig, (ax,) = _figure(6.5, 4.2)
    styles = line_styles(order)
    sns.lineplot(data=data, x="ratio", y="value", hue="entry", hue_order=order, palette=colors, errorbar="sd",
                 style="entry", style_order=order, dashes={n: styles[n][0] for n in order},
                 markers={n: styles[n][1] for n in order}, ax=ax)
    metric = str(scores["metric"].iloc[0])
    if reported:  # published points, drawn apart from the measured lines (see msabench.compare)
        from msabench.compare import overlay_points

        for label, pts in overlay_points(reported, str(scores["protocol_label"].iloc[0]), metric_name(scores),
                                         layout.ratios, str(scores["dataset"].iloc[0]),
                                         set(scores["method"].astype(str))).items():
            ax.plot(*zip(*pts), linestyle=":", marker="X", color="0.3", label=label)
    ax.set_xlabel("missing ratio r")
    ax.set_ylabel(metric)
    ax.set_title(f"{short_dataset(scores['dataset'].iloc[0])} · {scores['protocol_label'].iloc[0]} "
                 "(mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(title="method", fontsize="small")
    return fig


def condition_heatmap(scores: pd.DataFrame, digits: int = 3):
    """Entries × conditions heatmap of the seed mean for one dataset × protocol × metric, annotated."""
    import seaborn as sns

    layout = _layout(scores)
    means = scores.pivot_table(index="entry", columns="condition", values="value", aggfunc="mean")
    means = means[[c for c in layout.conditions if c in means.columns]].sort_index()
    fig, (ax,) = _figure(max(6.0, 0.95 * means.shape[1] + 3.0), max(2.6, 0.55 * means.shape[0] + 1.6))
    sns.heatmap(means, annot=True, fmt=f".{digits}f", cmap="cividis", linewidths=0.5, ax=ax,
                cbar_kws={"label": str(scores["metric"].iloc[0])})
    ax.set_xlabel("condition")
    ax.set_ylabel("")
    ax.set_title(f"{short_dataset(scores['dataset'].iloc[0])} · {scores['protocol_label'].iloc[0]} · "
                 f"{scores['metric'].iloc[0]} (mean over seeds)")
    ax.tick_params(axis="y", rotation=0)
    return fig


def training_figure(curves: pd.DataFrame, colors: dict[str, Any] | None = None):
    """Validation score and training loss per epoch for one dataset × protocol: a line per entry (× stage),
    mean ± sd over seeds."""
    import seaborn as sns
    from matplotlib.ticker import MaxNLocator

    order = sorted(curves["entry"].unique())
    colors = colors or method_colors(order)
    stages = curves["stage"].fillna("").astype(str)
    style = "stage" if stages.nunique() > 1 else None
    data = curves.assign(stage=stages)
    fig, axes = _figure(11.0, 4.0, ncols=2)
    for ax, y, label in ((axes[0], "valid_score", "validation selection score (higher is better)"),
                         (axes[1], "train_loss", "training loss")):
        sns.lineplot(data=data, x="epoch", y=y, hue="entry", hue_order=order, palette=colors, style=style,
                     errorbar="sd", ax=ax)
        ax.set_ylabel(label)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axes[1].get_legend() is not None:
        axes[1].get_legend().remove()  # one legend is enough
    if axes[0].get_legend() is not None:
        axes[0].get_legend().set_title("method")
    fig.suptitle(f"{short_dataset(curves['dataset'].iloc[0])} · {curves['protocol_label'].iloc[0]} (mean ± sd over seeds)")
    return fig


# from stored runs ---------------------------------------------------------------------------------------------
def read_training_curves(paths: list[str | Path]) -> pd.DataFrame:
    """Per-epoch training curves of every run under the result directories, one row per run × epoch."""
    from msabench.store import ResultsStore

    records = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no results at {path}: give a directory written by 'msabench run'")
        store = ResultsStore(path)
        for key in sorted(store.keys()):
            info = store.run_info(key)
            base = {c: info.get(c, "") for c in ("run_id", "method", "params_hash", "msabench_version",
                                                 "method_package_version", "tag", "epochs", "dataset", "protocol",
                                                 "protocol_version", "seed")}
            base["protocol_params"] = json.dumps(info.get("protocol_params", {}), sort_keys=True)
            for point in info.get("training_curve") or []:
                records.append({**base, **point})
    if not records:
        raise LeaderboardError("no training curves found: they are in runs/<id>/run.json of directories written "
                               "by 'msabench run'")
    frame = pd.DataFrame(records)
    for col in ("tag", "msabench_version", "method_package_version", "epochs", "protocol_version"):
        frame[col] = frame[col].astype(object).fillna("").astype(str)
    frame["protocol_label"] = _protocol_labels(frame)
    frame["entry"] = _entry_labels(frame)
    return frame


def _slug(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", str(p)).strip("_") for p in parts)


def make_figures(kind: str, paths: list[str | Path], metric: str | None = None, split: str = "test",
                 reported: list[Any] | None = None) -> dict[str, Any]:
    """Figures of ``kind`` (curves, heatmap, training) for stored runs, keyed by a file stem; ``reported`` tables
    overlay their points on robustness curves."""
    if kind not in PLOT_KINDS:
        raise LeaderboardError(f"unknown plot {kind!r}; choose one of {', '.join(PLOT_KINDS)}")
    if kind == "training":
        curves = read_training_curves(paths)
        colors = method_colors(curves["entry"])
        return {_slug("training", d, p): training_figure(c, colors)
                for (d, p), c in curves.groupby(["dataset", "protocol_label"], sort=True)}
    from msabench.store import read_rows

    seeds = _plot_metric(seed_scores(read_rows(paths), [metric] if metric else None, split), metric)
    colors = method_colors(seeds["entry"])
    figures: dict[str, Any] = {}
    for (d, p, m), scores in seeds.groupby(["dataset", "protocol_label", "metric"], sort=True):
        if kind == "heatmap":
            figures[_slug("heatmap", d, p, m)] = condition_heatmap(scores)
        elif _layout(scores).ratios:
            figures[_slug("curves", d, p, m)] = robustness_curve(scores, colors, reported)
    if not figures:
        raise LeaderboardError("no protocol with missing-ratio conditions in the results; robustness curves need "
                               "e.g. random-missing or block-missing (try 'msabench plot heatmap')")
    return figures


def make_all_figures(paths: list[str | Path], metric: str | None = None, split: str = "test",
                     reported: list[Any] | None = None) -> dict[str, Any]:
    """Every kind of figure that applies to the stored runs (kinds that do not apply are skipped, logged)."""
    figures: dict[str, Any] = {}
    for kind in PLOT_KINDS:
        try:
            figures.update(make_figures(kind, paths, metric, split, reported))
        except LeaderboardError as exc:
            log.info("no %s figures: %s", kind, exc)
    if not figures:
        raise LeaderboardError("no figure applies to these results; give directories written by 'msabench run'")
    return figures


def save_figures(figures: dict[str, Any], out: str | Path, formats: Iterable[str] = ("png", "svg")) -> list[Path]:
    """Write every figure in every format to ``out`` (each file atomically); returns the written paths.

    A failed write raises :class:`msabench.outputs.WriteFailed`; temporaries of ended processes in ``out`` go first.
    """
    from msabench.outputs import atomic_write, clean_stale_temps, writing

    out = Path(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    written = []
    for stem, fig in figures.items():
        for fmt in formats:
            path = out / f"{stem}.{fmt}"
            atomic_write(path, lambda tmp, fig=fig, fmt=fmt: fig.savefig(tmp, dpi=150, format=fmt))
            written.append(path)
    return written


def cmd_plot(args: argparse.Namespace) -> int:
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad or not formats:
        raise LeaderboardError(f"unknown format(s) {bad or args.format!r}; use png, svg or pdf (comma-separated)")
    runs = list(args.runs)
    if args.kind is not None and args.kind not in PLOT_KINDS:  # no kind: the first argument is a directory
        runs.insert(0, args.kind)
    reported = [n.strip() for n in args.reported.split(",") if n.strip()] if args.reported else None
    if args.kind in PLOT_KINDS:
        figures = make_figures(args.kind, runs, args.metric, args.split, reported)
    else:
        figures = make_all_figures(runs, args.metric, args.split, reported)
    for path in save_figures(figures, args.out, formats):
        print(path)
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``msabench plot``."""
    p = sub.add_parser("plot", help="robustness curves, condition heatmaps and training curves from stored runs",
                       description="curves: metric vs missing ratio per method (± sd over seeds); heatmap: methods "
                                   "× conditions; training: validation score and loss per epoch (from run.json).")
    p.add_argument("kind", nargs="?", metavar="KIND", help=f"which plot: {', '.join(PLOT_KINDS)} (default: every one that "
                                                  "applies)")
    p.add_argument("runs", nargs="+", metavar="RUNS_DIR", help="result directories written by 'msabench run'")
    p.add_argument("--out", required=True, help="directory for the figure files")
    p.add_argument("--metric", help="metric (default per task: mosi Non0_F1, sims F1_score, iemocap Mean_F1, "
                                    "multiclass weighted_F1)")
    p.add_argument("--split", default="test", choices=["test", "valid"], help="split (default test)")
    p.add_argument("--format", default="png,svg", help="file formats, comma-separated (default png,svg)")
    p.add_argument("--reported", help="published table(s) whose points to overlay on robustness curves "
                                      "(names from msabench/reported/ or YAML paths, comma-separated)")
    p.set_defaults(func=cmd_plot)
