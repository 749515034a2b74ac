"""The papers' augmentation recipes on batches of uint8 tensors, under the PIL recipes' names.

``TENSOR_TRANSFORMS`` holds one factory per name in ``TRANSFORMS`` (``test``, ``standard``,
``cutout``, ``autoaug``, ``randaug``, ``simclr``, ``moco_v2``) with the same styles and options, so
``--aug_backend tensor`` accepts exactly what the PIL path accepts. A built recipe is called as
``recipe(images, generator)``: uint8 (N, 3, H, W) images on any device and a CPU
``torch.Generator`` in, uint8 (N, 3, size, size) out, on the same device. Each sample draws its
own parameters from the distributions of the PIL recipe (``datasets/augment/pil.py``);
``tests/test_tensor_augment.py`` checks op semantics against torchvision and the statistics of
every recipe against its PIL twin.

    views = build_tensor_views(["autoaug", "simclr"], "cifar", 32)
    first, second = views(images, generator)  # BCCL's two views of one batch

All images of a batch must share one size (in-memory CIFAR-style data, or decoded images that
were resized alike); ``datasets.device_loader.DeviceLoader`` feeds whole training sets this way.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Sequence, Tuple

import torch
from torch import Tensor

from datasets.augment.core import check_style
from datasets.augment.pil import (AUTOAUG_FILL, CIFAR_PADDING, CUTOUT_SIZE, IMAGENET_MEAN_PIXEL,
                                  RANDAUG_MAX_MAGNITUDE, blur_kernel_size)
from datasets.augment.tensor_policy import BatchAutoAugment, BatchRandAugment
from datasets.augment.tensor_steps import (ColorJitter, Compose, CropFlip, Cutout, GaussianBlur,
                                           RandomGrayscale, ResizeCenterCrop, ResizedCropFlip)
from utils.registry import Registry

# A batch recipe: (uint8 images (N, 3, H, W), CPU generator) -> uint8 images (N, 3, size, size).
BatchTransform = Callable[[Tensor, torch.Generator], Tensor]

# Recipe factories, each ``fn(style, image_size, **options) -> BatchTransform``.
TENSOR_TRANSFORMS = Registry("tensor transform recipe")

__all__ = ["TENSOR_TRANSFORMS", "BatchTransform", "BatchViews", "build_tensor_transform",
           "build_tensor_views", "tensor_recipe_options"]


def _base(style: str, image_size: int, scale: Tuple[float, float] = (0.08, 1.0)) -> list:
    """Crop with padding (CIFAR) or random-resized crop (ImageNet), each with a random flip."""
    if style == "cifar":
        return [CropFlip(image_size, CIFAR_PADDING)]
    return [ResizedCropFlip(image_size, scale=scale)]


def _jitter(hue: float, p: float = 1.0) -> ColorJitter:
    return ColorJitter(0.4, 0.4, 0.4, hue, p=p)  # strength 0.4 in every recipe of the three repos


@TENSOR_TRANSFORMS.register("test")
def evaluation(style: str, image_size: int) -> BatchTransform:
    """CIFAR images as they are; ImageNet-style Resize(image_size * 8 // 7) + CenterCrop."""
    check_style("test", style)
    if style == "cifar":
        return Compose([])
    return Compose([ResizeCenterCrop(image_size * 8 // 7, image_size)])


@TENSOR_TRANSFORMS.register("standard")
def standard(style: str, image_size: int, *, color_jitter: bool = True) -> BatchTransform:
    """Crop + flip; ImageNet-style adds ColorJitter(0.4, 0.4, 0.4, 0) unless ``color_jitter=False``."""
    check_style("standard", style)
    steps = _base(style, image_size)
    if style == "imagenet" and color_jitter:
        steps.append(_jitter(hue=0.0))
    return Compose(steps)


@TENSOR_TRANSFORMS.register("cutout")
def cutout(style: str, image_size: int, *, color_jitter: bool = True,
           cutout_size: int = CUTOUT_SIZE) -> BatchTransform:
    """``standard`` followed by Cutout (1 hole of ``cutout_size`` px, centre uniform, clipped)."""
    check_style("cutout", style)
    steps = _base(style, image_size)
    if style == "imagenet" and color_jitter:
        steps.append(_jitter(hue=0.0))
    return Compose([*steps, Cutout(cutout_size)])


@TENSOR_TRANSFORMS.register("autoaug")
def autoaug(style: str, image_size: int, *, cutout_size: int = CUTOUT_SIZE) -> BatchTransform:
    """Crop(32, 4) + flip + AutoAugment (CIFAR-10 policy, nearest, grey fill) + Cutout (CIFAR only)."""
    check_style("autoaug", style, allowed=("cifar",))
    return Compose([*_base(style, image_size), BatchAutoAugment(fill=AUTOAUG_FILL), Cutout(cutout_size)])


@TENSOR_TRANSFORMS.register("randaug")
def randaug(style: str, image_size: int, *, randaug_n: int = 2, randaug_m: int = 10) -> BatchTransform:
    """RandAugment with ``randaug_n`` ops at ``randaug_m`` on timm's 0-10 scale (11 bins, bilinear).

    CIFAR: crop + flip first, black fill. ImageNet-style: random-resized crop + flip +
    ColorJitter(0.4, 0.4, 0.4, 0) first, fill with the ImageNet mean, as the PIL recipe.
    """
    check_style("randaug", style)
    if randaug_n < 0 or not 0 <= randaug_m <= RANDAUG_MAX_MAGNITUDE:
        raise ValueError(f"--randaug_n must be >= 0 and --randaug_m in [0, {RANDAUG_MAX_MAGNITUDE}], "
                         f"got n={randaug_n}, m={randaug_m}")
    steps = _base(style, image_size)
    fill = None
    if style == "imagenet":
        steps.append(_jitter(hue=0.0))
        fill = IMAGENET_MEAN_PIXEL
    steps.append(BatchRandAugment(randaug_n, randaug_m, RANDAUG_MAX_MAGNITUDE + 1, "bilinear", fill))
    return Compose(steps)


@TENSOR_TRANSFORMS.register("simclr")
def simclr(style: str, image_size: int) -> BatchTransform:
    """BCCL's SimAug: RRC(0.08-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 + grayscale p=0.2."""
    check_style("simclr", style)
    return Compose([ResizedCropFlip(image_size, scale=(0.08, 1.0)), _jitter(hue=0.1, p=0.8), RandomGrayscale(0.2)])


@TENSOR_TRANSFORMS.register("sim_aug")
def sim_aug(style: str, image_size: int) -> BatchTransform:
    """LCSL's ImageNet sim_aug: RRC(0.08-1) + ColorJitter(0.4, 0.4, 0.4, 0) always + grayscale
    p=0.2 + blur (sigma 0.1-2) p=0.5 + flip (drawn with the crop: it commutes with the rest)."""
    check_style("sim_aug", style)
    return Compose([ResizedCropFlip(image_size, scale=(0.08, 1.0)), _jitter(hue=0.0), RandomGrayscale(0.2),
                    GaussianBlur(blur_kernel_size(image_size))])


@TENSOR_TRANSFORMS.register("moco_v2")
def moco_v2(style: str, image_size: int) -> BatchTransform:
    """MoCo v2: RRC(0.2-1) + ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8 + grayscale p=0.2 + blur p=0.5 +
    flip. The flip is drawn with the crop: mirroring commutes with the colour ops and the blur."""
    check_style("moco_v2", style)
    return Compose([ResizedCropFlip(image_size, scale=(0.2, 1.0)), _jitter(hue=0.1, p=0.8),
                    RandomGrayscale(0.2), GaussianBlur(blur_kernel_size(image_size))])


class BatchViews:
    """Several recipes on the same batch, returned as a tuple (BCCL's two views).

    Views are drawn one after the other from the same generator, so the tuple is reproducible.
    """

    def __init__(self, transforms: Sequence[BatchTransform]):
        if len(transforms) == 0:
            raise ValueError("BatchViews needs at least one transform")
        self.transforms = tuple(transforms)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tuple[Tensor, ...]:
        return tuple(transform(images, generator) for transform in self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {transform!r}" for transform in self.transforms)
        return f"{type(self).__name__}(\n{inner}\n)"


def tensor_recipe_options(recipe: str) -> Tuple[str, ...]:
    """Names of the keyword options a tensor recipe accepts (beyond ``style`` and ``image_size``)."""
    parameters = inspect.signature(TENSOR_TRANSFORMS.get(recipe)).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def build_tensor_transform(recipe: str, style: str, image_size: int, **options: Any) -> BatchTransform:
    """Builds one tensor recipe; an option the recipe does not take raises a ``TypeError``."""
    accepted = tensor_recipe_options(recipe)  # an unknown recipe raises here, listing the valid ones
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"transform recipe '{recipe}' takes no option {', '.join(unknown)}; "
                        f"it accepts: {', '.join(accepted) or 'none'}")
    return TENSOR_TRANSFORMS.build(recipe, style, image_size, **options)


def build_tensor_views(recipes: Sequence[str], style: str, image_size: int,
                       **options: Any) -> BatchTransform | BatchViews:
    """One batch recipe for a single name, a ``BatchViews`` for several (as ``build_views``).

    Each recipe receives only the options it declares; an option no listed recipe declares
    raises a ``TypeError``.
    """
    if isinstance(recipes, str) or len(recipes) == 0:
        raise ValueError(f"build_tensor_views needs a non-empty list of recipe names, got {recipes!r}")
    if len(recipes) == 1:
        return build_tensor_transform(recipes[0], style, image_size, **options)
    accepted = {recipe: set(tensor_recipe_options(recipe)) for recipe in recipes}
    used = set().union(*accepted.values())
    unknown = sorted(set(options) - used)
    if unknown:
        raise TypeError(f"no transform recipe among {', '.join(recipes)} takes option {', '.join(unknown)}; "
                        f"they accept: {', '.join(sorted(used)) or 'none'}")
    views = []
    for recipe in recipes:
        own: Dict[str, Any] = {k: v for k, v in options.items() if k in accepted[recipe]}
        views.append(TENSOR_TRANSFORMS.build(recipe, style, image_size, **own))
    return BatchViews(views)
