"""Datasets: a registry of factories ``fn(options: DataOptions) -> LongTailData``.

``build_dataset(name, options)`` is what the entry scripts call; ``DATASETS.names()`` feeds
``--dataset``'s choices, so ``--help`` lists what exists and a typo fails at parse time.
"""
from __future__ import annotations

from utils.registry import Registry

from .base import DataOptions, DatasetError, ImageDataset, ImageSource, LongTailData
from .cifar_lt import cifar10, cifar100
from .list_dataset import image_list, imagenet_lt, inat2018, places_lt
from .sample import cifar10_sample

DATASETS = Registry("dataset")
# Registered here rather than with decorators in each module, so the modules never import the
# package they belong to (no import cycle) and the whole catalogue reads in one place.
DATASETS.register("cifar10")(cifar10)
DATASETS.register("cifar100")(cifar100)
DATASETS.register("cifar10_sample")(cifar10_sample)
DATASETS.register("imagenet_lt")(imagenet_lt)
DATASETS.register("inat2018")(inat2018)
DATASETS.register("places_lt")(places_lt)
DATASETS.register("image_list")(image_list)

# Datasets of small (32 px) in-memory images; the others are ImageNet-style image files. Entry
# scripts need this before any data is loaded, to pick recipes and architectures.
SMALL_IMAGE_DATASETS = ("cifar10", "cifar100", "cifar10_sample", "svhn")

from . import svhn_lt  # noqa: E402,F401  (registers "svhn"; it imports DATASETS from here)


def build_dataset(name: str, options: DataOptions) -> LongTailData:
    """The long-tailed data named ``name`` (see ``DATASETS.names()``), built from ``options``."""
    return DATASETS.build(name, options)


__all__ = [
    "DATASETS",
    "DataOptions",
    "DatasetError",
    "ImageDataset",
    "ImageSource",
    "LongTailData",
    "build_dataset",
]
