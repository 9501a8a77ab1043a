#!/usr/bin/env bash
# Rebuilds the published studies in results/ from scratch (or resumes them: finished runs are skipped).
# Usage: bash results/regenerate.sh [STAGE[@PROTOCOL]...]
#   stages: real real-slow synthetic-corrkd synthetic-baselines synthetic-heavy corrkd-diagnostic
#           synthetic-mosi-long tables
#   (default: all, in that order). STAGE@PROTOCOL runs a synthetic stage for one protocol only, so two stages can
#   run side by side: WORKERS=1 bash results/regenerate.sh synthetic-corrkd@modality-missing &
#                     WORKERS=1 bash results/regenerate.sh synthetic-corrkd@random-missing
# CPU only: WORKERS parallel runs (default 2), one torch thread each. Epoch caps and seeds per study are below and
# in results/README.md. CorrKD's teacher is trained once per seed and dataset and shared through <study>/cache.
set -euo pipefail
cd "$(dirname "$0")/.."
MOSI_REAL=mmsa:../shared/data/mosi-utterance/mosi_utterance.pkl
FIVE=${SEEDS:-1111,1112,1113,1114,1115}  # SEEDS reorders (e.g. reversed for a second queue)
THREE=1111,1112,1113
PROTOCOLS=(modality-missing random-missing)
CHEAP=late-fusion,gcnet,smil,self-mm,lmf,mctn,ef-lstm,transm,misa
HEAVY=(tfn cubemlp dmd mult)
RUN=(msabench run --quiet --workers "${WORKERS:-2}" --threads 1)
# the published CorrKD runs predate CorrKD's distill_scale switch: they distil the raw h (methods/corrkd.md)
LEGACY=(--set distill_scale=legacy)

corrkd_variants() {  # $1 = out dir, rest = common options: the CorrKD comparisons of the paper's ablation table
  local out=$1; shift
  set -- "$@" "${LEGACY[@]}"
  "${RUN[@]}" --out "$out" --method corrkd "$@"
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag teacher --set predict_with=teacher
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag no-distill --set scd=false --set cpd=false --set rcd=off
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag no-scd --set scd=false
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag no-cpd --set cpd=false
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag rcd-kl --set rcd=kl
}

protocols() { if [ -n "${1:-}" ]; then echo "$1"; else echo "${PROTOCOLS[@]}"; fi; }

stage_real() {  # real CMU-MOSI, utterance level: 5 seeds, method default epochs; cheap methods first
  local common=(--out results/mosi-utterance --dataset "$MOSI_REAL" --seeds "$FIVE")
  corrkd_variants results/mosi-utterance --dataset "$MOSI_REAL" --seeds "$FIVE" --protocol modality-missing
  "${RUN[@]}" "${common[@]}" --protocol modality-missing --method late-fusion,lmf,misa,ef-lstm,self-mm,mctn,transm,smil,gcnet,cubemlp
  corrkd_variants results/mosi-utterance --dataset "$MOSI_REAL" --seeds "$FIVE" --protocol random-missing
  "${RUN[@]}" "${common[@]}" --protocol random-missing --method late-fusion,lmf,misa,ef-lstm,self-mm,mctn,transm,smil,gcnet,cubemlp
}

stage_real_slow() {  # the heavy models on the real set (TFN's 35M-weight fusion layer, MulT, DMD)
  local common=(--out results/mosi-utterance --dataset "$MOSI_REAL" --seeds "$FIVE")
  for p in modality-missing random-missing; do
    "${RUN[@]}" "${common[@]}" --protocol "$p" --method ef-lstm,mult,dmd
  done
  for p in modality-missing random-missing; do
    "${RUN[@]}" "${common[@]}" --protocol "$p" --method tfn
  done
}

stage_synthetic_corrkd() {  # both synthetic sets: CorrKD, its comparisons and late fusion; 5 seeds, 6 epochs per stage
  local p
  for p in $(protocols "${1:-}"); do
    for ds in synthetic-mosi synthetic-iemocap; do
      corrkd_variants "results/$ds" --dataset "$ds" --seeds "$FIVE" --epochs 6 --protocol "$p"
      "${RUN[@]}" --out "results/$ds" --dataset "$ds" --seeds "$FIVE" --epochs 6 --protocol "$p" --method late-fusion
    done
  done
}

stage_synthetic_baselines() {  # synthetic-mosi: every other method but the four slowest; 5 seeds, 6 epochs
  local p
  for p in $(protocols "${1:-}"); do
    "${RUN[@]}" --out results/synthetic-mosi --dataset synthetic-mosi --seeds "$FIVE" --epochs 6 --protocol "$p" \
      --method "$CHEAP"
  done
}

stage_synthetic_heavy() {  # synthetic-mosi: TFN, CubeMLP, DMD, MulT (minutes per run on one core); 5 seeds, 6 epochs
  local p m
  for m in "${HEAVY[@]}"; do
    for p in $(protocols "${1:-}"); do
      "${RUN[@]}" --out results/synthetic-mosi --dataset synthetic-mosi --seeds "$FIVE" --epochs 6 --protocol "$p" \
        --method "$m"
    done
  done
}

stage_corrkd_diagnostic() {  # is the loss scale why CorrKD trails its no-distillation student at 6 epochs? (corrkd.md)
  local common=(--out results/synthetic-mosi --dataset synthetic-mosi --seeds "$FIVE" --epochs 6
                --protocol modality-missing)
  "${RUN[@]}" "${common[@]}" --method corrkd --tag scd-0.1 --set lambda_scd=0.1 "${LEGACY[@]}"
}

stage_synthetic_mosi_long() {  # CorrKD and its no-distillation student with 20 epochs per stage (see results/README.md)
  local common=(--out results/synthetic-mosi --dataset synthetic-mosi --seeds "$THREE" --epochs 20
                --protocol modality-missing)
  "${RUN[@]}" "${common[@]}" --method corrkd --tag 20-epochs "${LEGACY[@]}"
  "${RUN[@]}" "${common[@]}" --method corrkd --tag no-distill-20-epochs --set scd=false --set cpd=false --set rcd=off "${LEGACY[@]}"
}

stage_tables() {
  for study in mosi-utterance synthetic-mosi synthetic-iemocap; do
    dir=results/$study
    [ -d "$dir/runs" ] || continue
    for fmt in csv md; do
      msabench leaderboard "$dir" --reference corrkd --baseline late-fusion --format "$fmt" --out "$dir/leaderboard.$fmt"
    done
    msabench plot heatmap "$dir" --out "$dir/figures" --format png,svg || true
    msabench plot curves "$dir" --out "$dir/figures" --format png,svg || true
  done
  # the static site (open results/site/index.html): tables with the published rows of msabench/reported/, figures,
  # provenance and commands
  msabench report results/mosi-utterance results/synthetic-mosi results/synthetic-iemocap --out results/site
  # publish each study's rows once (rows.csv.gz) instead of per-run rows.csv + results.csv; a resumed stage above
  # reads packed and new runs alike
  msabench pack results/mosi-utterance results/synthetic-mosi results/synthetic-iemocap
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(real real-slow synthetic-corrkd synthetic-baselines synthetic-heavy corrkd-diagnostic synthetic-mosi-long
                                tables)
for s in "${stages[@]}"; do
  name=${s%%@*}; arg=""; [ "$name" = "$s" ] || arg=${s#*@}
  "stage_${name//-/_}" $arg
done
