#!/usr/bin/env bash
# README's first command: what long-tailed training does, in two to five minutes on two CPU cores.
# Cross-entropy and balanced softmax train side by side on the bundled sample (real CIFAR-10
# images, made long-tailed with ratio 100: 500 ... 5 images per class), each choosing its
# best.pth on a balanced 20-per-class validation split; the table then shows top-1 and the
# many / medium / few-shot accuracy of both. Cross-entropy learns the head classes and next to
# nothing of the tail; balanced softmax trades a little head accuracy for the tail.
#
#   bash scripts/quickstart.sh [OUT_DIR] [extra main.py flags...]
#
# Run it again and it prints the table of the finished runs (--resume auto) without training.
set -euo pipefail
OUT=${1:-runs/quickstart}
[[ $OUT == /* ]] || OUT="$PWD/$OUT"  # relative to where it was called from, not the repository
cd "$(dirname "$0")/.."
EXTRA=("${@:2}")
# 20 epochs at lr 0.05 (cosine after one warm-up epoch) converge further on its 1,236 images than
# the 200-epoch CIFAR recipe's first 20 epochs would.
COMMON=(--dataset cifar10_sample --imb_factor 0.01 --arch resnet32 --epochs 20 --lr 0.05 --warmup_epochs 1
        --cos True --val_per_class 20 --seed 0 --workers 0 --progress False --resume auto)
# The two runs share the cores: one thread each trains faster together than two threads each.
CORES=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
THREADS=$(( CORES / 2 > 1 ? CORES / 2 : 1 ))

mkdir -p "$OUT"
pids=()
# Background jobs of a script ignore Ctrl-C, so stop them when the script is stopped: otherwise
# they would go on training, holding their run folders.
trap 'kill -TERM ${pids[@]+"${pids[@]}"} 2>/dev/null; wait; exit 130' INT TERM
for method in ce balanced_softmax; do
  # ${EXTRA[@]+...}: an empty array under `set -u` is an error in bash before 4.4 (macOS).
  OMP_NUM_THREADS=$THREADS python main.py --method "$method" "${COMMON[@]}" --out_dir "$OUT/$method" \
    ${EXTRA[@]+"${EXTRA[@]}"} > "$OUT/$method.out" 2>&1 &
  pids+=($!)
done
echo "training ce and balanced_softmax on the bundled sample (2 to 5 minutes; logs in $OUT/*.out)"
failed=0
for i in 0 1; do
  if ! wait "${pids[$i]}"; then
    method=$([[ $i == 0 ]] && echo ce || echo balanced_softmax)
    echo "quickstart: the $method run failed; the end of $OUT/$method.out:" >&2
    tail -n 5 "$OUT/$method.out" >&2
    failed=1
  fi
done
(( failed == 0 )) || exit 1
python scripts/make_table.py "$OUT"
echo "each run folder holds config.json, log.txt, curves, last.pth / best.pth and results.json;"
echo "evaluate one again with: python test.py --path $OUT/ce"
