"""The recipe registry and the two image styles every recipe is written for.

Kept apart from ``__init__`` so that recipe modules can register themselves without importing
the package that imports them.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from PIL import Image

from utils.registry import Registry

# A recipe's product: a PIL RGB image in, one uint8 (3, H, W) tensor (or a tuple of them) out.
Transform = Callable[[Image.Image], torch.Tensor]

# 'cifar': small in-memory images at their native size; 'imagenet': large decoded files that are
# cropped to `image_size`. Matches ``LongTailData.style``.
STYLES: Tuple[str, ...] = ("cifar", "imagenet")

# Recipe factories, each ``fn(style, image_size, **options) -> Transform``.
TRANSFORMS = Registry("transform recipe")


def check_style(recipe: str, style: str, allowed: Tuple[str, ...] = STYLES) -> None:
    """Raises a ``ValueError`` naming the valid styles when ``recipe`` is not defined for ``style``."""
    if style not in STYLES:
        raise ValueError(f"unknown image style '{style}'; choose one of: {', '.join(STYLES)}")
    if style not in allowed:
        raise ValueError(
            f"transform recipe '{recipe}' is not defined for style '{style}'; "
            f"it exists for: {', '.join(allowed)}"
        )
