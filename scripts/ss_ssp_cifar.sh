#!/usr/bin/env bash
# Self-supervised pre-training (rotation) rows of Yang & Xu, "Rethinking the Value of Labels for
# Improving Class-Imbalanced Learning" (NeurIPS 2020): ResNet-32, 200 epochs, CIFAR-10-LT and
# CIFAR-100-LT at rho = 10 / 50 / 100. Paper numbers are top-1 ERROR (%) from the authors' README
# (docs/semi_self.md#reported-results).
#
#   bash scripts/ss_ssp_cifar.sh [extra main.py flags]        SEEDS="0 1 2" DATA=./data OUT=log/ss_ssp
#
# Stage 1: rotation prediction on the long-tailed training images (no labels), the supervised CIFAR
# recipe, --arch resnet32 (the README's pretrain_rot.py command defaulted to a ResNet-50 that
# crashes on 32 x 32 inputs). Stage 2: CE from the stage-1 backbone (last.pth), with uniform
# sampling ("CE(Uniform)") or the reference's Resample rule ("CE(Balanced)": effective-number
# weighted sampling, beta 0.9999). Extra arguments go to every main.py call.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-"0"}
DATA=${DATA:-./data}
OUT=${OUT:-log/ss_ssp}
RECIPE=(--arch resnet32 --epochs 200 -b 128 --lr 0.1 --momentum 0.9 --wd 2e-4 --warmup_epochs 5
        --schedule 160 180 --lr_gamma 0.01 --aug standard)

row() {  # dataset imb_factor seed
  local run="$OUT/$1_ir$2_s$3"
  python main.py --method rotation --dataset "$1" --data_root "$DATA" --imb_type exp --imb_factor "$2" \
    --lt_seed 0 "${RECIPE[@]}" --seed "$3" --out_dir "${run}_rotation" "${@:4}"
  python main.py --dataset "$1" --data_root "$DATA" --imb_type exp --imb_factor "$2" --lt_seed 0 \
    --loss_type CE --train_rule None --pretrained_model "${run}_rotation/last.pth" "${RECIPE[@]}" \
    --seed "$3" --out_dir "${run}_ce_uniform_ssp" "${@:4}"
  python main.py --dataset "$1" --data_root "$DATA" --imb_type exp --imb_factor "$2" --lt_seed 0 \
    --loss_type CE --train_rule Resample --pretrained_model "${run}_rotation/last.pth" "${RECIPE[@]}" \
    --seed "$3" --out_dir "${run}_ce_balanced_ssp" "${@:4}"
}

for seed in $SEEDS; do
  # CIFAR-10-LT           CE(Uniform)+SSP  CE(Balanced)+SSP
  row cifar10 0.1 "$seed" "$@"    # rho=10     12.28            11.57
  row cifar10 0.02 "$seed" "$@"   # rho=50     21.80            19.60
  row cifar10 0.01 "$seed" "$@"   # rho=100    26.50            23.47
  # CIFAR-100-LT
  row cifar100 0.1 "$seed" "$@"   # rho=10     42.93            41.94
  row cifar100 0.02 "$seed" "$@"  # rho=50     54.96            52.91
  row cifar100 0.01 "$seed" "$@"  # rho=100    59.60            56.94
done
