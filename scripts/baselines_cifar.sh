#!/usr/bin/env bash
# Standard baselines on CIFAR-10-LT / CIFAR-100-LT, ResNet-32, 200 epochs, the LDAM-DRW recipe
# (SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, warm-up 5, lr x0.01 at epochs 160 and 180).
# One line per table row and ratio; the selected images are the LDAM-DRW ones (--lt_selection
# shuffle, seed 0). The CE run is also scored tau-normalised and with post-hoc logit adjustment
# (tau 1 each: no retraining), which make_table shows as the rows ce+tau_norm1 and
# ce+posthoc_la_tau1. `make_table.py --paper` quotes the LDAM-DRW paper's CE and LDAM-DRW numbers
# (Cao et al. 2019, Table 2) at ratios 100 and 10; the other rows have none.
#
#   SEEDS="0 1 2" bash scripts/baselines_cifar.sh            # every row, three seeds
#   bash scripts/baselines_cifar.sh --gpu 0 --amp bf16       # extra flags go to every run
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-0}
ROOT_LOG=${ROOT_LOG:-log/baselines_cifar}

run() {  # method dataset imb_factor seed [extra flags]
  local method=$1 dataset=$2 imb_factor=$3 seed=$4
  shift 4
  python main.py --method "$method" --dataset "$dataset" --imb_factor "$imb_factor" --imb_type exp \
    --lt_selection shuffle --arch resnet32 --epochs 200 -b 128 --lr 0.1 --momentum 0.9 --wd 2e-4 \
    --warmup_epochs 5 --cos False --schedule 160 180 --lr_gamma 0.01 --aug standard \
    --seed "$seed" --out_dir "$ROOT_LOG/${method}_${dataset}_if${imb_factor}_seed${seed}" "$@"
}

for seed in $SEEDS; do
  for dataset in cifar10 cifar100; do
    for imb_factor in 0.01 0.02 0.1; do
      run ce               "$dataset" "$imb_factor" "$seed" --tau_norm 1.0 --posthoc_tau 1.0 "$@"  # CE (+ tau-norm, post-hoc LA)
      run ldam_drw         "$dataset" "$imb_factor" "$seed" --drw_epoch 160 --ldam_max_margin 0.5 --ldam_scale 30 "$@"  # LDAM-DRW
      run logit_adjust     "$dataset" "$imb_factor" "$seed" --la_tau 1.0 "$@"  # logit-adjusted loss
      run balanced_softmax "$dataset" "$imb_factor" "$seed" "$@"   # balanced softmax
    done
  done
done
