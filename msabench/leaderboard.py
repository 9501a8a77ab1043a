"""Leaderboards built from the long result rows: mean ± std over seeds, paper layouts, significance, robustness.

Only the per-run rows of the store are used (never pre-averaged numbers). Per dataset × protocol × metric the
table has one entry per method; runs that differ in hyperparameters (``params_hash``), msabench version, method
package version, tag or epochs are never pooled but shown as separate entries ``method [..]``; runs of one
condition evaluated on different masks, or one dataset name with different contents, are refused.

Columns follow the protocol plugin: its ``conditions()`` in order, each of its ``summaries()`` (e.g. CorrKD's
``Avg`` over the six missing-modality conditions) placed after its last member, ``AUC`` (trapezoid over the
ratio) when every condition is a missing ratio, and ``EffRob`` (see :func:`msabench.stats.effective_robustness`)
against a baseline entry of the same table. Summaries are computed per seed first, so they have their own std.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from msabench.metrics import metric_direction
from msabench.stats import WILCOXON_MIN_PAIRS, bootstrap_ci, effective_robustness, holm, mean_std, paired_test
from msabench.stats import robustness_auc

log = logging.getLogger(__name__)

DEFAULT_METRIC: dict[str, str] = {"mosi": "Non0_F1", "sims": "F1_score", "iemocap": "Mean_F1",
                                  "multiclass": "weighted_F1"}
REQUIRED_COLUMNS = ("run_id", "method", "params_hash", "dataset", "dataset_fingerprint", "task", "protocol",
                    "seed", "split", "condition", "mask_hash", "metric", "value")
# run attributes that make two runs of one method different entries when they differ
VARIANT_COLUMNS = ("params_hash", "msabench_version", "method_package_version", "tag", "epochs")
TABLE_KEYS = ["dataset", "protocol", "metric"]
ALPHA = 0.05


class LeaderboardError(ValueError):
    """Results that cannot be made into a leaderboard (nothing to show, or runs that must not be pooled)."""


# protocol layout ----------------------------------------------------------------------------------------------
@dataclass
class ProtocolLayout:
    """Column structure of a protocol's table, taken from the protocol plugin where it is installed."""

    conditions: list[str]
    summaries: dict[str, list[str]]
    ratios: dict[str, float] = field(default_factory=dict)  # condition -> ratio, when every condition is one
    complete: str | None = None  # the condition with nothing missing, if any


def _as_ratio(condition: str) -> float | None:
    try:
        r = float(condition)
    except ValueError:
        return None
    return r if math.isfinite(r) else None


def protocol_layout(name: str, params: dict[str, Any] | None, observed: list[str]) -> ProtocolLayout:
    """Conditions, summaries, ratios and complete condition of protocol ``name`` with ``params``.

    Uses ``PROTOCOLS.get(name)(**params)``; a protocol that is not installed falls back to the observed
    conditions with a ``Mean`` summary. A plugin may name its complete condition in ``complete_condition``;
    otherwise ``{l,a,v}``, ``complete`` or ratio 0 is taken as complete.
    """
    conditions: list[str] = []
    summaries: dict[str, list[str]] = {}
    complete = None
    try:
        from msabench.plugins import PROTOCOLS

        proto = PROTOCOLS.get(name)(**(params or {}))
        conditions = list(proto.conditions())
        summaries = {k: list(v) for k, v in proto.summaries().items()}
        complete = getattr(proto, "complete_condition", None)
    except Exception as exc:  # noqa: BLE001 - any plugin failure falls back to the observed conditions
        log.warning("protocol %s not usable here (%s); using the conditions found in the results", name, exc)
    conditions += [c for c in observed if c not in conditions]
    if not summaries:
        summaries = {"Mean": list(conditions)}
    ratios = {c: _as_ratio(c) for c in conditions}
    ratio_map = {c: r for c, r in ratios.items() if r is not None} if all(
        r is not None for r in ratios.values()) else {}
    if complete is None:
        for c in conditions:
            if c in ("{l,a,v}", "complete") or (ratio_map and ratio_map.get(c) == 0.0):
                complete = c
                break
    return ProtocolLayout(conditions, summaries, ratio_map, complete)


