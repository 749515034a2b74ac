"""AutoAugment and RandAugment on batches, grouped so each op runs once per group.

Every sample draws its own sub-policy (AutoAugment) or ops (RandAugment), application coins and
signs, exactly as torchvision's ``AutoAugment`` / ``RandAugment`` draw them for one image. Then,
stage by stage, the samples are grouped by the op they drew, and each op runs once on its group
with a magnitude per sample. A batch of 128 thus costs about 14 op calls per stage instead of
128 per-image calls.

The magnitude tables are written out here from the papers' constants (Cubuk et al. 2019, 2020);
``tests/test_tensor_augment.py`` checks them against torchvision's, which the PIL recipes use.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms.v2 import functional as TF

from datasets.augment import tensor_ops as ops
from datasets.augment.tensor_steps import apply_where, coin, integers

# Op names in torchvision's order (RandAugment's uniform draw depends on the order).
RANDAUG_OPS: Tuple[str, ...] = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                                "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                                "AutoContrast", "Equalize")
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
          "Sharpness"}
# The ``CIFAR10Policy`` class that BCCL (``randaugment.py``, ``SubPolicy``) and LCSL
# (``data/autoaug.py``) copy differs from torchvision's AutoAugment in two ways: ``rotate`` turns
# by the positive angle only (``img.rotate(magnitude)``, no random sign), and the Solarize
# thresholds are ``np.linspace(256, 0, 10)``, so bin 0 inverts nothing and bin k inverts the
# pixels >= 256 (1 - k / 9) instead of >= 255 (1 - k / 9).
PAPER_AUTOAUG_UNSIGNED = frozenset({"Rotate"})
PAPER_SOLARIZE_START = 256.0


def augmentation_space(num_bins: int, height: int, width: int,
                       solarize_start: float = 255.0) -> Dict[str, Tensor]:
    """Magnitude of every op at each of ``num_bins`` levels (ops without a magnitude: zeros).

    Shear up to 0.3, translation up to 150/331 of the side, rotation up to 30 degrees, enhancement
    factors up to 1 +- 0.9, posterize from 8 down to 4 bits, solarize threshold from
    ``solarize_start`` (torchvision: 255; the papers' AutoAugment policy: 256) down to 0.
    """
    def ramp(start: float, end: float) -> Tensor:
        # float32 linspace, as torchvision builds its tables, so thresholds match to the bit
        return torch.linspace(start, end, num_bins).to(torch.float64)

    table = {
        "ShearX": ramp(0.0, 0.3), "ShearY": ramp(0.0, 0.3),
        "TranslateX": ramp(0.0, 150.0 / 331.0 * width), "TranslateY": ramp(0.0, 150.0 / 331.0 * height),
        "Rotate": ramp(0.0, 30.0),
        "Brightness": ramp(0.0, 0.9), "Color": ramp(0.0, 0.9), "Contrast": ramp(0.0, 0.9), "Sharpness": ramp(0.0, 0.9),
        "Posterize": 8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().to(torch.float64),
        "Solarize": ramp(solarize_start, 0.0),
    }
    for name in ("Identity", "AutoContrast", "Equalize", "Invert"):
        table[name] = torch.zeros(num_bins, dtype=torch.float64)
    return table


def apply_op(images: Tensor, name: str, magnitudes: Tensor, interpolation: str,
             fill: Optional[Sequence[float]]) -> Tensor:
    """One AutoAugment / RandAugment op on a uint8 batch, one (signed) magnitude per sample.

    Mirrors ``torchvision.transforms.autoaugment._apply_op``: enhancement ops use ``1 + magnitude``,
    shears are about the top-left corner, translations are truncated to whole pixels.
    """
    height, width = images.shape[-2:]
    m = magnitudes.to(images.device, torch.float32, non_blocking=True)
    if name in ("ShearX", "ShearY"):
        return ops.affine(images, ops.shear_matrices(m, name[-1].lower(), height, width), interpolation, fill)
    if name in ("TranslateX", "TranslateY"):
        return ops.affine(images, ops.translate_matrices(m, name[-1].lower()), interpolation, fill)
    if name == "Rotate":
        return ops.affine(images, ops.rotation_matrices(m), interpolation, fill)
    enhance = {"Brightness": ops.adjust_brightness, "Color": ops.adjust_saturation,
               "Contrast": ops.adjust_contrast, "Sharpness": ops.adjust_sharpness}
    if name in enhance:
        return enhance[name](images, 1.0 + m)
    if name == "Posterize":
        return ops.posterize(images, m.round().to(torch.int64))
    if name == "Solarize":
        return ops.solarize(images, m)
    if name == "AutoContrast":
        return TF.autocontrast(images)  # already batched in torchvision
    if name == "Equalize":
        return TF.equalize(images)  # already batched in torchvision
    if name == "Invert":
        return 255 - images
    if name == "Identity":
        return images
    raise ValueError(f"unknown augmentation op '{name}'")


def run_grouped(images: Tensor, names: Sequence[str], op_ids: Tensor, applied: Tensor, magnitudes: Tensor,
                interpolation: str, fill: Optional[Sequence[float]]) -> Tensor:
    """Applies op ``names[op_ids[i]]`` with ``magnitudes[i]`` to each sample with ``applied[i]``."""
    for which in torch.unique(op_ids[applied]).tolist():
        name = names[which]
        if name == "Identity":
            continue
        images = apply_where(images, applied & (op_ids == which),
                             lambda x, m, name=name: apply_op(x, name, m, interpolation, fill), magnitudes)
    return images


class BatchAutoAugment:
    """AutoAugment with a learned policy (default CIFAR-10), per-sample sub-policies.

    The sub-policies are torchvision's table (the same 25 as the papers' ``CIFAR10Policy``); the
    magnitudes are the papers' (``PAPER_AUTOAUG_UNSIGNED``, ``PAPER_SOLARIZE_START``), as in the
    PIL ``autoaug`` recipe.
    """

    def __init__(self, policy: T.AutoAugmentPolicy = T.AutoAugmentPolicy.CIFAR10,
                 interpolation: str = "nearest", fill: Optional[Sequence[float]] = None):
        self.policy = policy
        self.interpolation, self.fill = interpolation, None if fill is None else tuple(fill)
        self.policies = T.AutoAugment(policy).policies
        self.names: List[str] = sorted({op for sub in self.policies for op, _, _ in sub})
        # Per (sub-policy, stage): op id, probability, magnitude bin (-1 for none).
        self.op_ids = torch.tensor([[self.names.index(op) for op, _, _ in sub] for sub in self.policies])
        self.probs = torch.tensor([[p for _, p, _ in sub] for sub in self.policies], dtype=torch.float64)
        self.bins = torch.tensor([[-1 if b is None else b for _, _, b in sub] for sub in self.policies])

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        space = augmentation_space(10, height, width, solarize_start=PAPER_SOLARIZE_START)
        table = torch.stack([space[name] for name in self.names])  # (ops, 10)
        signed = torch.tensor([name in SIGNED - PAPER_AUTOAUG_UNSIGNED for name in self.names])
        chosen = integers(len(self.policies), n, generator)
        probs = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        negative = integers(2, 2 * n, generator).view(n, 2) == 0  # torchvision negates on a 0
        for stage in range(2):
            op_ids, bins = self.op_ids[chosen, stage], self.bins[chosen, stage]
            applied = probs[:, stage] <= self.probs[chosen, stage]
            magnitudes = torch.where(bins >= 0, table[op_ids, bins.clamp(min=0)], torch.zeros(n, dtype=torch.float64))
            magnitudes = torch.where(signed[op_ids] & negative[:, stage], -magnitudes, magnitudes)
            images = run_grouped(images, self.names, op_ids, applied, magnitudes, self.interpolation, self.fill)
        return images

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy.value}, fill={self.fill})"


class BatchRandAugment:
    """RandAugment: ``num_ops`` uniformly drawn ops per sample, all at bin ``magnitude`` of ``num_bins``."""

    def __init__(self, num_ops: int, magnitude: int, num_bins: int, interpolation: str = "bilinear",
                 fill: Optional[Sequence[float]] = None):
        if not 0 <= magnitude < num_bins:
            raise ValueError(f"RandAugment magnitude must lie in [0, {num_bins - 1}], got {magnitude}")
        self.num_ops, self.magnitude, self.num_bins = num_ops, magnitude, num_bins
        self.interpolation, self.fill = interpolation, None if fill is None else tuple(fill)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        space = augmentation_space(self.num_bins, height, width)
        strengths = torch.tensor([float(space[name][self.magnitude]) for name in RANDAUG_OPS], dtype=torch.float64)
        signed = torch.tensor([name in SIGNED for name in RANDAUG_OPS])
        everyone = torch.ones(n, dtype=torch.bool)
        for _ in range(self.num_ops):
            op_ids = integers(len(RANDAUG_OPS), n, generator)
            negative = coin(n, 0.5, generator)  # torchvision negates on a 1 of randint(2)
            magnitudes = torch.where(signed[op_ids] & negative, -strengths[op_ids], strengths[op_ids])
            images = run_grouped(images, RANDAUG_OPS, op_ids, everyone, magnitudes, self.interpolation, self.fill)
        return images

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"num_bins={self.num_bins}, fill={self.fill})")
