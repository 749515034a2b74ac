#!/usr/bin/env bash
# BCCL on CIFAR-10-LT and CIFAR-100-LT with ResNet-32, 200 epochs: the BCCL README command, with
# --imb_factor set per row (imbalance ratio 100 / 50 / 10).
#
# The number after each row is the top-1 (%) of the BCCL README (ALGORITHMS.md 2.10). Those come
# from the best epoch on the test set; compare them with results.json's "best_on_test", and
# report "last" (last epoch) as the clean number.
#
#   SEEDS="42 1 2" bash scripts/bccl_cifar.sh                # every row, three seeds
#   bash scripts/bccl_cifar.sh --gpu 0 --amp fp16            # extra flags go to every run
#
# The reference trained under fp16 autocast; these rows run in fp32 unless --amp fp16 is given.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-42}
ROOT_LOG=${ROOT_LOG:-log/bccl_cifar}

bccl() {  # dataset imb_factor run_name seed [extra flags]
  local dataset=$1 imb_factor=$2 name=$3 seed=$4
  shift 4
  python main.py --dataset "$dataset" --imb_factor "$imb_factor" \
    --arch resnet32 --epochs 200 --temp 0.1 --lr 0.15 --use-norm True --wd 5e-4 --cos True \
    -b 128 --feat_dim 128 --tb_save \
    --seed "$seed" --out_dir "$ROOT_LOG/${name}_seed${seed}" "$@"
}

for seed in $SEEDS; do
  bccl cifar10  0.01 cifar10_r100  "$seed" "$@"  # paper: 85.22
  bccl cifar10  0.02 cifar10_r50   "$seed" "$@"  # paper: 88.14
  bccl cifar10  0.1  cifar10_r10   "$seed" "$@"  # paper: 91.92
  bccl cifar100 0.01 cifar100_r100 "$seed" "$@"  # paper: 52.55
  bccl cifar100 0.02 cifar100_r50  "$seed" "$@"  # paper: 56.89
  bccl cifar100 0.1  cifar100_r10  "$seed" "$@"  # paper: 65.3
done
