"""SVHN-LT, the second benchmark of Yang & Xu, "Rethinking the Value of Labels for Improving
Class-Imbalanced Learning" (NeurIPS 2020), docs/semi_self.md#svhn-lt, with SVHN's ``extra`` split as the
unlabelled pool of the semi-supervised setting (``datasets.semi.svhn_extra_pool``).

The long-tailed cut follows the reference ``dataset/imbalance_svhn.py``: n_max = 1000 images per
class (not len / C: SVHN itself is imbalanced), and the digit 0 takes the LAST place of the count
profile, since it is the rarest digit of the training split. Labels stay the digits (0 is 0, as in
torchvision; the files say 10), so digit 1 is the head class and digit 0 the tail:
``train_counts[d]`` is the profile's entry number (d - 1) mod 10. The per-class shuffles run in
that profile order from one seeded generator, so the selected images are the reference's.
Test set: the full SVHN test split (26,032 images, itself imbalanced), as in the reference.

Files: the torchvision layout, ``<data_root>/{train,test,extra}_32x32.mat``; a missing file is
downloaded (md5-checked by torchvision) when ``--download`` allows. Reading needs SciPy.
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from datasets import DATASETS, DatasetEntry

from .base import DataOptions, DatasetError, ImageSource, LongTailData, download_folder, staging_folder
from .longtail import balanced_validation_indices, class_counts, leftover_indices, select_indices

SVHN_MAX_PER_CLASS = 1000
SVHN_MEAN = (0.5, 0.5, 0.5)
SVHN_STD = (0.5, 0.5, 0.5)
SPLITS = ("train", "test", "extra")


def split_file(split: str) -> Tuple[str, str, str]:
    """(url, file name, md5) of an SVHN split, from torchvision's own table."""
    if split not in SPLITS:
        raise ValueError(f"SVHN split must be one of {', '.join(SPLITS)}, got '{split}'")
    from torchvision.datasets import SVHN

    url, filename, md5 = SVHN.split_list[split]
    return url, filename, md5


def ensure_svhn_file(root: str, split: str, download: bool) -> str:
    """Path of the split's ``.mat`` file, downloading it when missing and allowed.

    Files already on disk are trusted as they are; only a download is md5-checked.
    """
    url, filename, md5 = split_file(split)
    path = os.path.join(root, filename)
    if os.path.isfile(path):
        return path
    hint = f"put {filename} under --data_root {root} (from {url})"
    if not download:
        raise DatasetError(f"SVHN file not found and download is off: {path}; {hint}")
    # Imported here: torchvision's downloader is only needed when something has to be fetched.
    from torchvision.datasets import utils as tv_utils

    try:
        with download_folder(root), staging_folder(root) as staging:
            tv_utils.download_url(url, staging, filename=filename, md5=md5)
            os.replace(os.path.join(staging, filename), path)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad md5 is a RuntimeError
        raise DatasetError(f"cannot download SVHN {split} ({error}); {hint}") from error
    if not os.path.isfile(path):
        raise DatasetError(f"the SVHN download did not produce {path}; {hint}")
    return path


def read_svhn_split(root: str, split: str, download: bool = True) -> ImageSource:
    """One split as uint8 (N, 32, 32, 3) pixels with digit labels 0..9 (the files' 10 becomes 0)."""
    path = ensure_svhn_file(root, split, download)
    try:
        from scipy import io as sio
    except ImportError as error:
        raise DatasetError("reading SVHN's .mat files needs SciPy: pip install scipy") from error
    try:
        entry = sio.loadmat(path)
    except Exception as error:  # noqa: BLE001 - scipy's MatReadError, IndexError, ... on a cut or damaged file
        raise DatasetError(f"cannot read {path} ({type(error).__name__}: {error}): the file is incomplete or "
                           "damaged; delete it and run again with --download True to fetch it") from error
    if "X" not in entry or "y" not in entry:
        raise DatasetError(f"{path} lacks the variables 'X' and 'y' of the SVHN format")
    pixels = np.asarray(entry["X"])
    if pixels.ndim != 4 or pixels.shape[2] != 3:
        raise DatasetError(f"{path}: 'X' must be 32 x 32 x 3 x N, got shape {pixels.shape}")
    labels = np.asarray(entry["y"], dtype=np.int64).reshape(-1)
    labels[labels == 10] = 0
    if labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{path}: labels must be the digits 1..10, got {labels.min()}..{labels.max()}")
    # The files store H x W x C x N; the containers want N x H x W x C.
    array = np.ascontiguousarray(pixels.transpose(3, 0, 1, 2).astype(np.uint8, copy=False))
    return ImageSource(labels, array=array)


def profile_rank(digits: np.ndarray) -> np.ndarray:
    """Place of each digit in the count profile: 1 -> 0 (head), ..., 9 -> 8, 0 -> 9 (tail)."""
    return (np.asarray(digits, dtype=np.int64) - 1) % 10


def svhn_lt(options: DataOptions) -> LongTailData:
    """SVHN-LT: up to 1000 training images per digit, digit 0 last; rho = 100 keeps 2,478."""
    train = read_svhn_split(options.data_root, "train", options.download)
    test = read_svhn_split(options.data_root, "test", options.download)
    try:
        profile = class_counts(SVHN_MAX_PER_CLASS, 10, options.imb_type, options.imb_factor)
        # Selecting on profile ranks shuffles the classes in the reference's order 1..9, 0.
        selected = select_indices(profile_rank(train.targets), profile, options.lt_selection, options.lt_seed)
        val_idx = balanced_validation_indices(train.targets, selected, options.val_per_class, options.lt_seed)
    except ValueError as error:
        raise DatasetError(f"svhn: {error}") from error
    pool = leftover_indices(train.targets, np.concatenate([selected, val_idx]))
    return LongTailData(
        name="svhn",
        num_classes=10,
        train=train.subset(selected),
        test=test,
        train_counts=[profile[int(rank)] for rank in profile_rank(np.arange(10))],
        mean=SVHN_MEAN,
        std=SVHN_STD,
        image_size=32,
        class_names=[str(digit) for digit in range(10)],
        val=train.subset(val_idx) if options.val_per_class > 0 else None,
        val_indices=val_idx if options.val_per_class > 0 else None,
        unlabeled=train.subset(pool) if len(pool) else None,
        train_indices=selected,
    )


DATASETS.register("svhn")(DatasetEntry(svhn_lt, "cifar", "resnet32"))
