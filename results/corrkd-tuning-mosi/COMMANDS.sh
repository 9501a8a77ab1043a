#!/bin/bash
# issue #22: equal-budget tuning of CorrKD and its no-distillation student on real MOSI (utterance), modality-missing
set -x
cd "$(dirname "$0")/../.."
T=(msabench tune --method corrkd --protocol modality-missing
   --dataset mmsa:../shared/data/mosi-utterance/mosi_utterance.pkl --trials 20 --out results/corrkd-tuning-mosi
   --final-seeds 1111,1112,1113,1114,1115 --threads 1 --quiet)
"${T[@]}" --study mosi-mm-distill
"${T[@]}" --study mosi-mm-nodistill --set scd=false --set cpd=false --set rcd=off
