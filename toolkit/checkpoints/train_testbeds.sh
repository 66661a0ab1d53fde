#!/usr/bin/env bash
# Train the shipped test beds into toolkit/checkpoints: weights (fp16 safetensors) and cards.
# Usage: toolkit/checkpoints/train_testbeds.sh [cifar10|shapes]... [-- extra `prtk train-testbed` options]
# Takes about 45 min per test bed on 2 CPU cores (minutes on a GPU: pass -- --device cuda); resumes if interrupted.
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${PRTK_DATA_DIR:-../shared/data}
prtk=${PRTK:-.venv/bin/prtk}
beds=() extra=()
while (($#)); do
    if [[ $1 == -- ]]; then shift; extra=("$@"); break; fi
    beds+=("$1"); shift
done
((${#beds[@]})) || beds=(cifar10 shapes)
for bed in "${beds[@]}"; do
    case $bed in
        cifar10)
            mkdir -p out/testbed-data
            for split in train test; do
                [[ -d out/testbed-data/$split ]] || tar -xf "$data/cifar10/cifar10-$split.tar" -C out/testbed-data
            done
            "$prtk" train-testbed prtk-testbed-cifar10 --train-data out/testbed-data/train \
                --test-data out/testbed-data/test --out toolkit/checkpoints "${extra[@]}" ;;
        shapes)
            "$prtk" train-testbed prtk-testbed-shapes --out toolkit/checkpoints "${extra[@]}" ;;
        *) echo "train_testbeds.sh: error: unknown test bed '$bed' (cifar10 or shapes)" >&2; exit 2 ;;
    esac
done
