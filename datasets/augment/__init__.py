"""Image augmentation: named recipes that turn a PIL image into uint8 tensor view(s).

``build_transform("autoaug", "cifar", 32)`` gives one transform; ``build_views(["autoaug",
"simclr"], "cifar", 32)`` gives BCCL's two views as a ``MultiView``. Options go to the recipes
that declare them (``randaug_n``, ``randaug_m``, ``color_jitter``, ``cutout_size``), so
a typo raises instead of being ignored.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Sequence, Tuple

import torch
from PIL import Image

from datasets.augment import pil  # noqa: F401  (registers the PIL recipes)
from datasets.augment.core import STYLES, TRANSFORMS, Transform, check_style
from datasets.augment.ops import Cutout, cut_window

__all__ = [
    "STYLES",
    "TRANSFORMS",
    "Cutout",
    "MultiView",
    "Transform",
    "build_transform",
    "build_views",
    "check_style",
    "cut_window",
    "recipe_options",
]


class MultiView:
    """Applies several transforms to the same image and returns their outputs as a tuple.

    Used for two-view contrastive methods (BCCL: an AutoAugment view for CE + SupCon and a SimAug
    view for SupCon). Batched by ``default_collate``, the tuple becomes a sequence (PyTorch
    returns a list) of (B, 3, H, W) uint8 tensors, one per view, in the given order.
    """

    def __init__(self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]]):
        if len(transforms) == 0:
            raise ValueError("MultiView needs at least one transform")
        self.transforms = tuple(transforms)

    def __call__(self, image: Image.Image) -> Tuple[torch.Tensor, ...]:
        return tuple(transform(image) for transform in self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = ",\n".join(f"    {transform!r}" for transform in self.transforms)
        return f"{type(self).__name__}(\n{inner}\n)"


def recipe_options(recipe: str) -> Tuple[str, ...]:
    """Names of the keyword options a recipe accepts (beyond ``style`` and ``image_size``)."""
    parameters = inspect.signature(TRANSFORMS.get(recipe)).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def build_transform(recipe: str, style: str, image_size: int, **options: Any) -> Transform:
    """Builds one registered recipe; an option the recipe does not take raises a ``TypeError``."""
    accepted = recipe_options(recipe)  # an unknown recipe raises here, listing the valid ones
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"transform recipe '{recipe}' takes no option {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )
    return TRANSFORMS.build(recipe, style, image_size, **options)


def build_views(
    recipes: Sequence[str], style: str, image_size: int, **options: Any
) -> Transform | MultiView:
    """One transform for a single recipe, a ``MultiView`` for several.

    Each recipe receives only the options it declares, so ``randaug_m`` can be given alongside a
    ``simclr`` view; an option that no listed recipe declares raises a ``TypeError``.
    """
    if isinstance(recipes, str) or len(recipes) == 0:
        raise ValueError(f"build_views needs a non-empty list of recipe names, got {recipes!r}")
    if len(recipes) == 1:
        return build_transform(recipes[0], style, image_size, **options)
    accepted = {recipe: set(recipe_options(recipe)) for recipe in recipes}
    used = set().union(*accepted.values())
    unknown = sorted(set(options) - used)
    if unknown:
        raise TypeError(
            f"no transform recipe among {', '.join(recipes)} takes option {', '.join(unknown)}; "
            f"they accept: {', '.join(sorted(used)) or 'none'}"
        )
    views = []
    for recipe in recipes:
        own: Dict[str, Any] = {k: v for k, v in options.items() if k in accepted[recipe]}
        views.append(TRANSFORMS.build(recipe, style, image_size, **own))
    return MultiView(views)
