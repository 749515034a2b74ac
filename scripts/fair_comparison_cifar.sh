#!/usr/bin/env bash
# Every method under one protocol: CIFAR-10-LT / CIFAR-100-LT (ratio 100), ResNet-32, 200 epochs,
# the same LDAM-DRW image subset, a 20-per-class validation split that chooses best.pth for all
# of them, and the last-epoch number reported first. Method-specific hyper-parameters stay at
# their papers' values; the backbone, epochs, data and selection rule are what is equalised.
# The 10,000 test images are scored every 10 epochs, at each validation improvement and after the
# last epoch (--test_interval): the last-epoch and validation-selected numbers are the same, a CPU
# run is ~20% shorter (best_on_test, which this protocol does not report, is taken over those epochs).
#
#   SEEDS="0 1 2" bash scripts/fair_comparison_cifar.sh --amp bf16
#   DATASETS=cifar10 METHODS="ce ldam_drw bccl lcsl ce_ssp" bash scripts/fair_comparison_cifar.sh --resume auto
#   python scripts/make_table.py log/fair_comparison --plot fair.png
#
# DATASETS and METHODS pick rows (ce_ssp needs the rotation run of the same seed first); with
# --resume auto a re-run continues unfinished runs and leaves finished ones as they are.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-0}
DATASETS=${DATASETS:-"cifar10 cifar100"}
METHODS=${METHODS:-"ce focal ldam_drw cb_reweight logit_adjust balanced_softmax bccl lcsl rotation ce_ssp"}
ROOT_LOG=${ROOT_LOG:-log/fair_comparison}
COMMON=(--imb_factor 0.01 --imb_type exp --lt_selection shuffle --lt_seed 0 --arch resnet32 --epochs 200
        --val_per_class 20 --select_on val --test_interval 10)
wanted() { [[ " $METHODS " == *" $1 "* ]]; }

for seed in $SEEDS; do
  for dataset in $DATASETS; do
    out() { echo "$ROOT_LOG/$1_${dataset}_seed${seed}"; }
    for method in ce focal ldam_drw cb_reweight logit_adjust balanced_softmax; do
      if wanted "$method"; then
        python main.py --method "$method" --dataset "$dataset" "${COMMON[@]}" --seed "$seed" --out_dir "$(out "$method")" "$@"
      fi
    done
    if wanted bccl; then
      python main.py --method bccl --dataset "$dataset" "${COMMON[@]}" --temp 0.1 --lr 0.15 --use-norm True \
        --wd 5e-4 --cos True -b 128 --feat_dim 128 --seed "$seed" --out_dir "$(out bccl)" "$@"
    fi
    if wanted lcsl; then
      python train_LCSL.py --dataset "$dataset" "${COMMON[@]}" --batch_size 64 --alpha 1. --beta 1. --lr 0.01 \
        --weight_decay 5e-3 --lambda_init 0.5 --seed "$seed" --out_dir "$(out lcsl)" "$@"
    fi
    if wanted rotation || wanted ce_ssp; then
      python main.py --method rotation --dataset "$dataset" "${COMMON[@]}" --seed "$seed" --out_dir "$(out rotation)" "$@"
    fi
    if wanted ce_ssp; then
      python main.py --method ce --dataset "$dataset" "${COMMON[@]}" --pretrained_model "$(out rotation)" \
        --seed "$seed" --out_dir "$(out ce_ssp)" "$@"
    fi
  done
done
