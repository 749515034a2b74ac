"""Datasets: a registry of factories ``fn(options: DataOptions) -> LongTailData``.

``build_dataset(name, options)`` is what the entry scripts call; ``DATASETS.names()`` feeds
``--dataset``'s choices, so ``--help`` lists what exists and a typo fails at parse time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from utils.registry import Registry

from .base import DataOptions, DatasetError, ImageDataset, ImageSource, LongTailData
from .cifar_lt import cifar10, cifar100
from .list_dataset import image_list, imagenet_lt, inat2018, places_lt
from .sample import cifar10_sample



@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its factory, and the facts entry scripts need before any image is
    read (to pick recipes, backbones and selection splits)."""

    build: Callable[[DataOptions], LongTailData]
    # 'cifar': 32-px images held in memory, long-tailed by --imb_factor, CIFAR recipes;
    # 'imagenet': image files cropped to 224 px, a benchmark's fixed long-tailed lists.
    image_style: str
    default_arch: Optional[str] = None  # the backbone the papers train on it (None: --arch is required)
    ships_val_list: bool = False  # the benchmark has its own validation list (ImageNet-LT, Places-LT)
    aliases: Tuple[str, ...] = ()  # the papers' own --dataset spellings of it

    def __call__(self, options: DataOptions) -> LongTailData:
        return self.build(options)

    @property
    def small_images(self) -> bool:
        return self.image_style == "cifar"


DATASETS = Registry("dataset")
# Registered here rather than with decorators in each module, so the modules never import the
# package they belong to (no import cycle) and the whole catalogue reads in one place. The
# backbones: ResNet-32 on CIFAR (LDAM-DRW, BCCL, and the LCSL paper's text), ResNeXt-50 on
# ImageNet-LT and ResNet-50 on iNaturalist (all three papers' code); Places-LT and custom lists
# name theirs with --arch.
DATASETS.register("cifar10")(DatasetEntry(cifar10, "cifar", "resnet32"))
DATASETS.register("cifar100")(DatasetEntry(cifar100, "cifar", "resnet32"))
DATASETS.register("cifar10_sample")(DatasetEntry(cifar10_sample, "cifar", "resnet32"))
# Aliases: BCCL's myparser.py says 'imagenet' and 'inat', LCSL's config.py 'imagenet' and 'inaturalist'.
DATASETS.register("imagenet_lt")(DatasetEntry(imagenet_lt, "imagenet", "resnext50", ships_val_list=True,
                                              aliases=("imagenet",)))
DATASETS.register("inat2018")(DatasetEntry(inat2018, "imagenet", "resnet50", aliases=("inat", "inaturalist")))
DATASETS.register("places_lt")(DatasetEntry(places_lt, "imagenet", ships_val_list=True))
DATASETS.register("image_list")(DatasetEntry(image_list, "imagenet"))

from . import svhn_lt  # noqa: E402,F401  (registers "svhn"; it imports DATASETS from here)


def dataset_entry(name: str) -> DatasetEntry:
    """The registered facts of dataset ``name`` (KeyError listing the names if unknown)."""
    entry = DATASETS.get(name)
    if not isinstance(entry, DatasetEntry):  # a bare factory: the scripts could not pick recipes
        raise TypeError(f"dataset '{name}' is registered as a bare factory; register "
                        "DatasetEntry(factory, image_style, default_arch) instead")
    return entry


def dataset_name(value: str) -> str:
    """--dataset's argparse type: a registered name, or a paper's spelling of one (its alias)."""
    for name in DATASETS.names():
        entry = DATASETS.get(name)
        if isinstance(entry, DatasetEntry) and value in entry.aliases:
            return name
    return value


def build_dataset(name: str, options: DataOptions) -> LongTailData:
    """The long-tailed data named ``name`` (see ``DATASETS.names()``), built from ``options``."""
    return DATASETS.build(name, options)


__all__ = [
    "DATASETS",
    "DataOptions",
    "DatasetEntry",
    "DatasetError",
    "ImageDataset",
    "ImageSource",
    "LongTailData",
    "build_dataset",
    "dataset_entry",
    "dataset_name",
]
