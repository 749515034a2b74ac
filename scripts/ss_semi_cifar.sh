#!/usr/bin/env bash
# Semi-supervised rows of Yang & Xu, "Rethinking the Value of Labels for Improving Class-Imbalanced
# Learning" (NeurIPS 2020): CE + pseudo-labelled D_U, ResNet-32, rho = 50, |D_U| = 5 x |D_L|.
# Paper numbers are top-1 ERROR (%) from the authors' README (docs/semi_self.md#reported-results).
#
#   bash scripts/ss_semi_cifar.sh [extra main.py flags]        SEEDS="0 1 2" DATA=./data OUT=log/ss_semi
#
# Three steps per dataset and seed: (1) a CE base classifier on D_L, (2) pseudo-labels for the pool,
# (3) CE from scratch on D_L + D_U for each rho_U. Extra arguments go to every main.py call.
# Pools: CIFAR-10 uses $DATA/ti_80M_selected.pickle when it exists (the paper's 80M-TinyImages
# selection, no longer distributed), otherwise the CIFAR-10 training images the LT cut left out:
# that pool has NO class-0 image and few of the next classes, so rho_U cannot be matched and the
# numbers are not the paper's. SVHN-LT uses SVHN's extra split, exactly as the paper.
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-"0"}
DATA=${DATA:-./data}
SVHN_DATA=${SVHN_DATA:-$DATA/svhn}
OUT=${OUT:-log/ss_semi}
RHO_U_FACTORS=("1.0" "0.04" "0.02" "0.01")   # rho_U = 1, 25, 50, 100

# Step 1: the supervised recipe of the reference train.py (docs/baselines.md#the-ldam-drw-recipe).
base() {  # dataset data_root seed
  python main.py --dataset "$1" --data_root "$2" --imb_type exp --imb_factor 0.02 --lt_seed 0 \
    --arch resnet32 --loss_type CE --train_rule None --epochs 200 -b 128 --lr 0.1 --momentum 0.9 \
    --wd 2e-4 --warmup_epochs 5 --schedule 160 180 --lr_gamma 0.01 --aug standard --seed "$3" \
    --out_dir "$OUT/$1_base_s$3" "${@:4}"
}

# Step 3: train_semi.py's recipe (batch 256) on D_L + D_U.
semi() {  # dataset data_root seed pseudo_file imb_factor_unlabel
  python main.py --dataset "$1" --data_root "$2" --imb_type exp --imb_factor 0.02 --lt_seed 0 \
    --unlabeled "$4" --imb_factor_unlabel "$5" --unlabel_size_factor 5 \
    --arch resnet32 --loss_type CE --train_rule None --epochs 200 -b 256 --lr 0.1 --momentum 0.9 \
    --wd 2e-4 --warmup_epochs 5 --schedule 160 180 --lr_gamma 0.01 --aug standard --seed "$3" \
    --out_dir "$OUT/$1_semi_u$5_s$3" "${@:6}"
}

for seed in $SEEDS; do
  # ---- CIFAR-10-LT, rho = 50 -----------------------------------------------------------------------
  # CE+D_U error: rho_U=1 16.79 | rho_U=25 16.88 | rho_U=50 18.36 | rho_U=100 19.94
  base cifar10 "$DATA" "$seed" "$@"
  pool=leftover
  [[ -f "$DATA/ti_80M_selected.pickle" ]] && pool="$DATA/ti_80M_selected.pickle"
  python scripts/gen_pseudolabels.py --path "$OUT/cifar10_base_s$seed" --which last --pool "$pool" \
    --out "$OUT/cifar10_pseudo_s$seed.npz" --force
  for factor in "${RHO_U_FACTORS[@]}"; do
    semi cifar10 "$DATA" "$seed" "$OUT/cifar10_pseudo_s$seed.npz" "$factor" "$@"
  done

  # ---- SVHN-LT, rho = 50 (n_max 1000, digit 0 last) ------------------------------------------------
  # CE+D_U error: rho_U=1 13.07 | rho_U=25 13.36 | rho_U=50 13.16 | rho_U=100 14.54
  base svhn "$SVHN_DATA" "$seed" "$@"
  python scripts/gen_pseudolabels.py --path "$OUT/svhn_base_s$seed" --which last --pool svhn_extra \
    --pool_root "$SVHN_DATA" --download True --out "$OUT/svhn_pseudo_s$seed.npz" --force
  for factor in "${RHO_U_FACTORS[@]}"; do
    semi svhn "$SVHN_DATA" "$seed" "$OUT/svhn_pseudo_s$seed.npz" "$factor" "$@"
  done
done