# per-seed scores ----------------------------------------------------------------------------------------------
def _check_columns(rows: pd.DataFrame) -> None:
    if rows.empty:
        raise LeaderboardError("no result rows found; give directories written by 'msabench run' or results.csv")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows]
    if missing:
        raise LeaderboardError(f"result rows lack columns {missing}; were they written by 'msabench run'?")


def _default_metrics(task: str, available: set[str]) -> list[str]:
    if task not in DEFAULT_METRIC:
        raise LeaderboardError(f"unknown task {task!r}; pass --metric explicitly")
    metrics = [DEFAULT_METRIC[task]]
    if task == "iemocap":  # a block per emotion, as MulT's table
        metrics += sorted(m for m in available if m.endswith("_F1") and m != "Mean_F1")
    return metrics


def _protocol_labels(rows: pd.DataFrame) -> pd.Series:
    """The protocol name, with the differing parameters added when one protocol appears in several variants."""
    params = rows["protocol_params"] if "protocol_params" in rows else pd.Series("{}", index=rows.index)
    version = rows["protocol_version"] if "protocol_version" in rows else pd.Series("", index=rows.index)
    variant = params.astype(str) + "|" + version.astype(str)
    labels = rows["protocol"].astype(str).copy()
    for name, idx in rows.groupby("protocol", sort=False).groups.items():
        variants = variant.loc[idx].unique()
        if len(variants) < 2:
            continue
        parsed = {v: (json.loads(v.rsplit("|", 1)[0] or "{}"), v.rsplit("|", 1)[1]) for v in variants}
        keys = sorted({k for p, _ in parsed.values() for k in p})
        differing = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p, _ in parsed.values()}) > 1]
        versions_differ = len({ver for _, ver in parsed.values()}) > 1
        for v, (p, ver) in parsed.items():
            parts = [f"{k}={p.get(k)}" for k in differing] + ([f"v{ver}"] if versions_differ else [])
            labels.loc[idx[variant.loc[idx] == v]] = f"{name}[{','.join(parts)}]"
    return labels


def _tags_identify_variants(key: pd.Series, tags: pd.Series) -> bool:
    """True when tags and configurations correspond one to one (each tag one configuration and vice versa)."""
    if tags.nunique() < 2:
        return False
    return bool(key.groupby(tags).nunique().max() == 1 and tags.groupby(key).nunique().max() == 1)


def _entry_labels(rows: pd.DataFrame) -> pd.Series:
    """``method``, or ``method [params_hash, ...]`` where one method has runs of several configurations."""
    cols = [c for c in VARIANT_COLUMNS if c in rows]
    labels = rows["method"].astype(str).copy()
    if not cols:
        return labels
    key = rows[cols].astype(str).agg("|".join, axis=1)
    for _, idx in rows.groupby(["dataset", "protocol_label", "method"], sort=False).groups.items():
        if key.loc[idx].nunique() < 2:
            continue
        sub = rows.loc[idx, cols].astype(str)
        differing = [c for c in cols if sub[c].nunique() > 1]
        if "tag" in sub and _tags_identify_variants(key.loc[idx], sub["tag"]):
            # named variants (e.g. ablations run with --tag no-scd): label them by their tag
            tags = sub["tag"]
            labels.loc[idx] = rows.loc[idx, "method"].astype(str) + tags.map(lambda t: f" [{t}]" if t else "")
            continue
        fmt = {"params_hash": "{}", "msabench_version": "msabench {}", "method_package_version": "package {}",
               "tag": "tag={}", "epochs": "epochs={}"}
        parts = sub[differing].apply(lambda r: ", ".join(fmt[c].format(r[c]) for c in differing), axis=1)
        labels.loc[idx] = rows.loc[idx, "method"].astype(str) + " [" + parts + "]"
    return labels


