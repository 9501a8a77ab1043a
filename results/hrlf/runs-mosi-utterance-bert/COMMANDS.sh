set -x
cd "$(dirname "$0")/../../.."
D=mmsa:../shared/data/mosi-utterance/mosi_utterance_bert.pkl
R=(msabench run --quiet --workers 1 --threads 1 --out results/hrlf/runs-mosi-utterance-bert --dataset $D --protocol modality-missing --no-report)
for S in 1111 1112 1113 1114 1115; do
  "${R[@]}" --seeds $S --method hrlf,mmin
  "${R[@]}" --seeds $S --method hrlf --tag no-distill --set hmi=false --set hal=false --set kl=false
done
msabench run --quiet --workers 1 --threads 1 --out results/hrlf/runs-mosi-utterance-bert --dataset $D --protocol modality-missing --no-report --seeds 1111,1112,1113,1114,1115 --method hrlf --tag lhal01 --set lambda_hal=0.1
# ninth session: random-missing (two workers, one thread each: same numbers as --workers 1 --threads 1)
R=(msabench run --quiet --workers 2 --threads 1 --seeds 1111,1112,1113,1114,1115 --out results/hrlf/runs-mosi-utterance-bert --dataset $D --protocol random-missing --no-report)
"${R[@]}" --method hrlf,mmin
"${R[@]}" --method hrlf --tag no-distill --set hmi=false --set hal=false --set kl=false
"${R[@]}" --method hrlf --tag lhal01 --set lambda_hal=0.1
# tenth session: HRLF's three ablations, both protocols (two workers, one thread each)
for P in modality-missing random-missing; do
  R=(msabench run --quiet --workers 2 --threads 1 --seeds 1111,1112,1113,1114,1115 --out results/hrlf/runs-mosi-utterance-bert --dataset $D --protocol $P --no-report)
  for x in frf hmi hal; do "${R[@]}" --method hrlf --tag no-$x --set $x=false; done
done
