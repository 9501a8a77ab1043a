"""Fill the generated tables of the write-ups in results/ from the studies' stored runs.

Usage: ``python results/summarise.py`` (no training; run after new runs are stored). Each table sits between
``<!-- generated:NAME -->`` and ``<!-- /generated -->`` in those files; the text around it is left alone, so the
prose can cite a table but never holds a number the runs do not.

Numbers: test split, the task's default metric (MOSI ``Non0_F1``, IEMOCAP ``Mean_F1``), mean ± std (ddof = 1) over
seeds, n seeds; p: paired test across seeds against the reference entry (Wilcoxon from 6 pairs, paired t below),
Holm-corrected over the entries compared in that column, from :func:`msabench.leaderboard.build_leaderboard`.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pandas as pd

from msabench.leaderboard import build_leaderboard
from msabench.store import read_rows

HERE = Path(__file__).resolve().parent
STUDIES = {"mosi-utterance": "real CMU-MOSI (utterance level)", "synthetic-mosi": "synthetic-mosi",
           "synthetic-iemocap": "synthetic-iemocap"}
# (protocol, column, header) of the summary columns
COLUMNS = [("modality-missing", "Avg", "modality-missing Avg"), ("modality-missing", "{l,a,v}", "{l,a,v}"),
           ("random-missing", "Mean", "random-missing Mean"), ("random-missing", "0.0", "r = 0")]
CORRKD_ORDER = ["corrkd", "corrkd [no-distill]", "corrkd [teacher]", "corrkd [no-scd]", "corrkd [no-cpd]",
                "corrkd [rcd-kl]", "corrkd [scd-0.1]", "corrkd [20-epochs]", "corrkd [no-distill-20-epochs]",
                "late-fusion"]


PRIMARY_METRICS = ("Non0_F1", "Mean_F1", "F1_score", "weighted_F1")  # the headline metric of each task


def board(study: str, reference: str) -> pd.DataFrame:
    """The study's leaderboard rows of its headline metric (IEMOCAP boards also hold one block per emotion)."""
    return headline(read_rows([HERE / study]), reference)


