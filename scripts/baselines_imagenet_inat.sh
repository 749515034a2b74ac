#!/usr/bin/env bash
# Standard baselines on ImageNet-LT and iNaturalist 2018 (ResNet-50), 90 epochs, cosine schedule,
# the decoupling / semi-self stage-1 recipe (docs/semi_self.md#stage-2-on-imagenet-lt-and-inaturalist:
# batch 128 on ImageNet-LT and 100 on iNat, lr 0.2, wd 5e-4 (iNat 1e-4), no ColorJitter on iNat),
# so each baseline pairs with its +SSP row of ss_ssp_imagenet_inat.sh. IMAGENET_ARCH=resnext50
# gives the ResNeXt-50 rows that LCSL and BCL compare against.
# Selection is on the validation list (ImageNet_LT_val.txt); iNat has none apart from its val list,
# which is also its test set, so its best-epoch number is test-selected and labelled as such.
#
#   DATA=/data/imagenet SPLITS=/data/ImageNet_LT bash scripts/baselines_imagenet_inat.sh --gpu 0,1,2,3
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-0}
ROOT_LOG=${ROOT_LOG:-log/baselines_large}
IMAGENET=${IMAGENET:-./data/imagenet}
IMAGENET_SPLITS=${IMAGENET_SPLITS:-./data/ImageNet_LT}
INAT=${INAT:-./data/inat2018}
INAT_SPLITS=${INAT_SPLITS:-./data/iNaturalist18}
IMAGENET_ARCH=${IMAGENET_ARCH:-resnet50}

for seed in $SEEDS; do
  for method in ce ldam_drw logit_adjust balanced_softmax; do
    python main.py --method "$method" --dataset imagenet_lt --data_root "$IMAGENET" --split_dir "$IMAGENET_SPLITS" \
      --arch "$IMAGENET_ARCH" --epochs 90 -b 128 --lr 0.2 --momentum 0.9 --wd 5e-4 --warmup_epochs 0 --cos True \
      --aug standard --drw_epoch 60 --seed "$seed" --out_dir "$ROOT_LOG/${method}_imagenet_lt_${IMAGENET_ARCH}_seed${seed}" "$@"
    python main.py --method "$method" --dataset inat2018 --data_root "$INAT" --split_dir "$INAT_SPLITS" \
      --arch resnet50 --epochs 90 -b 100 --lr 0.2 --momentum 0.9 --wd 1e-4 --warmup_epochs 0 --cos True \
      --aug standard --color_jitter False --drw_epoch 60 --seed "$seed" \
      --out_dir "$ROOT_LOG/${method}_inat2018_seed${seed}" "$@"
  done
done
