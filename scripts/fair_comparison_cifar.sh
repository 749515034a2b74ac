#!/usr/bin/env bash
# Every method under one protocol: CIFAR-10-LT / CIFAR-100-LT (ratio 100), ResNet-32, 200 epochs,
# the same LDAM-DRW image subset, a 20-per-class validation split that chooses best.pth for all
# of them, and the last-epoch number reported first. Method-specific hyper-parameters stay at
# their papers' values; the backbone, epochs, data and selection rule are what is equalised.
#
#   SEEDS="0 1 2" bash scripts/fair_comparison_cifar.sh --amp bf16
#   python scripts/make_table.py log/fair_comparison --plot fair.png
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-0}
ROOT_LOG=${ROOT_LOG:-log/fair_comparison}
COMMON=(--imb_factor 0.01 --imb_type exp --lt_selection shuffle --lt_seed 0 --arch resnet32 --epochs 200
        --val_per_class 20 --select_on val)

for seed in $SEEDS; do
  for dataset in cifar10 cifar100; do
    out() { echo "$ROOT_LOG/$1_${dataset}_seed${seed}"; }
    for method in ce focal ldam_drw cb_reweight logit_adjust balanced_softmax; do
      python main.py --method "$method" --dataset "$dataset" "${COMMON[@]}" --seed "$seed" --out_dir "$(out "$method")" "$@"
    done
    python main.py --method bccl --dataset "$dataset" "${COMMON[@]}" --temp 0.1 --lr 0.15 --use-norm True \
      --wd 5e-4 --cos True -b 128 --feat_dim 128 --seed "$seed" --out_dir "$(out bccl)" "$@"
    python train_LCSL.py --dataset "$dataset" "${COMMON[@]}" --batch_size 64 --alpha 1. --beta 1. --lr 0.01 \
      --weight_decay 5e-3 --lambda_init 0.5 --seed "$seed" --out_dir "$(out lcsl)" "$@"
    python main.py --method rotation --dataset "$dataset" "${COMMON[@]}" --seed "$seed" --out_dir "$(out rotation)" "$@"
    python main.py --method ce --dataset "$dataset" "${COMMON[@]}" --pretrained_model "$(out rotation)" \
      --seed "$seed" --out_dir "$(out ce_ssp)" "$@"
  done
done