def headline(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """The leaderboard of ``rows`` against ``reference``, its conditions and summaries of the headline metric."""
    table = build_leaderboard(rows, reference=reference).table
    metric = next(m for m in PRIMARY_METRICS if m in set(table["metric"]))
    return table[table["kind"].isin(["condition", "summary"]) & (table["metric"] == metric)]


def cell(table: pd.DataFrame, entry: str, protocol: str, column: str, with_p: bool) -> str:
    row = table[(table["method"] == entry) & (table["protocol"] == protocol) & (table["condition"] == column)]
    if row.empty:
        return "—"
    r = row.iloc[0]
    text = f"{r['mean']:.3f} ± {0.0 if pd.isna(r['std']) else r['std']:.3f} ({int(r['n'])})"
    if with_p and r["test"] != "reference" and not pd.isna(r["p_value"]):
        holm = r["p_value_holm"]
        mark = " **†**" if holm < 0.05 else ""
        text += f", p = {r['p_value']:.2g} / {holm:.2g}{mark}"
    return text


def corrkd_table(study: str) -> str:
    table = board(study, "corrkd")
    entries = [e for e in CORRKD_ORDER if e in set(table["method"])]
    lines = ["| entry | " + " | ".join(h for _, _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for e in entries:
        cells = [cell(table, e, p, c, with_p=c in ("Avg", "Mean")) for p, c, _ in COLUMNS]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    metric = table["metric"].iloc[0]
    lines.append("")
    lines.append(f"*{STUDIES[study]}, test {metric}: mean ± std (seeds); p = paired test against corrkd, raw / "
                 f"Holm-corrected over the entries of the column; † Holm p < 0.05.*")
    return "\n".join(lines)


PAPER_MOSI_AVG_F1 = {"corrkd": 74.69, "corrkd [no-scd]": 72.46, "corrkd [no-cpd]": 71.81, "corrkd [rcd-kl]": 73.27}
PAPER_LABELS = {"corrkd": "full CorrKD", "corrkd [no-scd]": "without SCD", "corrkd [no-cpd]": "without CPD",
                "corrkd [rcd-kl]": "RCD → KL", "corrkd [no-distill]": "no distillation at all"}


def paper_table(study: str = "mosi-utterance") -> str:
    """The paper's MOSI ablation (six-condition average F1, Li et al. 2024) next to ours (modality-missing Avg)."""
    table = board(study, "corrkd")
    avg = table[(table["protocol"] == "modality-missing") & (table["condition"] == "Avg")].set_index("method")
    full = avg.loc["corrkd", "mean"]
    lines = ["| entry | paper (Avg F1) | paper − full | msabench (Avg Non0_F1 × 100) | msabench − full | p (raw / Holm) |",
             "|---|---|---|---|---|---|"]
    for entry, label in PAPER_LABELS.items():
        paper = PAPER_MOSI_AVG_F1.get(entry)
        ours = avg.loc[entry] if entry in avg.index else None
        p_text = "—" if ours is None or pd.isna(ours["p_value"]) else f"{ours['p_value']:.2g} / {ours['p_value_holm']:.2g}"
        lines.append(" | ".join([
            f"| {label}", "—" if paper is None else f"{paper:.2f}",
            "—" if paper is None or entry == "corrkd" else f"{paper - PAPER_MOSI_AVG_F1['corrkd']:+.2f}",
            "—" if ours is None else f"{100 * ours['mean']:.1f} ± {100 * ours['std']:.1f}",
            "—" if ours is None or entry == "corrkd" else f"{100 * (ours['mean'] - full):+.1f}", p_text]) + " |")
    return "\n".join(lines)


def baselines_table(study: str) -> str:
    table = board(study, "late-fusion")
    methods = sorted(set(table["method"]) - {"late-fusion"}, key=lambda m: (m.startswith("corrkd"), m))
    methods = [m for m in methods if "[" not in m]  # CorrKD's variants are compared in corrkd.md
    lines = ["| method | " + " | ".join(h for _, _, h in COLUMNS) + " | complete data vs late fusion |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for m in ["late-fusion"] + methods:
        cells = [cell(table, m, p, c, with_p=m != "late-fusion") for p, c, _ in COLUMNS]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {verdict(table, m)} |")
    metric = table["metric"].iloc[0]
    lines.append("")
    lines.append(f"*{STUDIES[study]}, test {metric}: mean ± std (seeds); p = paired test against late fusion, raw / "
                 f"Holm-corrected over the methods of the column; † Holm p < 0.05. Last column: the complete "
                 f"conditions ({{l,a,v}} and r = 0) against late fusion.*")
    return "\n".join(lines)


def verdict(table: pd.DataFrame, method: str) -> str:
    if method == "late-fusion":
        return "reference"
    out = []
    for protocol, column in (("modality-missing", "{l,a,v}"), ("random-missing", "0.0")):
        row = table[(table["method"] == method) & (table["protocol"] == protocol) & (table["condition"] == column)]
        base = table[(table["method"] == "late-fusion") & (table["protocol"] == protocol)
                     & (table["condition"] == column)]
        if row.empty or base.empty:
            continue
        diff = row.iloc[0]["mean"] - base.iloc[0]["mean"]
        holm = row.iloc[0]["p_value_holm"]
        name = "r = 0" if column == "0.0" else column
        if diff >= 0:
            out.append(f"{name}: ≥ ({diff:+.3f})")
        else:
            word = "**below**" if not pd.isna(holm) and holm < 0.05 else "below"
            out.append(f"{name}: {word} ({diff:+.3f}, Holm p = {holm:.2g})")
    return "; ".join(out) or "—"


def budget_table(study: str) -> str:
    """Per method: how many runs selected their last epoch (still improving when the epoch cap stopped them)."""
    import json

    import numpy as np

    stats: dict[str, list[tuple[bool, float, int]]] = {}
    for path in sorted((HERE / study / "runs").glob("*/run.json")):
        run = json.loads(path.read_text())
        if run.get("tag"):
            continue
        curve = [e["valid_score"] for e in run["training_curve"] if e.get("stage", "") in ("", "student")]
        if len(curve) < 2:
            continue
        stats.setdefault(run["method"], []).append((int(np.argmax(curve)) == len(curve) - 1,
                                                    curve[-1] - curve[-2], len(curve)))
    lines = ["| method | runs | epochs | best epoch = last | mean validation gain in the last epoch |",
             "|---|---|---|---|---|"]
    for method, rows in sorted(stats.items()):
        lines.append(f"| {method} | {len(rows)} | {rows[0][2]} | {sum(r[0] for r in rows)} | "
                     f"{np.mean([r[1] for r in rows]):+.4f} |")
    lines += ["", "*Validation selection score (higher is better; −MAE for MOSI) of each run's training curve "
                  "(CorrKD: its student stage).*"]
    return "\n".join(lines)


# HRLF / CorrKD / MMIN studies of issue #18: name -> (run directories, caption); CorrKD's token-level runs carry the
# tag "distill" for the default, shown here as plain "corrkd"
HRLF_STUDIES = {
    "hrlf-mosi-utterance": (["hrlf/runs-mosi-utterance"],
                            "real CMU-MOSI, utterance level (mosi_utterance.pkl), default epochs"),
    "hrlf-mosi-utterance-bert": (["hrlf/runs-mosi-utterance-bert", "corrkd-token-mosi"],
                                 "real CMU-MOSI, token level (mosi_utterance_bert.pkl), default epochs"),
    "hrlf-synthetic-mosi": (["hrlf/runs-synthetic-mosi-5seeds"], "synthetic-mosi, 6 epochs per stage"),
    "hrlf-synthetic-iemocap": (["hrlf/runs-synthetic-iemocap-5seeds"], "synthetic-iemocap, 6 epochs per stage"),
    "hrlf-synthetic-mosi-default-epochs": (["hrlf/runs-synthetic-mosi-default-epochs"],
                                           "synthetic-mosi, default epochs (50 per stage, patience 8)"),
}
HRLF_PROTOCOLS = {"hrlf-synthetic-mosi-default-epochs": ["modality-missing"]}  # the others: both
HRLF_ORDER = ["hrlf", "hrlf [no-distill]", "hrlf [no-frf]", "hrlf [no-hmi]", "hrlf [no-hal]", "hrlf [lhal01]", "corrkd",
              "corrkd [no-distill]", "corrkd [teacher]", "mmin"]
HRLF_COLUMNS = {"modality-missing": ["Avg", "{l,a,v}"], "random-missing": ["Mean", "LNLN-Avg", "0.0"]}


def hrlf_present() -> list[str]:
    """The HRLF studies whose run directories are all here."""
    return [s for s, (dirs, _) in HRLF_STUDIES.items() if all((HERE / d / "runs").is_dir() for d in dirs)]


def hrlf_rows(dirs: list[str]) -> pd.DataFrame:
    rows = read_rows([HERE / d for d in dirs])
    rows.loc[(rows["method"] == "corrkd") & (rows["tag"] == "distill"), "tag"] = ""
    return rows


@functools.cache
def hrlf_boards(study: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """An HRLF study's headline leaderboard against HRLF and against CorrKD, None without CorrKD rows (built once)."""
    rows = hrlf_rows(HRLF_STUDIES[study][0])
    has_corrkd = ((rows["method"] == "corrkd") & (rows["tag"] == "")).any()
    return headline(rows, "hrlf"), headline(rows, "corrkd") if has_corrkd else None


def p_cell(table: pd.DataFrame | None, entry: str, protocol: str, column: str) -> str:
    if table is None:
        return "—"
    row = table[(table["method"] == entry) & (table["protocol"] == protocol) & (table["condition"] == column)]
    if row.empty or row.iloc[0]["test"] == "reference" or pd.isna(row.iloc[0]["p_value"]):
        return "—"
    r = row.iloc[0]
    return f"{r['p_value']:.2g} / {r['p_value_holm']:.2g}" + (" †" if r["p_value_holm"] < 0.05 else "")


def hrlf_table(study: str, protocol: str) -> str:
    """One protocol of an HRLF study: every entry's summary columns, p against HRLF and against CorrKD."""
    caption = HRLF_STUDIES[study][1]
    vs_hrlf, vs_corrkd = hrlf_boards(study)
    columns = HRLF_COLUMNS[protocol]
    present = set(vs_hrlf.loc[vs_hrlf["protocol"] == protocol, "method"])
    head = columns[0]
    lines = ["| entry | " + " | ".join(columns) + f" | p vs hrlf ({head}) | p vs corrkd ({head}) |",
             "|---" * (len(columns) + 3) + "|"]
    for e in [e for e in HRLF_ORDER if e in present]:
        cells = [cell(vs_hrlf, e, protocol, c, with_p=False) for c in columns]
        cells += [p_cell(vs_hrlf, e, protocol, head), p_cell(vs_corrkd, e, protocol, head)]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    metric = vs_hrlf["metric"].iloc[0]
    lines += ["", f"*{caption}, {protocol}, test {metric}: mean ± std (seeds); p = paired test by seed, raw / "
                  f"Holm-corrected over the entries of the column; † Holm p < 0.05.*"]
    return "\n".join(lines)


def ablation_table() -> str:
    """HRLF's ablation: the paper's Table 3 (MOSI, six-condition Avg F1) beside ours on every HRLF study
    (modality-missing Avg × 100), each as the difference from full HRLF with the paired test against it."""
    from msabench.reported import load_reported

    paper = load_reported("hrlf-2024-ablation")
    entries = {"hrlf": paper.rows[0]}
    for row in paper.rows[1:]:
        term = row.ours.split("--set ")[1].split("=")[0]   # "hrlf --set frf=false" -> "frf"
        entries[f"hrlf [no-{term}]"] = row
    full_paper = paper.rows[0].values["Avg"]
    studies = hrlf_present()
    lines = ["| entry | paper: Avg F1 (Δ) | " + " | ".join(s.removeprefix("hrlf-") for s in studies) + " |",
             "|---" * (len(studies) + 2) + "|"]
    boards = {}
    for s in studies:
        table = hrlf_boards(s)[0]
        boards[s] = table[(table["protocol"] == "modality-missing") & (table["condition"] == "Avg")].set_index("method")
    for entry, row in entries.items():
        value = row.values["Avg"]
        cells = [f"{value:.2f}" + ("" if entry == "hrlf" else f" ({value - full_paper:+.2f})")]
        for s in studies:
            avg = boards[s]
            if entry not in avg.index:
                cells.append("—")
                continue
            r, full = avg.loc[entry], avg.loc["hrlf", "mean"]
            text = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"
            if entry != "hrlf":
                p_text = "no seed differs" if pd.isna(r["p_value"]) else f"p = {r['p_value']:.2g}"
                text += f" ({100 * (r['mean'] - full):+.1f}; {p_text})"
            cells.append(text)
        lines.append(f"| {row.method} (`{entry}`) | " + " | ".join(cells) + " |")
    lines += ["", f"*Paper: {paper.citation}, {paper.features}. Ours: test Non0_F1 (synthetic-iemocap: Mean_F1) × 100, "
                  "modality-missing Avg over the six missing conditions, mean ± std over seeds; Δ = entry − full "
                  "HRLF; p = paired test by seed against full HRLF (raw; Holm over the column in the study "
                  "tables).*"]
    return "\n".join(lines)


def per_seed(seeds: pd.DataFrame, by: str, protocol: str) -> tuple[pd.DataFrame, list[str]]:
    """Per-seed test scores (from :func:`msabench.leaderboard.seed_scores`) as one row per (``by``, seed) and one
    column per condition, plus the protocol's summaries computed per seed; and the column order."""
    from msabench.leaderboard import protocol_layout

    wide = seeds.pivot_table(index=[by, "seed"], columns="condition", values="value")
    order = list(dict.fromkeys(seeds["condition"]))
    for name, members in protocol_layout(protocol, None, order).summaries.items():
        wide[name] = wide[members].mean(axis=1)
        order.append(name)
    return wide, order


def target_table(dirs: list[str], protocol: str) -> str:
    """Issue #22's target per column: the default CorrKD's worst seed against its no-distillation student's worst.

    Summaries per seed as the protocol defines them (modality-missing Avg; random-missing LNLN-Avg and Mean).
    """
    from msabench.leaderboard import seed_scores

    rows = read_rows([HERE / d for d in dirs])
    rows = rows[(rows["method"] == "corrkd") & (rows["protocol"] == protocol)]
    metric = next(m for m in PRIMARY_METRICS if m in set(rows["metric"]))
    seeds = seed_scores(rows, [metric], "test")
    seeds["side"] = seeds["tag"].map(lambda t: "nd" if t == "no-distill" else ("default" if t in ("", "distill")
                                                                             else None))
    wide, order = per_seed(seeds.dropna(subset=["side"]), "side", protocol)
    lines = ["| column | default min | default mean | nd min | nd mean | margin | |", "|---|---|---|---|---|---|---|"]
    passed = 0
    for c in order:
        d, n = wide.loc["default", c], wide.loc["nd", c]
        margin = d.min() - n.min()
        passed += margin >= 0
        lines.append(f"| {c} | {d.min():.4f} | {d.mean():.4f} | {n.min():.4f} | {n.mean():.4f} | {margin:+.4f} | "
                     + ("pass" if margin >= 0 else "**fail**") + " |")
    n_seeds = (len(wide.loc["default"]), len(wide.loc["nd"]))
    lines += ["", f"*{passed} of {len(order)} columns pass; test {metric}, seeds: default {n_seeds[0]}, "
                  f"no-distill {n_seeds[1]}; margin = default min − nd min.*"]
    return "\n".join(lines)


TEXT_METHODS = ["late-fusion", "self-mm", "misa", "dmd"]
TEXT_MODES = ["features", "frozen", "finetune"]  # tags of results/mosi-utterance-text
TEXT_COLUMNS = {"modality-missing": ["Avg", "{l}", "{l,a,v}"], "random-missing": ["LNLN-Avg", "Mean", "0.0"]}


def epochs_run(study: str) -> pd.DataFrame:
    """Per run and training stage (teacher/student; "" for single-stage methods): method, tag, protocol, epochs
    trained and the best epoch on validation (from run.json)."""
    import json

    out = []
    for f in sorted((HERE / study / "runs").glob("*/run.json")):
        run = json.loads(f.read_text())
        curve = run.get("training_curve") or []
        for stage in dict.fromkeys(e.get("stage", "") for e in curve) or [""]:
            part = [e for e in curve if e.get("stage", "") == stage]
            best = max(range(len(part)), key=lambda i: part[i]["valid_score"]) + 1 if part else 0
            out.append({"method": run["method"], "tag": run["tag"], "protocol": run["protocol"], "stage": stage,
                        "run": len(part), "best": best})
    return pd.DataFrame(out)


def epoch_span(e: pd.DataFrame) -> str:
    """'run min–max (best min–max)' over runs, per stage when the runs have stages."""
    parts = []
    for stage, g in e.groupby("stage", sort=False):
        parts.append((f"{stage} " if stage else "") + f"{g['run'].min()}–{g['run'].max()} "
                     f"({g['best'].min()}–{g['best'].max()})")
    return "; ".join(parts) if parts else "—"


def text_table(protocol: str, study: str = "mosi-utterance-text") -> str:
    """Issue #16: each method with the file's text features, the frozen encoder and the fine-tuned one.

    p: paired test by seed against the same method with ``features`` (Holm over frozen and fine-tuned).
    """
    rows = read_rows([HERE / study])
    rows = rows[rows["protocol"] == protocol]
    epochs = epochs_run(study)
    columns = TEXT_COLUMNS[protocol]
    compared = [columns[0], columns[-1]]  # the protocol's summary and complete data
    lines = ["| method | text | " + " | ".join(columns) + "".join(f" | Δ {c} | p {c}" for c in compared)
             + " | epochs run (best) |", "|---" * (len(columns) + 3 + 2 * len(compared)) + "|"]
    complete = rows.groupby("method")["tag"].unique().map(lambda tags: {"features", *TEXT_MODES[1:]} & set(tags))
    for m in [m for m in TEXT_METHODS if m in complete and "features" in complete[m] and len(complete[m]) > 1]:
        table = headline(rows[rows["method"] == m], f"{m} [features]")
        for mode in TEXT_MODES:
            entry = f"{m} [{mode}]"
            if entry not in set(table["method"]):
                continue
            cells = [cell(table, entry, protocol, c, with_p=False) for c in columns]
            for c in compared:
                mine = table[(table["method"] == entry) & (table["condition"] == c)].iloc[0]
                ref = table[(table["method"] == f"{m} [features]") & (table["condition"] == c)].iloc[0]
                cells += ["—" if mode == "features" else f"{mine['mean'] - ref['mean']:+.3f}",
                          p_cell(table, entry, protocol, c)]
            span = epoch_span(epochs[(epochs["method"] == m) & (epochs["tag"] == mode)
                                     & (epochs["protocol"] == protocol)])
            lines.append(f"| {m} | {mode} | " + " | ".join(cells) + f" | {span} |")
    metric = next(m for m in PRIMARY_METRICS if m in set(rows["metric"]))
    lines += ["", f"*Real CMU-MOSI (BERT layout), {protocol}, test {metric}: mean ± std (seeds); Δ and p against the "
                  f"same method with the file's text features, paired by seed, raw / Holm over frozen and fine-tuned; "
                  f"† Holm p < 0.05; epochs run and best validation epoch, min–max over seeds (cap 30, patience 8).*"]
    return "\n".join(lines)


TOKEN_STUDIES = {"features": "corrkd-token-mosi", "finetune": "corrkd-token-mosi-finetune"}  # text mode -> study
TOKEN_COLUMNS = {"modality-missing": ["Avg", "{l}", "{a}", "{l,a,v}"],
                 "random-missing": ["LNLN-Avg", "Mean", "0.0", "0.5"]}


def token_table(protocol: str) -> str:
    """Issue #22, token-level MOSI: CorrKD (distill) vs its no-distillation student vs the teacher, with the file's
    token features and with the fine-tuned encoder; p against distill with the same text, paired by seed."""
    columns = TOKEN_COLUMNS[protocol]
    head = columns[0]
    lines = ["| text | entry | " + " | ".join(columns) + f" | p vs distill ({head}) | epochs run (best) |",
             "|---" * (len(columns) + 4) + "|"]
    metric = ""
    for mode, study in TOKEN_STUDIES.items():
        if not (HERE / study / "runs").is_dir():
            continue
        rows = read_rows([HERE / study])
        rows = rows[(rows["protocol"] == protocol) & (rows["method"] == "corrkd")]
        table = headline(rows, "corrkd [distill]")
        metric = table["metric"].iloc[0]
        epochs = epochs_run(study)
        for tag in ("distill", "no-distill", "teacher"):
            entry = f"corrkd [{tag}]"
            cells = [cell(table, entry, protocol, c, with_p=False) for c in columns]
            span = epoch_span(epochs[(epochs["tag"] == tag) & (epochs["protocol"] == protocol)])
            lines.append(f"| {mode} | {tag} | " + " | ".join(cells) + f" | {p_cell(table, entry, protocol, head)} "
                         f"| {span} |")
    lines += ["", f"*Real CMU-MOSI (`mosi_utterance_bert.pkl`), {protocol}, test {metric}: mean ± std (seeds); "
                  "features: the file's frozen contextual MiniLM token states; finetune: all-MiniLM-L6-v2 fine-tuned "
                  "by each stage, dropped tokens -> [UNK]; p = paired test by seed against distill with the same "
                  "text, raw / Holm over the two entries; † Holm p < 0.05; epochs run and best validation epoch "
                  "per stage, min–max over seeds (cap 50, patience 8; a cached teacher's curve is the one it "
                  "was trained with).*"]
    return "\n".join(lines)


TUNING_STUDIES = {"corrkd-tuning-mosi": ("mosi-mm-distill", "mosi-mm-nodistill"),
                  "corrkd-tuning-synthetic-mosi": ("smosi-mm-distill", "smosi-mm-nodistill")}
TUNED_KNOBS = ("lr", "dropout", "eta", "lambda_scd", "lambda_cpd", "lambda_rcd", "tau", "distill_scale",
               "student_recipe")


def tuning_table(study: str) -> str:
    """Issue #22's equal-budget tuning: each Optuna study's trials and best configuration, then the five final seeds
    of each best configuration on the test split (CorrKD against its no-distillation student, paired by seed)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{HERE / study / 'optuna.db'}"
    names = TUNING_STUDIES[study]
    lines = ["| study | complete / pruned trials | best validation score | best configuration |", "|---|---|---|---|"]
    for name in names:
        st = optuna.load_study(study_name=f"{name}-corrkd", storage=storage)
        states = [t.state for t in st.trials]
        best = st.best_trial
        shown = TUNED_KNOBS if name == names[0] else ("lr", "dropout", "student_recipe")  # the rest: no effect
        knobs = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in best.params.items() if k in shown)
        lines.append(f"| {name} | {states.count(optuna.trial.TrialState.COMPLETE)} / "
                     f"{states.count(optuna.trial.TrialState.PRUNED)} | {best.value:.4f} | {knobs} |")
    from msabench.leaderboard import seed_scores
    from msabench.stats import holm, paired_test

    rows = read_rows([HERE / study])
    metric = next(m for m in PRIMARY_METRICS if m in set(rows["metric"]))
    protocol = rows["protocol"].iloc[0]
    wide, order = per_seed(seed_scores(rows, [metric], "test"), "tag", protocol)
    a, b = (wide.loc[f"{n}-corrkd"] for n in names)
    common = a.index.intersection(b.index)
    p_raw = [paired_test(a.loc[common, c].to_numpy(), b.loc[common, c].to_numpy()).p_value for c in order]
    p_holm = holm(p_raw)
    lines += ["", "| condition | CorrKD tuned | no-distill tuned | difference | p (raw / Holm) | worst seed: CorrKD / "
                  "no-distill |", "|---|---|---|---|---|---|"]
    for c, p, ph in zip(order, p_raw, p_holm):
        lines.append(f"| {c} | {a[c].mean():.4f} ± {a[c].std():.4f} | {b[c].mean():.4f} ± {b[c].std():.4f} | "
                     f"{a[c].mean() - b[c].mean():+.4f} | {p:.2g} / {ph:.2g}{' †' if ph < 0.05 else ''} | "
                     f"{a[c].min():.4f} / {b[c].min():.4f} |")
    lines += ["", f"*{protocol}, test {metric} of the final seeds of each best configuration (CorrKD {len(a)}, "
                  f"no-distill {len(b)}): mean ± std; difference = CorrKD − no-distill; p = paired test by seed, raw "
                  f"/ Holm over the {len(order)} rows; † Holm p < 0.05. Trials were scored on the validation split "
                  "only. For the no-distillation study only lr, dropout and student_recipe have an effect.*"]
    return "\n".join(lines)


def fill(path: Path, tables: dict[str, str]) -> None:
    text = path.read_text()
    for name, body in tables.items():
        pattern = re.compile(rf"(<!-- generated:{re.escape(name)} -->\n).*?(<!-- /generated -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{path}: no block <!-- generated:{name} --> ... <!-- /generated -->")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    path.write_text(text)


def main() -> None:
    present = [s for s in STUDIES if (HERE / s / "runs").is_dir()]
    fill(HERE / "corrkd.md", {**{f"corrkd-{s}": corrkd_table(s) for s in present}, "corrkd-paper": paper_table()})
    fill(HERE / "baselines.md", {**{f"baselines-{s}": baselines_table(s) for s in present if s != "synthetic-iemocap"},
                                 "budget-synthetic-mosi": budget_table("synthetic-mosi")})
    hrlf = hrlf_present()
    fill(HERE / "hrlf.md", {**{f"{s}-{p}": hrlf_table(s, p) for s in hrlf for p in HRLF_PROTOCOLS.get(s, HRLF_COLUMNS)},
                            "hrlf-ablation": ablation_table()})
    fill(HERE / "corrkd.md", {f"target-{s}-{p}": target_table(HRLF_STUDIES[s][0], p)
                              for s in hrlf if s in ("hrlf-synthetic-mosi", "hrlf-synthetic-iemocap")
                              for p in HRLF_COLUMNS})
    fill(HERE / "corrkd.md", {f"tuning-{s}": tuning_table(s) for s in TUNING_STUDIES
                              if (HERE / s / "optuna.db").is_file() and (HERE / s / "runs").is_dir()})
    if all((HERE / d / "runs").is_dir() for d in TOKEN_STUDIES.values()):
        fill(HERE / "corrkd.md", {**{f"token-{p}": token_table(p) for p in TOKEN_COLUMNS},
                                  **{f"target-token-finetune-{p}": target_table([TOKEN_STUDIES["finetune"]], p)
                                     for p in TOKEN_COLUMNS}})
    if (HERE / "mosi-utterance-text" / "runs").is_dir():
        fill(HERE / "mosi-utterance-text" / "README.md", {f"text-{p}": text_table(p) for p in TEXT_COLUMNS})
    print("filled", ", ".join(present + hrlf))


if __name__ == "__main__":
    main()
