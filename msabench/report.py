"""``msabench report``: a self-contained static results site from stored runs (no server, no CDN, opens from file://).

Like leaderboards and plots it reads only the results store and the reported tables. Per study (one results
directory): the paper-layout tables (sortable in the browser by a few lines of inline JavaScript), every figure that
applies (PNG, from :mod:`msabench.plots`), the reported-vs-measured comparison, the per-run provenance (code, config,
data fingerprint, mask hashes, seeds) and the commands that regenerate it; one page per method card
(``methods/*.md``, rendered with Python-Markdown). Pages are Jinja2 templates shipped in ``msabench/templates``.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from msabench.leaderboard import ALPHA, LeaderboardError, build_leaderboard
from msabench.render import _caption, _entry_order

log = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "study"


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("msabench", "templates"),
                              autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


# method cards -------------------------------------------------------------------------------------------------
def method_cards() -> dict[str, Path]:
    """Method name → its card (``methods/NAME.md`` shipped with the package; ``_`` in file names is ``-``)."""
    folder = resources.files("msabench.methods")
    return {p.name[:-3].replace("_", "-"): p for p in folder.iterdir() if p.name.endswith(".md")}


def render_markdown(text: str) -> str:
    """Markdown to HTML with tables and fenced code (Python-Markdown)."""
    import markdown

    return markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists"])


# tables -------------------------------------------------------------------------------------------------------
def _fmt(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if np.isfinite(std) else "")


def board_tables(board, digits: int = 4) -> list[dict[str, Any]]:
    """The leaderboard as template data: per dataset × protocol × metric the columns, measured and reported rows."""
    from msabench import compare

    out = []
    for (dataset, protocol), sub in board.table.groupby(["dataset", "protocol"], sort=True):
        for metric in dict.fromkeys(sub["metric"]):
            t = sub[sub["metric"] == metric]
            cols = board.column_order(dataset, protocol, metric)
            rows = []
            for lab in _entry_order(t, t["reference"].iloc[0]):
                e = t[t["method"] == lab].set_index("condition")
                cells = []
                for c in cols:
                    if c not in e.index:
                        cells.append({"text": "–", "value": "", "best": False, "sig": False})
                        continue
                    r = e.loc[c]
                    cells.append({"text": _fmt(r["mean"], r["std"], digits), "value": f"{r['mean']:.6f}",
                                  "best": bool(r["best"]),
                                  "sig": bool(np.isfinite(r["p_value_holm"]) and r["p_value_holm"] < ALPHA)})
                rows.append({"label": lab, "method": str(e["method_name"].iloc[0]), "cells": cells,
                             "seeds": int(e["n"].max())})
            reported = [{"label": lab, "cells": cells}
                        for lab, cells in compare.table_cells(board, dataset, protocol, metric, cols, digits)]
            caption = _caption(board, t)
            extra = compare.captions(board, dataset, protocol, metric)
            out.append({"dataset": dataset, "protocol": protocol, "metric": metric, "columns": cols, "rows": rows,
                        "reported": reported, "caption": caption, "reported_caption": extra,
                        "id": _slug(f"{dataset}-{protocol}-{metric}")})
    return out


# provenance and commands ----------------------------------------------------------------------------------------
def _non_default(name: str, params: dict[str, Any], registry) -> dict[str, Any]:
    """Parameters to pass with ``--set``: those differing from the class defaults (all when a plugin has
    data-set-dependent defaults, or cannot be loaded), so the command reproduces the stored resolved values."""
    from msabench.method import Method
    from msabench.params import param_defaults

    try:
        cls = registry.get(name)
    except Exception:  # noqa: BLE001 - a plugin that is not installed here: pass everything
        return dict(params)
    if getattr(cls, "dataset_defaults", None) is not None and \
            getattr(cls.dataset_defaults, "__func__", None) is not getattr(Method.dataset_defaults, "__func__", None):
        return dict(params)
    defaults = param_defaults(cls)
    return {k: v for k, v in params.items() if k not in defaults or defaults[k] != v}


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else str(v)


def run_command(info: dict[str, Any], seeds: list[int], out: str) -> str:
    """The ``msabench run`` command that recomputes the runs of one configuration."""
    from msabench.plugins import METHODS, PROTOCOLS

    params = {k: v for k, v in (info.get("params") or {}).items() if k != "epochs"}
    parts = ["msabench", "run", "--method", info["method"], "--dataset", info["dataset"], "--protocol",
             info["protocol"], "--seeds", ",".join(map(str, sorted(seeds)))]
    if info.get("epochs") not in (None, ""):
        parts += ["--epochs", str(info["epochs"])]
    for k, v in sorted(_non_default(info["method"], params, METHODS).items()):
        parts += ["--set", f"{k}={_value(v)}"]
    for k, v in sorted(_non_default(info["protocol"], info.get("protocol_params") or {}, PROTOCOLS).items()):
        parts += ["--protocol-option", f"{k}={_value(v)}"]
    for k, v in sorted((info.get("dataset_options") or {}).items()):
        parts += ["--dataset-option", f"{k}={_value(v)}"]
    if info.get("tag"):
        parts += ["--tag", info["tag"]]
    return shlex.join(parts + ["--threads", "1", "--out", out])


def study_provenance(path: Path) -> dict[str, Any]:
    """Per-run provenance, the distinct mask hashes per condition, and the commands per configuration."""
    from msabench.store import ResultsStore

    store = ResultsStore(path)
    runs, groups, masks = [], {}, {}
    for key in sorted(store.keys()):
        info = store.run_info(key)
        runs.append({k: info.get(k, "") for k in ("run_id", "method", "tag", "seed", "epochs", "params_hash",
                                                  "dataset", "dataset_fingerprint", "protocol", "git_commit",
                                                  "msabench_version", "torch_version", "device", "finished")}
                    | {"params": json.dumps(info.get("params", {}), sort_keys=True),
                       "protocol_params": json.dumps(info.get("protocol_params", {}), sort_keys=True)})
        for cond, h in (info.get("mask_hashes") or {}).items():
            masks.setdefault((info.get("dataset", ""), info.get("protocol", ""), cond), set()).add(h)
        gkey = json.dumps([info.get(k) for k in ("method", "tag", "params", "dataset", "dataset_options",
                                                 "protocol", "protocol_params", "epochs")], sort_keys=True,
                          default=str)
        groups.setdefault(gkey, (info, []))[1].append(int(info.get("seed", 0)))
    runs.sort(key=lambda r: (str(r["dataset"]), str(r["protocol"]), str(r["method"]), str(r["tag"]), r["seed"]))
    commands = sorted(run_command(info, seeds, str(path)) for info, seeds in groups.values())
    mask_rows = [{"dataset": d, "protocol": p, "condition": c, "hashes": ", ".join(sorted(h))}
                 for (d, p, c), h in sorted(masks.items())]
    return {"runs": runs, "commands": commands, "masks": mask_rows}


# the site ---------------------------------------------------------------------------------------------------------
def build_study(path: Path, out: Path, reported: list[str], reference: str | None, baseline: str | None
                ) -> dict[str, Any]:
    """Write one study's page and figures; returns its summary for the index."""
    from msabench.compare import attach_reported
    from msabench.plots import make_all_figures, save_figures
    from msabench.store import read_rows

    rows = read_rows([path])
    if rows.empty:
        raise LeaderboardError(f"no result rows in {path}; give directories written by 'msabench run'")
    methods = set(rows["method"].astype(str))
    ref = reference if reference in methods else None
    base = baseline if baseline in methods else None
    board = attach_reported(build_leaderboard(rows, reference=ref, baseline=base), reported)
    slug = _slug(path.resolve().name)
    figures_dir = out / slug
    try:
        figures = make_all_figures([path], reported=reported)
    except LeaderboardError as exc:
        log.warning("%s: no figures (%s)", path, exc)
        figures = {}
    written = save_figures(figures, figures_dir, ["png"])
    for fig in figures.values():  # free the memory of large studies
        fig.clear()
    provenance = study_provenance(path)
    study = {"name": path.resolve().name, "slug": slug, "path": str(path), "tables": board_tables(board),
             "figures": [f"{slug}/{p.name}" for p in written], "notes": board.notes, **provenance,
             "n_runs": len(provenance["runs"]), "methods": sorted(methods),
             "datasets": sorted(set(rows["dataset"].astype(str))),
             "protocols": sorted(set(rows["protocol"].astype(str))),
             "seeds": sorted({int(s) for s in rows["seed"]}), "reference": ref, "baseline": base}
    return study


