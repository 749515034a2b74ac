"""Augmentations that act on uint8 image tensors after the PIL stage.

Normalisation happens later on the training device, so these ops see raw pixels: filling with 0
is black, exactly what the papers' Cutout produced when it ran between ``ToTensor`` and
``Normalize``.
"""
from __future__ import annotations

from typing import Optional

import torch


def cut_window(image: torch.Tensor, center_y: int, center_x: int, size: int) -> torch.Tensor:
    """Returns a copy of ``image`` (..., H, W) with a ``size`` x ``size`` square set to zero.

    The square spans ``[c - size // 2, c + size // 2)`` on each axis and is clipped at the image
    border, so a centre near an edge removes a smaller rectangle (DeVries & Taylor 2017, whose
    code clips the same way). An even ``size`` therefore gives exactly ``size`` pixels per side.
    """
    height, width = image.shape[-2:]
    half = size // 2
    top, bottom = max(center_y - half, 0), min(center_y + half, height)
    left, right = max(center_x - half, 0), min(center_x + half, width)
    out = image.clone()
    out[..., top:bottom, left:right] = 0
    return out


class Cutout:
    """Cutout (DeVries & Taylor 2017, arXiv:1708.04552): zero ``holes`` squares of side ``size``.

    Each hole's centre is uniform over all pixels, so holes may hang over the border and be
    clipped; this is the variant LCSL and BCCL run after AutoAugment (1 hole, 16 px).

    ``generator`` makes the draws reproducible in tests. Leave it ``None`` for training: a
    generator object would be copied into every DataLoader worker with the same state, giving
    every worker the same holes, whereas the global RNG is reseeded per worker by PyTorch.
    """

    def __init__(self, size: int = 16, holes: int = 1, generator: Optional[torch.Generator] = None):
        if size < 1 or holes < 1:
            raise ValueError(f"Cutout needs size >= 1 and holes >= 1, got size={size}, holes={holes}")
        self.size = size
        self.holes = holes
        self.generator = generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        for _ in range(self.holes):
            center_y = int(torch.randint(height, (), generator=self.generator))
            center_x = int(torch.randint(width, (), generator=self.generator))
            image = cut_window(image, center_y, center_x, self.size)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, holes={self.holes})"
