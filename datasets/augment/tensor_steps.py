"""Random augmentation steps on batches: each draws per-sample parameters, then runs a batched op.

A step is called as ``step(images, generator)`` with uint8 images (N, C, H, W) on any device and
a CPU ``torch.Generator``, and may overwrite the batch it is given (``Compose`` gives its steps a
private copy, so a recipe never modifies its caller's images). Parameters are drawn on the CPU
and moved to the images' device: grouping samples by the op they drew (colour-jitter order,
AutoAugment sub-policies) then needs no device-to-host synchronisation, and one seed gives the
same augmentations on every device.

The parameter distributions are those of the torchvision transforms the PIL recipes use
(``RandomCrop``, ``RandomResizedCrop``, ``ColorJitter``, ``RandomGrayscale``, ``GaussianBlur``,
``RandomHorizontalFlip``, the Cutout of ``datasets.augment.ops``), drawn for all samples at once.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor

from datasets.augment import tensor_ops as ops

BatchOp = Callable[[Tensor, torch.Generator], Tensor]


def uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    """(N,) float64 draws from U[low, high) on the CPU."""
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)


def coin(n: int, p: float, generator: torch.Generator) -> Tensor:
    """(N,) bools, each true with probability ``p``."""
    return torch.rand(n, generator=generator) < p


def integers(high: Tensor | int, n: int, generator: torch.Generator) -> Tensor:
    """(N,) int64 draws from {0, ..., high - 1}; ``high`` may differ per sample."""
    return (torch.rand(n, generator=generator, dtype=torch.float64) * high).floor().long()


def apply_where(images: Tensor, chosen: Tensor, op: Callable[..., Tensor], *params: Tensor) -> Tensor:
    """Runs ``op`` on the samples whose ``chosen`` (CPU bool, (N,)) entry is true, in place.

    ``params`` are per-sample (N,) CPU tensors; only the chosen entries reach ``op``. Work then
    scales with the number of chosen samples, which matters for ops with low probability.
    """
    index = chosen.nonzero().squeeze(1)
    if len(index) == 0:
        return images
    on_device = index.to(images.device, non_blocking=True)
    picked = op(images.index_select(0, on_device), *(p[index] for p in params))
    return images.index_copy_(0, on_device, picked)


class CropFlip:
    """``RandomCrop(size, padding)`` (zero padding) + ``RandomHorizontalFlip(p=0.5)``, one gather."""

    def __init__(self, size: int, padding: int):
        self.size, self.padding = size, padding

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        span_y = height + 2 * self.padding - self.size + 1
        span_x = width + 2 * self.padding - self.size + 1
        if span_y < 1 or span_x < 1:
            raise ValueError(f"cannot crop {self.size} px from {height}x{width} images padded by {self.padding}")
        tops, lefts = integers(span_y, n, generator), integers(span_x, n, generator)
        return ops.crop_flip(images, tops, lefts, coin(n, 0.5, generator), self.size, self.padding)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding})"


def resized_crop_boxes(n: int, height: int, width: int, scale: Tuple[float, float],
                       ratio: Tuple[float, float], generator: torch.Generator, attempts: int = 10) -> Tensor:
    """(N, 4) int64 boxes (top, left, h, w) drawn as ``RandomResizedCrop.get_params`` draws them.

    Each sample tries ``attempts`` (area fraction, log-uniform aspect ratio) pairs and keeps the
    first that fits; samples with no fit take the central crop clipped to ``ratio``.
    """
    area = height * width
    targets = area * uniform(n * attempts, *scale, generator).view(n, attempts)
    aspects = torch.exp(uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), generator)).view(n, attempts)
    ws = torch.sqrt(targets * aspects).round().long()
    hs = torch.sqrt(targets / aspects).round().long()
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fit (0 if none)
    found = fits.any(dim=1)
    w, h = ws.gather(1, first).squeeze(1), hs.gather(1, first).squeeze(1)
    # The fallback of torchvision: the whole image, narrowed to the nearest allowed aspect ratio.
    if width / height < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    tops = torch.where(found, integers(height - h + 1, n, generator), (height - h) // 2)
    lefts = torch.where(found, integers(width - w + 1, n, generator), (width - w) // 2)
    return torch.stack([tops, lefts, h, w], dim=1)


class ResizedCropFlip:
    """``RandomResizedCrop(size, scale, ratio)`` + ``RandomHorizontalFlip(p=0.5)``.

    The flip is folded into the resampling matrices. Recipes whose flip comes later (MoCo v2 flips
    last) can use this too: jitter, grayscale and a symmetric blur commute with mirroring.
    """

    def __init__(self, size: int, scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, tuple(scale), tuple(ratio)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        boxes = resized_crop_boxes(n, height, width, self.scale, self.ratio, generator)
        return ops.resized_crop(images, boxes, self.size, coin(n, 0.5, generator))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio=(3/4, 4/3))"


class ColorJitter:
    """``RandomApply([ColorJitter(b, c, s, h)], p)`` with a fresh random order per sample.

    Factors are U[1 - x, 1 + x] (brightness, contrast, saturation) and U[-h, h] (hue); a strength
    of 0 leaves that op out, as torchvision does. Brightness, contrast and saturation are all
    blends ``f * x + (1 - f) * D`` (D = black, the mean grey level, the grey image), so each of
    the four stages is one blend of the whole batch with per-sample D and f (f = 1 for samples
    whose op at this stage is another one) plus one hue rotation of the samples that drew hue.
    Pixels are truncated to whole grey levels after every op, as torchvision and PIL do.
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, p: float = 1.0):
        self.strengths = (brightness, contrast, saturation, hue)
        self.p = p

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n = images.shape[0]
        applied = coin(n, self.p, generator)
        order = torch.rand(n, 4, generator=generator).argsort(dim=1)  # a permutation per sample
        factors = torch.stack([uniform(n, -x, x, generator) + (0.0 if i == 3 else 1.0)
                               for i, x in enumerate(self.strengths)], dim=1)  # (N, 4)
        used = applied.view(n, 1) & (torch.tensor(self.strengths) > 0).view(1, 4)  # (N, 4)
        pixels = images.to(torch.float32)
        for stage in range(4):
            op = order[:, stage]
            active = used.gather(1, op.view(n, 1)).squeeze(1)
            blends = active & (op < 3)
            if blends.any():
                f = torch.where(blends, factors.gather(1, op.view(n, 1)).squeeze(1), torch.ones(n, dtype=torch.float64))
                grey = ops.luma(pixels).floor_()  # (N, 1, H, W)
                mean = grey.mean(dim=(1, 2, 3), keepdim=True)
                op_dev = op.to(images.device, non_blocking=True).view(n, 1, 1, 1)
                target = torch.where(op_dev == 0, torch.zeros_like(grey), torch.where(op_dev == 1, mean, grey))
                pixels = ops.blend_float(pixels, target, f)
            pixels = apply_where(pixels, active & (op == 3), ops.hue_float, factors[:, 3])
        return pixels.to(torch.uint8)

    def __repr__(self) -> str:
        b, c, s, h = self.strengths
        return f"{type(self).__name__}(brightness={b}, contrast={c}, saturation={s}, hue={h}, p={self.p})"


