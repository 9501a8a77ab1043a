set -x
cd "$(dirname "$0")/../../.."
# tenth session: does the default HRLF's collapse on synthetic-mosi persist at its default epochs (50 per stage,
# patience 8) instead of the 6 of runs-synthetic-mosi-5seeds? modality-missing; and HRLF without HAL beside it.
O=results/hrlf/runs-synthetic-mosi-default-epochs
msabench run --quiet --workers 1 --threads 1 --seeds 1111 --no-report --out $O --dataset synthetic-mosi --protocol modality-missing --method hrlf
R=(msabench run --quiet --workers 2 --threads 1 --no-report --out $O --dataset synthetic-mosi --protocol modality-missing)
"${R[@]}" --seeds 1112,1113,1114,1115 --method hrlf
"${R[@]}" --seeds 1111,1112,1113,1114,1115 --method hrlf --tag no-hal --set hal=false
