"""CIFAR-10-LT and CIFAR-100-LT from the standard pickle files (ALGORITHMS.md 4.1).

The pickles are read directly, without torchvision's md5 check, so re-encoded copies (whose
md5 differs from the official files') load. Only missing files trigger a download, and the
downloaded archive is md5-checked by torchvision.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from .base import DataOptions, DatasetError, ImageSource, LongTailData
from .longtail import balanced_validation_indices, class_counts, leftover_indices, select_indices

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant's files live and how its pickles name things."""

    folder: str  # directory below data_root that the archive extracts to
    train_files: Tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str  # 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100)
    names_key: str  # class-name list in the meta pickle
    url: str
    md5: str  # of the archive; only checked on download


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)


def _missing_files(root: str, layout: CifarLayout) -> List[str]:
    names = (*layout.train_files, layout.test_file, layout.meta_file)
    paths = [os.path.join(root, layout.folder, name) for name in names]
    return [path for path in paths if not os.path.isfile(path)]


def _not_found_message(root: str, layout: CifarLayout, missing: Sequence[str], reason: str) -> str:
    return (
        f"{reason}: {missing[0]} is missing. Put the extracted '{layout.folder}' folder under "
        f"--data_root {root} (archive: {layout.url}), or run offline on the bundled sample with "
        f"--dataset cifar10_sample"
    )


def ensure_cifar_files(root: str, layout: CifarLayout, download: bool) -> None:
    """Makes sure every pickle is present, downloading the archive when allowed.

    Files already on disk are trusted as they are (no md5), so re-encoded copies work.
    """
    missing = _missing_files(root, layout)
    if not missing:
        return
    if not download:
        raise DatasetError(_not_found_message(root, layout, missing, "CIFAR files not found and download is off"))
    # Imported here: torchvision is only needed when something has to be fetched.
    from torchvision.datasets import utils as tv_utils

    try:
        tv_utils.download_and_extract_archive(
            layout.url, download_root=root, filename=os.path.basename(layout.url), md5=layout.md5
        )
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad md5 is a RuntimeError
        message = _not_found_message(root, layout, missing, f"cannot download CIFAR ({error})")
        raise DatasetError(message) from error
    missing = _missing_files(root, layout)
    if missing:
        raise DatasetError(_not_found_message(root, layout, missing, "the downloaded archive is incomplete"))


def _read_pickle(path: str) -> dict:
    try:
        with open(path, "rb") as handle:
            # latin1 turns the Python 2 byte strings of the official files into str keys.
            return pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise DatasetError(f"cannot read CIFAR pickle {path}: {error}") from error


def _read_batches(root: str, layout: CifarLayout, names: Sequence[str]) -> ImageSource:
    arrays, labels = [], []
    for name in names:
        path = os.path.join(root, layout.folder, name)
        entry = _read_pickle(path)
        if "data" not in entry or layout.label_key not in entry:
            raise DatasetError(f"{path} lacks the keys 'data' and '{layout.label_key}'")
        data = np.asarray(entry["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DatasetError(f"{path}: expected N x 3072 pixel rows, got shape {data.shape}")
        # Rows are channel-planar (R plane, G plane, B plane); the containers want N x H x W x 3.
        arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(entry[layout.label_key], dtype=np.int64))
    return ImageSource(np.concatenate(labels), array=np.ascontiguousarray(np.concatenate(arrays)))


def read_cifar(root: str, layout: CifarLayout, download: bool) -> Tuple[ImageSource, ImageSource, List[str]]:
    """The full (balanced) training set, the test set and the class names of one CIFAR variant."""
    ensure_cifar_files(root, layout, download)
    train = _read_batches(root, layout, layout.train_files)
    test = _read_batches(root, layout, (layout.test_file,))
    meta_path = os.path.join(root, layout.folder, layout.meta_file)
    meta = _read_pickle(meta_path)
    if layout.names_key not in meta:
        raise DatasetError(f"{meta_path} lacks the key '{layout.names_key}'")
    return train, test, [str(n) for n in meta[layout.names_key]]


def build_long_tail(
    name: str,
    train: ImageSource,
    test: ImageSource,
    class_names: List[str],
    options: DataOptions,
    mean: Tuple[float, float, float] = CIFAR_MEAN,
    std: Tuple[float, float, float] = CIFAR_STD,
) -> LongTailData:
    """Cuts a balanced training set into the CIFAR-LT recipe (ALGORITHMS.md 4.1, 4.3).

    n_max is the per-class size of the balanced file, len / C as in the reference code (5000 for
    CIFAR-10, 500 for CIFAR-100 and the bundled sample). ``val`` (when ``val_per_class`` > 0)
    comes from the images the subset left, and ``unlabeled`` is what remains after both, with its
    true labels kept for pool selection; it is None when nothing remains.
    """
    num_classes = len(class_names)
    for source, split in ((train, "training"), (test, "test")):
        if len(source) and (source.targets.min() < 0 or source.targets.max() >= num_classes):
            raise DatasetError(f"{name}: {split} labels must lie in 0..{num_classes - 1} (one per class name)")
    try:
        counts = class_counts(len(train) // num_classes, num_classes, options.imb_type, options.imb_factor)
        selected = select_indices(train.targets, counts, options.lt_selection, options.lt_seed)
        val_idx = balanced_validation_indices(train.targets, selected, options.val_per_class, options.lt_seed)
    except ValueError as error:
        raise DatasetError(f"{name}: {error}") from error
    pool = leftover_indices(train.targets, np.concatenate([selected, val_idx]))
    return LongTailData(
        name=name,
        num_classes=num_classes,
        train=train.subset(selected),
        test=test,
        train_counts=counts,
        mean=mean,
        std=std,
        image_size=int(train.array.shape[1]),
        class_names=list(class_names),
        val=train.subset(val_idx) if options.val_per_class > 0 else None,
        unlabeled=train.subset(pool) if len(pool) else None,
        train_indices=selected,
    )


def cifar10(options: DataOptions) -> LongTailData:
    """CIFAR-10-LT: 5000 images per class before the cut; rho=100 keeps 12,406."""
    train, test, names = read_cifar(options.data_root, CIFAR10, options.download)
    return build_long_tail("cifar10", train, test, names, options)


def cifar100(options: DataOptions) -> LongTailData:
    """CIFAR-100-LT: 500 images per class before the cut; rho=100 keeps 10,847."""
    train, test, names = read_cifar(options.data_root, CIFAR100, options.download)
    return build_long_tail("cifar100", train, test, names, options)