def seed_scores(rows: pd.DataFrame, metrics: list[str] | None = None, split: str = "test") -> pd.DataFrame:
    """Checked per-seed scores: one row per dataset × protocol × entry × metric × condition × seed.

    Adds ``protocol_label`` and ``entry`` (the method label). ``metrics`` None takes each task's default (plus the
    per-emotion F1 blocks for IEMOCAP). Raises :class:`LeaderboardError` for mixed data, masks or duplicate seeds.
    """
    _check_columns(rows)
    rows = rows[rows["split"].astype(str) == split]
    if rows.empty:
        raise LeaderboardError(f"no rows for split {split!r}; use --split test or valid")
    rows = rows.drop_duplicates(["run_id", "split", "condition", "metric"]).copy()
    rows["condition"] = rows["condition"].astype(str)
    rows["seed"] = rows["seed"].astype(int)
    rows["value"] = rows["value"].astype(float)
    for col in ("tag", "msabench_version", "method_package_version", "git_commit", "epochs"):
        if col in rows:
            rows[col] = rows[col].astype(object).fillna("").astype(str)

    for name, fps in rows.groupby("dataset")["dataset_fingerprint"].unique().items():
        if len(fps) > 1:
            raise LeaderboardError(f"dataset {name} appears with different contents (fingerprints "
                                   f"{', '.join(sorted(map(str, fps)))}); runs on different data cannot share a table")
    rows["protocol_label"] = _protocol_labels(rows)

    available = set(rows["metric"].unique())
    if metrics:
        for m in metrics:
            try:
                metric_direction(m)
            except ValueError as exc:
                raise LeaderboardError(str(exc)) from None
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise LeaderboardError(f"metric(s) {unknown} not in the results; available: {sorted(available)}")
        chosen = rows["metric"].isin(metrics)
    else:
        chosen = pd.Series(False, index=rows.index)
        for task, idx in rows.groupby("task").groups.items():
            task_metrics = _default_metrics(str(task), set(rows.loc[idx, "metric"]))
            chosen.loc[idx] = rows.loc[idx, "metric"].isin(task_metrics)
    rows = rows[chosen].copy()
    if rows.empty:
        raise LeaderboardError(f"none of the metrics {metrics} found in the results")
    rows["entry"] = _entry_labels(rows)

    keys = ["dataset", "protocol_label", "entry", "metric", "condition", "seed"]
    dup = rows[rows.duplicated(keys, keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        ids = sorted(dup[(dup[keys] == first[keys]).all(axis=1)]["run_id"].astype(str))
        raise LeaderboardError(f"{first['entry']} on {first['dataset']}/{first['protocol_label']} has several runs "
                               f"for seed {first['seed']} with the same configuration (run ids {', '.join(ids)}); "
                               "remove the duplicates or give one result directory")
    hashes = rows.groupby(["dataset", "protocol_label", "condition"])["mask_hash"].unique()
    for (dataset, protocol, condition), values in hashes.items():
        if len(values) > 1:
            here = rows[(rows["dataset"] == dataset) & (rows["protocol_label"] == protocol)
                        & (rows["condition"] == condition)]
            runs = {h: sorted(here.loc[here["mask_hash"] == h, "run_id"].astype(str).unique())[:3] for h in values}
            detail = "; ".join(f"{h} (runs {', '.join(map(str, r))})" for h, r in runs.items())
            raise LeaderboardError(f"condition {condition} of {protocol} on {dataset} was evaluated on different "
                                   f"masks: {detail}; results from different masks cannot be compared")
    return rows.reset_index(drop=True)


# the leaderboard ----------------------------------------------------------------------------------------------
@dataclass
class Leaderboard:
    """The tidy table (one row per dataset × protocol × entry × column × metric) and what it was built from."""

    table: pd.DataFrame
    seeds: pd.DataFrame
    split: str
    reference: str | None
    baseline: str | None
    notes: list[str] = field(default_factory=list)
    reported: pd.DataFrame = field(default_factory=pd.DataFrame)  # published rows, see msabench.compare

    def column_order(self, dataset: str, protocol: str, metric: str) -> list[str]:
        sub = self.table[(self.table["dataset"] == dataset) & (self.table["protocol"] == protocol)
                         & (self.table["metric"] == metric)]
        return list(dict.fromkeys(sub.sort_values("column_index")["condition"]))


def _resolve_entry(name: str | None, labels: list[str], methods: dict[str, str], where: str) -> str | None:
    if not name:
        return None
    if name in labels:
        return name
    matches = [lab for lab in labels if methods[lab] == name]
    if len(matches) > 1:
        raise LeaderboardError(f"{name} has several configurations in {where}: {matches}; give one label exactly")
    return matches[0] if matches else None


def _column_order(layout: ProtocolLayout, present: list[str], summaries: list[str]) -> list[str]:
    """Conditions in protocol order, each summary right after its last member, then the rest."""
    order: list[str] = []
    placed = set()
    for c in layout.conditions:
        if c not in present:
            continue
        order.append(c)
        for s in summaries:
            members = [m for m in layout.summaries.get(s, []) if m in present]
            if s not in placed and members and members[-1] == c:
                order.append(s)
                placed.add(s)
    return order + [s for s in summaries if s not in placed]


def _table_columns(wide: pd.DataFrame, layout: ProtocolLayout, baseline: str | None
                   ) -> tuple[pd.DataFrame, dict[str, str], dict[str, list[str]]]:
    """Per-seed values of every column (conditions + summaries); column kinds; members of each column."""
    present = [c for c in layout.conditions if c in wide.columns]
    out = wide[present].copy()
    kinds = {c: "condition" for c in present}
    members: dict[str, list[str]] = {c: [c] for c in present}
    for name, cols in layout.summaries.items():
        if len(cols) < 2 or any(c not in present for c in cols):
            continue  # a summary of one condition repeats it; one over unevaluated conditions is not shown
        out[name] = wide[cols].mean(axis=1, skipna=False)
        kinds[name], members[name] = "summary", list(cols)
    ratio_cols = [c for c in present if c in layout.ratios]
    if len(ratio_cols) >= 2 and len(ratio_cols) == len(present):
        r = [layout.ratios[c] for c in ratio_cols]
        out["AUC"] = wide[ratio_cols].apply(lambda row: robustness_auc(r, row.to_numpy()), axis=1)
        kinds["AUC"], members["AUC"] = "summary", ratio_cols
    if baseline is not None and layout.complete in present and len(present) > 1:
        missing_cols = [c for c in present if c != layout.complete]
        m = wide[missing_cols].mean(axis=1, skipna=False)
        c = wide[layout.complete]
        if baseline in m.index.get_level_values("entry"):
            mb, cb = m.xs(baseline, level="entry").mean(), c.xs(baseline, level="entry").mean()
            out["EffRob"] = effective_robustness(m.to_numpy(), c.to_numpy(), mb, cb)
            kinds["EffRob"], members["EffRob"] = "summary", present
    return out, kinds, members


def _join(values) -> str:
    return ";".join(sorted({str(v) for v in values if str(v) not in ("", "nan")}))


def build_leaderboard(rows: pd.DataFrame, metric: str | list[str] | None = None, split: str = "test",
                      reference: str | None = None, baseline: str | None = None, confidence: float = 0.95,
                      bootstrap_seed: int = 0, min_wilcoxon: int = WILCOXON_MIN_PAIRS) -> Leaderboard:
    """Aggregate long result rows into a :class:`Leaderboard`.

    Per dataset × protocol × metric × entry × column: mean, std (ddof = 1), n seeds, bootstrap CI of the mean, and,
    with ``reference``, a paired test across seeds (Wilcoxon from ``min_wilcoxon`` pairs, paired t below) with Holm
    correction over the compared entries of that column (not across columns or metrics). ``baseline`` adds the
    ``EffRob`` column: :func:`msabench.stats.effective_robustness` with the mean over every condition except the
    complete one as the missing-data score (for ``modality-missing`` exactly the six conditions of ``Avg``) and the
    complete condition as the complete-data score; it needs a protocol with a complete condition.
    """
    metrics = [metric] if isinstance(metric, str) else metric
    seeds = seed_scores(rows, metrics, split)
    notes: list[str] = []
    records: list[dict[str, Any]] = []
    found_ref = found_base = False
    for (dataset, protocol), t_rows in seeds.groupby(["dataset", "protocol_label"], sort=True):
        first = t_rows.iloc[0]
        params = json.loads(first["protocol_params"]) if isinstance(first.get("protocol_params"), str) and \
            first.get("protocol_params") else {}
        layout = protocol_layout(str(first["protocol"]), params, list(dict.fromkeys(t_rows["condition"])))
        methods = dict(zip(t_rows["entry"], t_rows["method"].astype(str)))
        labels = sorted(methods)
        where = f"{dataset}/{protocol}"
        ref = _resolve_entry(reference, labels, methods, where)
        base = _resolve_entry(baseline, labels, methods, where)
        found_ref |= ref is not None
        found_base |= base is not None
        if reference and ref is None:
            notes.append(f"{where}: reference {reference} not in this table; no significance tests")
        if baseline and base is None:
            notes.append(f"{where}: baseline {baseline} not in this table; no EffRob column")
        elif base is not None and layout.complete is None:
            notes.append(f"{where}: protocol {protocol} has no complete-data condition; no EffRob column")
        for metric_name, m_rows in t_rows.groupby("metric", sort=False):
            direction = metric_direction(str(metric_name))
            wide = m_rows.pivot(index=["entry", "seed"], columns="condition", values="value")
            values, kinds, members = _table_columns(wide, layout, base)
            summaries = [c for c in values.columns if kinds[c] == "summary"]
            order = _column_order(layout, [c for c in values.columns if kinds[c] == "condition"], summaries)
            for col_index, col in enumerate(order):
                series = values[col]
                present = set(series.index.get_level_values("entry"))
                per_entry = {lab: series.xs(lab, level="entry") for lab in labels if lab in present}
                tests: dict[str, Any] = {}
                if ref is not None and ref in per_entry:
                    for lab, s in per_entry.items():
                        if lab == ref:
                            continue
                        pair = pd.concat([s, per_entry[ref]], axis=1, join="inner")
                        tests[lab] = paired_test(pair.iloc[:, 0], pair.iloc[:, 1], min_wilcoxon)
                adjusted = dict(zip(tests, holm([t.p_value for t in tests.values()])))
                means = {lab: mean_std(s)[0] for lab, s in per_entry.items()}
                finite = [v for v in means.values() if np.isfinite(v)]
                # a best mark needs something to beat: at least two entries with a value
                best_value = (max(finite) if direction == "maximize" else min(finite)) if len(finite) > 1 else np.nan
                for lab, s in per_entry.items():
                    mean, std, n = mean_std(s)
                    low, high = bootstrap_ci(s.to_numpy(), confidence, bootstrap_seed)
                    e_rows = m_rows[m_rows["entry"] == lab]
                    used = e_rows[e_rows["condition"].isin(members[col])]
                    test = tests.get(lab)
                    if lab == ref:
                        test_name, note = "reference", ""
                    elif test is not None:
                        test_name, note = test.test, test.reason
                    else:
                        test_name, note = "", "no reference given" if not reference else "reference not in this table"
                    records.append({
                        "dataset": dataset, "protocol": protocol, "method": lab, "method_name": methods[lab],
                        "metric": metric_name, "direction": direction, "condition": col, "kind": kinds[col],
                        "column_index": col_index, "mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high,
                        "best": bool(np.isfinite(mean) and np.isclose(mean, best_value, rtol=0, atol=1e-12)),
                        "reference": ref or "", "p_value": test.p_value if test else np.nan,
                        "p_value_holm": adjusted.get(lab, np.nan), "test": test_name, "test_note": note,
                        "split": split, "msabench_version": _join(e_rows.get("msabench_version", [])),
                        "params_hash": _join(e_rows["params_hash"]), "mask_hashes": _join(used["mask_hash"]),
                        "dataset_fingerprint": _join(e_rows["dataset_fingerprint"]),
                        "git_commits": _join(e_rows.get("git_commit", [])),
                        "run_ids": _join(e_rows["run_id"]), "seeds": _join(e_rows["seed"]),
                    })
    if reference and not found_ref:
        raise LeaderboardError(f"reference {reference!r} is not in the results; entries: "
                               f"{sorted(seeds['entry'].unique())}")
    if baseline and not found_base:
        raise LeaderboardError(f"baseline {baseline!r} is not in the results; entries: "
                               f"{sorted(seeds['entry'].unique())}")
    return Leaderboard(pd.DataFrame(records), seeds, split, reference, baseline, notes)


# command line -------------------------------------------------------------------------------------------------
def cmd_leaderboard(args: argparse.Namespace) -> int:
    from msabench.store import read_rows

    rows = read_rows(args.runs)
    metrics = [m.strip() for m in args.metric.split(",") if m.strip()] if args.metric else None
    layout = getattr(args, "layout", "protocol")
    if layout == "lnln":
        from msabench.layouts import lnln_metrics
        metrics = metrics or lnln_metrics(rows)
    board = build_leaderboard(rows, metrics, split=args.split, reference=args.reference, baseline=args.baseline)
    if args.reported:
        from msabench.compare import attach_reported
        attach_reported(board, [n.strip() for n in args.reported.split(",") if n.strip()])
    if layout == "lnln" and args.format == "md":
        from msabench.layouts import lnln_table
        text = lnln_table(board, min(args.digits, 2))
    else:
        from msabench.render import render
        text = render(board, args.format, args.digits)
    for note in board.notes:
        log.warning(note)
    if args.out:
        from msabench.outputs import atomic_write_text, clean_stale_temps

        clean_stale_temps(Path(args.out).parent)
        atomic_write_text(args.out, text)
        log.info("wrote %s", args.out)
    else:
        sys.stdout.write(text)
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register ``msabench leaderboard``."""
    p = sub.add_parser("leaderboard", help="mean ± std tables with significance from stored runs",
                       description="Aggregate stored runs per method × dataset × protocol × condition (mean, std, "
                                   "seeds, bootstrap CI), in the paper layout of each protocol, with paired tests "
                                   "against a reference method and robustness summaries.")
    p.add_argument("runs", nargs="+", metavar="RUNS_DIR", help="result directories (or results.csv files)")
    p.add_argument("--metric", help="metric(s), comma-separated (default per task: mosi Non0_F1, sims F1_score, "
                                    "iemocap Mean_F1 + per-emotion F1, multiclass weighted_F1)")
    p.add_argument("--reference", help="method to test every other method against (paired by seed, Holm)")
    p.add_argument("--baseline", help="method for the effective-robustness column EffRob")
    p.add_argument("--split", default="test", choices=["test", "valid"], help="split (default test)")
    p.add_argument("--format", default="md", choices=["csv", "md", "latex"], help="output format (default md)")
    p.add_argument("--digits", type=int, default=4, help="decimals in md/latex (default 4)")
    p.add_argument("--layout", default="protocol", choices=["protocol", "lnln"],
                   help="protocol: a table per metric with the protocol's conditions (default); lnln: LNLN's Table 2, "
                        "methods x the full metric set at the LNLN-Avg summary of random-missing (md; csv gives "
                        "the tidy rows of those metrics)")
    p.add_argument("--out", help="write to FILE instead of standard output")
    p.add_argument("--reported", help="published table(s) to show beside the measured rows, comma-separated names "
                                      "(e.g. hrlf-2024-table1; see msabench/reported/) or YAML paths; marked ‡, "
                                      "never bolded or tested")
    p.set_defaults(func=cmd_leaderboard)
