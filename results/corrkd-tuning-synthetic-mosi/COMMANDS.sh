#!/bin/bash
# issue #22: equal-budget tuning of CorrKD and its no-distillation student on synthetic-mosi, modality-missing.
# Same budget for both: 20 trials (seeded TPE, seed 1111), epoch cap 6 per stage (the synthetic-mosi studies'
# --epochs 6), Hyperband pruning, validation split only; then 5 fresh seeds of each best configuration on the test
# split. One CPU thread.
set -x
cd "$(dirname "$0")/../.."
T=(msabench tune --method corrkd --protocol modality-missing --dataset synthetic-mosi --trials 20 --epochs 6
   --out results/corrkd-tuning-synthetic-mosi --final-seeds 1111,1112,1113,1114,1115 --threads 1 --quiet)
"${T[@]}" --study smosi-mm-distill
"${T[@]}" --study smosi-mm-nodistill --set scd=false --set cpd=false --set rcd=off
msabench leaderboard results/corrkd-tuning-synthetic-mosi --metric Non0_F1,MAE --format md --out results/corrkd-tuning-synthetic-mosi/leaderboard.md
msabench pack results/corrkd-tuning-synthetic-mosi
python results/summarise.py
