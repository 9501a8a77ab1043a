#!/bin/bash
# issue #22, token-level part: CorrKD vs its no-distillation student vs the teacher on real CMU-MOSI with token-level
# text (mosi_utterance_bert.pkl: text = 50 frozen all-MiniLM-L6-v2 token states per utterance, the file's `text`),
# both protocols, 5 seeds, method defaults, one CPU thread. The teacher is shared through the run cache.
set -ex
cd "$(dirname "$0")/../.."
OUT=${OUT:-results/corrkd-token-mosi}
DATA=mmsa:../shared/data/mosi-utterance/mosi_utterance_bert.pkl
for P in modality-missing random-missing; do
  R=(msabench run --method corrkd --protocol $P --dataset $DATA --seeds 1111,1112,1113,1114,1115
     --threads 1 --out "$OUT" --no-report --quiet)
  "${R[@]}" --tag distill
  "${R[@]}" --tag no-distill --set scd=false --set cpd=false --set rcd=off
  "${R[@]}" --tag teacher --set predict_with=teacher
done
