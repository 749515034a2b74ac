#!/usr/bin/env bash
# BCCL on CIFAR-10-LT and CIFAR-100-LT with ResNet-32, 200 epochs: the BCCL README command, with
# --imb_factor per row (imbalance ratio 100 / 50 / 10) and the LDAM-DRW image selection BCCL uses
# (--lt_selection shuffle, seed 0). Its defaults are explicit here too: views sim-sim (AutoAugment
# + Cutout, SimCLR), warm-up 10, alpha 1, beta 1, ceta 0.1, queue 100, 5 centroids, seed 42.
#
# The number after each row is the top-1 (%) of the BCCL README (docs/bccl.md#reported-results). Those come
# from the best epoch on the test set; compare them with results.json's "best_on_test", and
# report "last" (last epoch) as the clean number.
#
#   SEEDS="42 1 2" bash scripts/bccl_cifar.sh                # every row, three seeds
#   bash scripts/bccl_cifar.sh --gpu 0 --amp fp16            # extra flags go to every run
#
# The reference trained under fp16 autocast with loss scaling; these rows take --amp auto (bf16 on
# GPUs that have it, fp16 with loss scaling on older ones, fp32 on most CPUs): add --amp fp16 to match it.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-42}
ROOT_LOG=${ROOT_LOG:-log/bccl_cifar}

bccl() {  # dataset imb_factor seed [extra flags]
  local dataset=$1 imb_factor=$2 seed=$3
  shift 3
  python main.py --dataset "$dataset" --imb_factor "$imb_factor" --imb_type exp --lt_selection shuffle \
    --arch resnet32 --epochs 200 --temp 0.1 --lr 0.15 --use-norm True --wd 5e-4 --cos True \
    -b 128 --feat_dim 128 --tb_save \
    --method bccl --cl_views sim-sim --warmup_epochs 10 --alpha 1.0 --beta 1.0 --ceta 0.1 \
    --queue_size 100 --centroid 5 \
    --seed "$seed" --out_dir "$ROOT_LOG/bccl_${dataset}_if${imb_factor}_seed${seed}" "$@"
}

for seed in $SEEDS; do
  bccl cifar10  0.01 "$seed" "$@"  # paper: 85.22
  bccl cifar10  0.02 "$seed" "$@"  # paper: 88.14
  bccl cifar10  0.1  "$seed" "$@"  # paper: 91.92
  bccl cifar100 0.01 "$seed" "$@"  # paper: 52.55
  bccl cifar100 0.02 "$seed" "$@"  # paper: 56.89
  bccl cifar100 0.1  "$seed" "$@"  # paper: 65.3
done
