"""The papers' augmentation recipes on PIL images, each ending in a uint8 (3, H, W) tensor.

Every recipe is registered in ``TRANSFORMS`` as ``fn(style, image_size, **options)``. Pixels stay
uint8 (``PILToTensor``): the training loop normalises on the device with the dataset's mean/std,
so no ``ToTensor``/``Normalize`` appears here. Random draws use the global ``random``/``torch``
RNGs, which PyTorch reseeds in every DataLoader worker.

Sources (docs/data.md#augmentation-policies): LCSL ``data/dataset_cifar.py`` and
``data/dataset_LT.py``, BCCL ``dataset/transform.py``, the semi/self-supervised code's MoCo v2 and
stage-2 recipes.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision import transforms as T

from datasets.augment.core import TRANSFORMS, Transform, check_style
from datasets.augment.ops import Cutout
from datasets.augment.tensor_policy import PAPER_AUTOAUG_UNSIGNED, PAPER_SOLARIZE_START

CIFAR_PADDING = 4  # RandomCrop(32, padding=4) in all three repos
CUTOUT_SIZE = 16  # LCSL / BCCL Cutout(n_holes=1, length=16)
AUTOAUG_FILL = (128, 128, 128)  # the CIFAR10Policy code fills sheared/translated/rotated pixels grey
IMAGENET_MEAN_PIXEL = (124, 116, 104)  # round(255 * (0.485, 0.456, 0.406)): LCSL's RandAugment fill
RANDAUG_MAX_MAGNITUDE = 10  # timm's magnitude scale: 'm10' is the strongest setting


def _to_uint8(pil_ops: Sequence, tensor_ops: Sequence = ()) -> Transform:
    """Composes PIL-stage ops, the uint8 conversion, then tensor-stage ops."""
    return T.Compose([*pil_ops, T.PILToTensor(), *tensor_ops])


def _crop_flip(style: str, image_size: int, scale: Tuple[float, float] = (0.08, 1.0)) -> List:
    """The geometric base of every training recipe.

    CIFAR-style images keep their size (zero-padded random crop); ImageNet-style images get a
    random-resized crop, whose ``scale`` is the fraction of the image area kept.
    """
    if style == "cifar":
        crop = T.RandomCrop(image_size, padding=CIFAR_PADDING)
    else:
        crop = T.RandomResizedCrop(image_size, scale=scale)
    return [crop, T.RandomHorizontalFlip()]


def _color_jitter(hue: float) -> T.ColorJitter:
    # Every recipe in the three repos uses strength 0.4 for brightness, contrast and saturation;
    # only the hue differs (0 for the supervised recipes, 0.1 for the contrastive views).
    return T.ColorJitter(0.4, 0.4, 0.4, hue)


def blur_kernel_size(image_size: int) -> int:
    """Odd Gaussian-blur kernel covering about 10% of the side (SimCLR's rule), at least 3.

    MoCo v2 blurs with PIL's radius-``sigma`` filter, which has no kernel size; torchvision needs
    one. At 224 px this gives 23, enough for sigma = 2 (+-5 sigma); on 32 px images it gives 3.
    """
    return max(3, int(0.1 * image_size)) | 1


def _gaussian_blur(image_size: int, p: float = 0.5) -> T.RandomApply:
    return T.RandomApply([T.GaussianBlur(blur_kernel_size(image_size), sigma=(0.1, 2.0))], p=p)


@TRANSFORMS.register("test")
def evaluation(style: str, image_size: int) -> Transform:
    """Evaluation: CIFAR images as they are; ImageNet-style Resize(256) + CenterCrop(224).

    For other sizes the resize keeps the 224/256 = 7/8 crop ratio, i.e. ``image_size * 8 // 7``
    (the integer form of ``int(image_size / 0.875)``).
    """
    check_style("test", style)
    if style == "cifar":
        return _to_uint8([])
    return _to_uint8([T.Resize(image_size * 8 // 7), T.CenterCrop(image_size)])


@TRANSFORMS.register("standard")
def standard(style: str, image_size: int, *, color_jitter: bool = True) -> Transform:
    """The plain supervised recipe.

    CIFAR: RandomCrop(32, padding 4) + horizontal flip (LDAM-DRW, SS 3.4, LCSL 1.5).
    ImageNet-style: RandomResizedCrop + flip + ColorJitter(0.4, 0.4, 0.4, 0) (the SS ImageNet-LT
    stage-2 recipe and LCSL's ``none``). ``color_jitter=False`` drops the jitter, as the SS
    iNaturalist configs do; the option has no effect on CIFAR-style images, which are never
    jittered.
    """
    check_style("standard", style)
    ops = _crop_flip(style, image_size)
    if style == "imagenet" and color_jitter:
        ops.append(_color_jitter(hue=0.0))
    return _to_uint8(ops)


@TRANSFORMS.register("cutout")
def cutout(
    style: str, image_size: int, *, color_jitter: bool = True, cutout_size: int = CUTOUT_SIZE
) -> Transform:
    """``standard`` followed by Cutout (1 hole of ``cutout_size`` px, centre uniform, clipped)."""
    check_style("cutout", style)
    ops = _crop_flip(style, image_size)
    if style == "imagenet" and color_jitter:
        ops.append(_color_jitter(hue=0.0))
    return _to_uint8(ops, [Cutout(cutout_size)])


class PaperAutoAugment(T.AutoAugment):
    """torchvision's AutoAugment with the magnitudes of the papers' ``CIFAR10Policy`` class.

    Same sub-policies, probabilities and bins; Rotate keeps its positive angle and Solarize's
    thresholds run from 256 down to 0 (see ``tensor_policy.PAPER_AUTOAUG_UNSIGNED``).
    """

    def _augmentation_space(self, num_bins: int, image_size: Tuple[int, int]) -> Dict[str, Tuple[Tensor, bool]]:
        space = super()._augmentation_space(num_bins, image_size)
        for name in PAPER_AUTOAUG_UNSIGNED:
            space[name] = (space[name][0], False)
        space["Solarize"] = (torch.linspace(PAPER_SOLARIZE_START, 0.0, num_bins), False)
        return space


@TRANSFORMS.register("autoaug")
def autoaug(style: str, image_size: int, *, cutout_size: int = CUTOUT_SIZE) -> Transform:
    """RandomCrop(32, 4) + flip + AutoAugment (CIFAR-10 policy) + Cutout(1 x 16).

    LCSL ``--data_aug autoaug`` and BCCL's first CIFAR view (Cubuk et al. 2019; DeVries & Taylor
    2017). torchvision's CIFAR-10 policy has the same 25 sub-policies and magnitude bins as the
    ``CIFAR10Policy`` class the papers copy; ``PaperAutoAugment`` gives it that class's rotation
    (positive angles) and Solarize thresholds (256 -> 0), and like it we fill exposed pixels with
    grey 128. That class resamples shears bicubically and translations/rotations with nearest
    neighbour; torchvision uses one interpolation for all, and we keep its nearest-neighbour
    default. Defined for CIFAR-style images only, as in the papers.
    """
    check_style("autoaug", style, allowed=("cifar",))
    ops = _crop_flip(style, image_size)
    ops.append(PaperAutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=list(AUTOAUG_FILL)))
    return _to_uint8(ops, [Cutout(cutout_size)])


@TRANSFORMS.register("randaug")
def randaug(style: str, image_size: int, *, randaug_n: int = 2, randaug_m: int = 10) -> Transform:
    """RandAugment (Cubuk et al. 2020) with ``randaug_n`` ops at magnitude ``randaug_m``.

    CIFAR: RandomCrop(32, 4) + flip + RandAugment. ImageNet-style (LCSL's default view and BCCL's
    ``rand`` view): RandomResizedCrop(scale 0.08-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0) with
    p = 1 + RandAugment, filling exposed pixels with the ImageNet mean as LCSL does.

    ``randaug_m`` is on timm's 0-10 scale (``rand-n2-m10`` = the strongest magnitudes), which we
    get from torchvision by using 11 magnitude bins; with torchvision's default 31 bins, m = 10
    would be a third as strong. Differences from the papers' timm ``rand-n2-m10-mstd0.5`` that
    remain: torchvision draws no per-op magnitude noise (timm samples it from N(m, 0.5)), applies
    every chosen op (timm applies each with p = 0.5), and its op list has Identity instead of
    timm's Invert and SolarizeAdd.
    """
    check_style("randaug", style)
    if randaug_n < 0 or not 0 <= randaug_m <= RANDAUG_MAX_MAGNITUDE:
        raise ValueError(
            f"--randaug_n must be >= 0 and --randaug_m in [0, {RANDAUG_MAX_MAGNITUDE}], "
            f"got n={randaug_n}, m={randaug_m}"
        )
    ops = _crop_flip(style, image_size)
    fill = None
    if style == "imagenet":
        ops.append(_color_jitter(hue=0.0))
        fill = list(IMAGENET_MEAN_PIXEL)
    ops.append(
        T.RandAugment(
            num_ops=randaug_n,
            magnitude=randaug_m,
            num_magnitude_bins=RANDAUG_MAX_MAGNITUDE + 1,
            interpolation=T.InterpolationMode.BILINEAR,  # timm picks bilinear or bicubic at random
            fill=fill,
        )
    )
    return _to_uint8(ops)


@TRANSFORMS.register("simclr")
def simclr(style: str, image_size: int) -> Transform:
    """BCCL's SimAug (docs/bccl.md#views), the SimCLR view (Chen et al. 2020) without blur.

    RandomResizedCrop(scale 0.08-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8 +
    grayscale with p = 0.2.
    """
    check_style("simclr", style)
    ops = [
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([_color_jitter(hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    return _to_uint8(ops)


@TRANSFORMS.register("sim_aug")
def sim_aug(style: str, image_size: int) -> Transform:
    """LCSL's ImageNet-LT / iNaturalist ``--data_aug sim_aug`` (its data/dataset_LT.py,
    docs/lcsl.md#augmentation): unlike the SimCLR view the colour jitter has no hue and is
    always applied.

    RandomResizedCrop(scale 0.08-1) + ColorJitter(0.4, 0.4, 0.4, 0) + grayscale with p = 0.2 +
    Gaussian blur (sigma 0.1-2) with p = 0.5 + flip.
    """
    check_style("sim_aug", style)
    ops = [
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0)),
        _color_jitter(hue=0.0),
        T.RandomGrayscale(p=0.2),
        _gaussian_blur(image_size),
        T.RandomHorizontalFlip(),
    ]
    return _to_uint8(ops)


@TRANSFORMS.register("moco_v2")
def moco_v2(style: str, image_size: int) -> Transform:
    """MoCo v2's augmentation (Chen et al. 2020, arXiv:2003.04297), the SSP stage-1 views
    (docs/semi_self.md#moco-pre-training).

    RandomResizedCrop(scale 0.2-1) + ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8 + grayscale with
    p = 0.2 + Gaussian blur (sigma 0.1-2) with p = 0.5 + flip; the blur kernel is about 10% of
    the image side (odd), see ``blur_kernel_size``.
    """
    check_style("moco_v2", style)
    ops = [
        T.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
        T.RandomApply([_color_jitter(hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        _gaussian_blur(image_size),
        T.RandomHorizontalFlip(),
    ]
    return _to_uint8(ops)