def build_site(paths: list[str | Path], out: str | Path, reported: list[str] | None = None,
               reference: str | None = "corrkd", baseline: str | None = "late-fusion") -> list[Path]:
    """Render the site into ``out``: ``index.html``, one page per study and per method card. Returns the pages.

    ``reported`` None attaches every packaged reported table (each only where protocol and metric match).
    ``reference`` / ``baseline`` are used in a study only when it has runs of them.
    """
    from msabench.reported import available_reported

    from msabench.outputs import atomic_write_text, clean_stale_temps, writing

    out = Path(out)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out, recursive=True)  # temporaries of an earlier, killed report
    if reported is None:
        reported = available_reported()
    env = _environment()
    cards = method_cards()
    regenerate = shlex.join(["msabench", "report", *map(str, paths), "--out", str(out)])
    studies = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"no results directory {path}: give directories written by 'msabench run'")
        studies.append(build_study(path, out, reported, reference, baseline))
    pages = []
    common = {"studies": studies, "cards": sorted(cards), "regenerate": regenerate}
    for study in studies:
        page = out / f"{study['slug']}.html"
        atomic_write_text(page, env.get_template("study.html").render(study=study, root="", **common))
        pages.append(page)
    with writing(out / "methods"):
        (out / "methods").mkdir(exist_ok=True)
    for name, card in sorted(cards.items()):
        page = out / "methods" / f"{name}.html"
        html = render_markdown(card.read_text(encoding="utf-8"))
        atomic_write_text(page, env.get_template("method.html").render(name=name, body=html, root="../", **common))
        pages.append(page)
    index = out / "index.html"
    atomic_write_text(index, env.get_template("index.html").render(root="", **common))
    return [index] + pages


def cmd_report(args: argparse.Namespace) -> int:
    reported = [n.strip() for n in args.reported.split(",") if n.strip()] if args.reported is not None else None
    pages = build_site(args.runs, args.out, reported, args.reference, args.baseline)
    print(f"wrote {len(pages)} pages; open {pages[0]}")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``msabench report``."""
    p = sub.add_parser("report", help="static results website from stored runs",
                       description="Write a self-contained static site (opens from file://): an index of studies; "
                                   "per results directory its tables, figures, reported-vs-measured comparison, "
                                   "per-run provenance and the commands to regenerate it; a page per method card.")
    p.add_argument("runs", nargs="+", metavar="RUNS_DIR", help="result directories written by 'msabench run'")
    p.add_argument("--out", required=True, help="directory for the site (index.html and its pages)")
    p.add_argument("--reported", help="published tables to compare with, comma-separated (default: every packaged "
                                      "one, shown where protocol and metric match; '' for none)")
    p.add_argument("--reference", default="corrkd", help="method for the significance tests where present "
                                                         "(default corrkd)")
    p.add_argument("--baseline", default="late-fusion", help="method for EffRob where present (default late-fusion)")
    p.set_defaults(func=cmd_report)
