set -x
cd "$(dirname "$0")/../../.."
R=(msabench run --quiet --workers 2 --threads 1 --seeds 1111,1112,1113,1114,1115 --no-report)
O=results/hrlf/runs-synthetic-mosi-5seeds
for p in modality-missing random-missing; do
  "${R[@]}" --out $O --dataset synthetic-mosi --epochs 6 --protocol $p --method hrlf,corrkd,mmin
  "${R[@]}" --out $O --dataset synthetic-mosi --epochs 6 --protocol $p --method corrkd --tag no-distill --set scd=false --set cpd=false --set rcd=off
  "${R[@]}" --out $O --dataset synthetic-mosi --epochs 6 --protocol $p --method hrlf --tag no-distill --set hmi=false --set hal=false --set kl=false
done
# tenth session: HRLF's three ablations
for p in modality-missing random-missing; do for x in frf hmi hal; do
  "${R[@]}" --out $O --dataset synthetic-mosi --epochs 6 --protocol $p --method hrlf --tag no-$x --set $x=false
done; done