class RandomGrayscale:
    """Replaces an image by its grey level (three channels) with probability ``p``."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return apply_where(images, coin(images.shape[0], self.p, generator), ops.grayscale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class GaussianBlur:
    """``RandomApply([GaussianBlur(kernel_size, sigma=U[0.1, 2])], p)``."""

    def __init__(self, kernel_size: int, sigma: Tuple[float, float] = (0.1, 2.0), p: float = 0.5):
        self.kernel_size, self.sigma, self.p = kernel_size, tuple(sigma), p

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n = images.shape[0]
        chosen, sigmas = coin(n, self.p, generator), uniform(n, *self.sigma, generator)
        return apply_where(images, chosen, lambda x, s: ops.gaussian_blur(x, s, self.kernel_size), sigmas)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, sigma={self.sigma}, p={self.p})"


class Cutout:
    """One ``size`` x ``size`` hole per image, centre uniform over all pixels, clipped, zero fill."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"--cutout_size must be >= 1, got {size}")
        self.size = size

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        n, _, height, width = images.shape
        return ops.cutout(images, integers(height, n, generator), integers(width, n, generator), self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


class ResizeCenterCrop:
    """The ImageNet-style evaluation view: shorter side to ``resize``, central ``size`` crop."""

    def __init__(self, resize: int, size: int):
        self.resize, self.size = resize, size

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        return ops.resize_center_crop(images, self.resize, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(resize={self.resize}, size={self.size})"


class Compose:
    """Runs steps in order on one batch; the input batch is never modified."""

    def __init__(self, steps: Sequence[BatchOp]):
        self.steps = tuple(steps)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError(f"tensor recipes take uint8 (N, C, H, W) batches, got {images.dtype} {tuple(images.shape)}")
        out = images
        for step in self.steps:
            out = step(out if out is not images else images.clone(), generator)
        return out

    def __repr__(self) -> str:
        inner = ", ".join(repr(step) for step in self.steps)
        return f"{type(self).__name__}([{inner}])"
