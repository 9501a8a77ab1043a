#!/usr/bin/env bash
# Rebuilds the published studies in results/ from scratch (or resumes them: finished runs are skipped).
# Usage: bash results/regenerate.sh [STAGE...]   stages: real synthetic-mosi synthetic-iemocap real-slow tables
# (default: all, in that order)
# CPU only (2 cores, --workers 2). Epoch caps and seeds per study are below and in results/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MOSI_REAL=mmsa:../shared/data/mosi-utterance/mosi_utterance.pkl
FIVE=1111,1112,1113,1114,1115
THREE=1111,1112,1113
BASELINES=late-fusion,tfn,lmf,misa,ef-lstm,mult,self-mm,cubemlp,dmd,mctn,transm,smil,gcnet
RUN=(msabench run --quiet --workers 2)

corrkd_variants() {  # $1 = out dir, rest = common options: the CorrKD comparisons of the paper's ablation table
  local out=$1; shift
  "${RUN[@]}" --out "$out" --method corrkd "$@"
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag no-distill --set scd=false --set cpd=false --set rcd=off
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag teacher --set predict_with=teacher
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag no-scd --set scd=false
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag no-cpd --set cpd=false
  "${RUN[@]}" --out "$out" --method corrkd "$@" --tag rcd-kl --set rcd=kl
}

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

stage_synthetic_mosi() {  # synthetic-mosi, CPU budget: 3 seeds, 6 epochs per stage, modality-missing first
  local common=(--out results/synthetic-mosi --dataset synthetic-mosi --seeds "$THREE" --epochs 6)
  "${RUN[@]}" "${common[@]}" --protocol modality-missing --method corrkd,late-fusion
  "${RUN[@]}" "${common[@]}" --protocol modality-missing --method corrkd --tag no-distill \
    --set scd=false --set cpd=false --set rcd=off
  "${RUN[@]}" "${common[@]}" --protocol modality-missing --method corrkd --tag teacher --set predict_with=teacher
  "${RUN[@]}" "${common[@]}" --protocol modality-missing --method lmf,misa,ef-lstm,self-mm,mctn,transm,smil,gcnet
  "${RUN[@]}" "${common[@]}" --protocol random-missing --method corrkd,late-fusion
  "${RUN[@]}" "${common[@]}" --protocol random-missing --method corrkd --tag no-distill \
    --set scd=false --set cpd=false --set rcd=off
  "${RUN[@]}" "${common[@]}" --protocol modality-missing --method cubemlp,mult,dmd,tfn
}

stage_synthetic_iemocap() {  # synthetic-iemocap: CorrKD, its no-distillation student, late fusion; 3 seeds, 6 epochs
  local common=(--out results/synthetic-iemocap --dataset synthetic-iemocap --seeds "$THREE" --epochs 6)
  "${RUN[@]}" "${common[@]}" --protocol modality-missing --method corrkd,late-fusion
  "${RUN[@]}" "${common[@]}" --protocol modality-missing --method corrkd --tag no-distill \
    --set scd=false --set cpd=false --set rcd=off
}

stage_synthetic_mosi_long() {  # CorrKD and its no-distillation student with 20 epochs per stage (see results/README.md)
  local common=(--out results/synthetic-mosi --dataset synthetic-mosi --seeds "$THREE" --epochs 20
                --protocol modality-missing)
  "${RUN[@]}" "${common[@]}" --method corrkd --tag 20-epochs
  "${RUN[@]}" "${common[@]}" --method corrkd --tag no-distill-20-epochs --set scd=false --set cpd=false --set rcd=off
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
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(real synthetic-mosi synthetic-iemocap real-slow tables)
for s in "${stages[@]}"; do "stage_${s//-/_}"; done
