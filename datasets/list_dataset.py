"""File-list datasets: ImageNet-LT, iNaturalist 2018, Places-LT and any ``path label`` list.

Each split file has one ``relative/path label`` line per image (docs/data.md#split-lists); paths are
relative to ``--data_root``. The lists are already long-tailed, so the CIFAR recipe flags
(--imb_factor, --imb_type, --lt_selection) do not apply here. Images are opened lazily when a
batch needs them; only the first image of each list is checked up front, so a wrong --data_root
fails at once instead of minutes into the first epoch.
"""
from __future__ import annotations

import codecs
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from .base import DataOptions, DatasetError, ImageSource, LongTailData

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INAT_MEAN = (0.466, 0.471, 0.380)
INAT_STD = (0.195, 0.194, 0.192)


@dataclass(frozen=True)
class ListLayout:
    """The upstream file names of one list-based benchmark (None: the split does not exist)."""

    train: str
    val: Optional[str]
    test: Optional[str]  # None: the validation list doubles as the test set (iNaturalist)
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD


IMAGENET_LT = ListLayout("ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt")
INAT2018 = ListLayout("iNaturalist18_train.txt", "iNaturalist18_val.txt", None, INAT_MEAN, INAT_STD)
PLACES_LT = ListLayout("Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt")


def text_lines(path: str) -> Iterator[Tuple[int, str]]:
    """Numbered lines of a UTF-8 text file (a UTF-8 byte-order mark is allowed).

    Lists are decoded line by line, so a file in another encoding (UTF-16, Latin-1 file names)
    names its file and first bad line instead of raising a UnicodeDecodeError from somewhere in it.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise DatasetError(f"cannot read {path}: {error.strerror or error}") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DatasetError(f"{path}:1: UTF-16 text (a UTF-16 byte-order mark): save the file as UTF-8")
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if b"\0" in line:  # UTF-16 without a byte-order mark decodes as 'valid' UTF-8 with NULs
            raise DatasetError(f"{path}:{number}: the line holds NUL bytes (UTF-16 text?): save the file as UTF-8")
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DatasetError(f"{path}:{number}: byte 0x{line[error.start]:02x} at column {error.start + 1} is "
                               "not UTF-8 (a Latin-1 or other legacy encoding?): save the file as UTF-8") from None


def read_list(list_path: str, data_root: str) -> ImageSource:
    """Parses a ``relative/path label`` file into a lazy, file-backed ImageSource.

    The label is the last whitespace-separated field, so paths may contain spaces. Blank lines
    are skipped; anything else that does not parse names the file and the line number.
    """
    if not os.path.isfile(list_path):
        raise DatasetError(f"list file not found: {list_path} (set --split_dir or the --*_list flags)")
    root = os.path.abspath(data_root)  # ImageSource keeps absolute paths, valid from any cwd
    paths: List[str] = []
    labels: List[int] = []
    seen: Dict[str, int] = {}  # path -> first line: a repeated line would count its image twice
    for line_number, line in text_lines(list_path):
        line = line.strip()
        if not line:
            continue
        fields = line.rsplit(None, 1)
        # ASCII digits only: str.isdigit() also accepts '²', which int() refuses.
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise DatasetError(
                f"{list_path}:{line_number}: expected 'relative/path label' with an integer label >= 0, got {line!r}"
            )
        if fields[0] in seen:
            raise DatasetError(f"{list_path}:{line_number}: {fields[0]} is listed again (first on line "
                               f"{seen[fields[0]]}), which would count it twice: remove the repeated line")
        seen[fields[0]] = line_number
        paths.append(os.path.join(root, fields[0]))
        labels.append(int(fields[1]))
    if not paths:
        raise DatasetError(f"list file is empty: {list_path}")
    first = paths[0]
    if not os.path.isfile(first):
        raise DatasetError(f"image not found: {first} (first entry of {list_path}; check --data_root)")
    return ImageSource(np.asarray(labels, dtype=np.int64), paths=paths)


def _check_labels(source: ImageSource, list_path: str, num_classes: Optional[int]) -> int:
    """Returns C for a training list (labels must be exactly 0..C-1), or checks labels < C."""
    if num_classes is None:
        num_classes = int(source.targets.max()) + 1
        absent = np.setdiff1d(np.arange(num_classes), source.targets)
        if len(absent):
            shown = ", ".join(str(c) for c in absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise DatasetError(
                f"{list_path}: labels must be 0..{num_classes - 1} with every class present; missing {shown}"
            )
    elif source.targets.max() >= num_classes:
        raise DatasetError(
            f"{list_path}: label {int(source.targets.max())} is outside the training classes 0..{num_classes - 1}"
        )
    return num_classes


def _class_names(train_list: str, num_classes: int) -> List[str]:
    """Names from a ``classes.txt`` beside the training list, when one is there."""
    path = os.path.join(os.path.dirname(os.path.abspath(train_list)), "classes.txt")
    if not os.path.isfile(path):
        return []
    names = [line.strip() for _, line in text_lines(path) if line.strip()]
    if len(names) != num_classes:
        raise DatasetError(f"{path} names {len(names)} classes but {train_list} has {num_classes}")
    return names


def build_from_lists(
    name: str,
    options: DataOptions,
    train_list: str,
    val_list: Optional[str],
    test_list: str,
    mean: Tuple[float, float, float] = IMAGENET_MEAN,
    std: Tuple[float, float, float] = IMAGENET_STD,
) -> LongTailData:
    """Reads the lists and returns the long-tailed split with counts from the training list."""
    if options.val_per_class > 0:
        raise DatasetError(
            f"--val_per_class applies to CIFAR-style datasets; {name} has its own validation list (--val_list)"
        )
    train = read_list(train_list, options.data_root)
    num_classes = _check_labels(train, train_list, None)
    test = read_list(test_list, options.data_root)
    _check_labels(test, test_list, num_classes)
    val = None
    if val_list is not None:
        val = read_list(val_list, options.data_root)
        _check_labels(val, val_list, num_classes)
    return LongTailData(
        name=name,
        num_classes=num_classes,
        train=train,
        test=test,
        train_counts=np.bincount(train.targets, minlength=num_classes).tolist(),
        mean=mean,
        std=std,
        image_size=224,
        class_names=_class_names(train_list, num_classes),
        val=val,
        train_indices=np.arange(len(train), dtype=np.int64),
    )


def _benchmark(name: str, layout: ListLayout, options: DataOptions) -> LongTailData:
    """Resolves the upstream file names in --split_dir (default: --data_root), flags first."""
    split_dir = options.split_dir or options.data_root

    def resolve(override: Optional[str], default: Optional[str]) -> Optional[str]:
        if override is not None:
            return override
        return os.path.join(split_dir, default) if default is not None else None

    train_list = resolve(options.train_list, layout.train)
    if layout.test is None:
        # iNaturalist 2018 has no public test labels; every repo reports on the upstream validation
        # list, so that file is the test set here and only a --val_list of one's own validates.
        test_list = resolve(options.test_list, layout.val)
        val_list = options.val_list
    else:
        val_list = resolve(options.val_list, layout.val)
        test_list = resolve(options.test_list, layout.test)
    if val_list is not None and os.path.realpath(val_list) == os.path.realpath(test_list):
        # Selecting on it would be selecting on the test set under the name "validation".
        raise DatasetError(f"--val_list {val_list} is the test list of {name}: give a validation list of "
                           "images outside the test set (or none)")
    return build_from_lists(name, options, train_list, val_list, test_list, layout.mean, layout.std)


def imagenet_lt(options: DataOptions) -> LongTailData:
    """ImageNet-LT (Liu et al. 2019): 1000 classes, 1280..5 training images, 50k balanced test."""
    return _benchmark("imagenet_lt", IMAGENET_LT, options)


def inat2018(options: DataOptions) -> LongTailData:
    """iNaturalist 2018: 8142 classes; the 3-per-class validation list is the test set."""
    return _benchmark("inat2018", INAT2018, options)


def places_lt(options: DataOptions) -> LongTailData:
    """Places-LT (Liu et al. 2019): 365 classes, ImageNet normalisation as in OLTR."""
    return _benchmark("places_lt", PLACES_LT, options)


def image_list(options: DataOptions) -> LongTailData:
    """Any long-tailed set given as --train_list / --test_list (and optionally --val_list).

    Treated ImageNet-style: 224 px inputs, ImageNet mean and std, class names from a
    ``classes.txt`` beside the training list if present.
    """
    if options.train_list is None or options.test_list is None:
        raise DatasetError("dataset image_list needs --train_list and --test_list ('relative/path label' files)")
    return build_from_lists("image_list", options, options.train_list, options.val_list, options.test_list)
