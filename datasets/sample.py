"""The bundled CIFAR-10 sample: runs every CIFAR code path offline, in seconds.

``sample_data/cifar10_sample`` holds a balanced slice of CIFAR-10 (500 training and 100 test
images per class, JPEG files with ``train.txt`` / ``test.txt`` / ``classes.txt``; see
``scripts/make_sample.py``). It is decoded into memory like the CIFAR pickles and cut with the
same long-tail recipe, with n_max = 500, so ``--imb_factor 0.01`` gives 500, 299, ..., 5.

``--data_root`` may point at any folder with the same layout instead; a full CIFAR-10 JPEG folder
(5,000 images per class, train.txt in the original order) then gives n_max = 5000 and the same
images as ``--dataset cifar10`` on pickles made from those JPEGs.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np
from PIL import Image

from .base import DataOptions, DatasetError, ImageSource, LongTailData
from .cifar_lt import CIFAR_MEAN, CIFAR_STD, build_long_tail
from .list_dataset import text_lines

# Resolved from this file, not the working directory, so scripts run from anywhere find it.
SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sample_data", "cifar10_sample")


def sample_root(data_root: str) -> str:
    """The folder to read: ``data_root`` when it holds ``train.txt``, else the bundled sample.

    A ``data_root`` other than the default that lacks ``train.txt`` is an error, so a mistyped
    path never falls back to the sample silently.
    """
    if os.path.isfile(os.path.join(data_root, "train.txt")):
        return data_root
    if os.path.normpath(data_root) == os.path.normpath(DataOptions.data_root):
        return SAMPLE_DIR
    raise DatasetError(
        f"--data_root {data_root} has no train.txt; leave --data_root at its default to use the bundled "
        f"sample in {SAMPLE_DIR}"
    )


def _read_lines(path: str) -> List[Tuple[str, int]]:
    if not os.path.isfile(path):
        raise DatasetError(f"sample list not found: {path} (regenerate it with scripts/make_sample.py)")
    entries = []
    for line_number, line in text_lines(path):  # other encodings name the file and line
        fields = line.strip().rsplit(None, 1)
        if not fields:
            continue
        if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
            raise DatasetError(f"{path}:{line_number}: expected 'relative/path label', got {line.strip()!r}")
        entries.append((fields[0], int(fields[1])))
    if not entries:
        raise DatasetError(f"sample list is empty: {path}")
    return entries


def decode_images(root: str, entries: List[Tuple[str, int]]) -> ImageSource:
    """Decodes every listed image into one uint8 N x H x W x 3 array (all must share a size).

    Plain PIL, one image at a time: the 6,000 sample images take about a second. Threads do not
    help, because the time goes to PIL's Python-level header parsing, which holds the GIL.
    """
    array = None
    for i, (relative, _) in enumerate(entries):
        path = os.path.join(root, relative)
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except OSError as error:  # missing, unreadable or not an image
            raise DatasetError(f"cannot read image {path}: {error}") from error
        if array is None:
            array = np.empty((len(entries), *pixels.shape), dtype=np.uint8)
        if pixels.shape != array.shape[1:]:
            raise DatasetError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, the first image "
                               f"{array.shape[2]}x{array.shape[1]}; all images must share one size")
        array[i] = pixels
    return ImageSource(np.asarray([label for _, label in entries], dtype=np.int64), array=array)


def cifar10_sample(options: DataOptions) -> LongTailData:
    """CIFAR-10-LT cut from the bundled sample (or from any folder laid out the same way)."""
    root = sample_root(options.data_root)
    classes_path = os.path.join(root, "classes.txt")
    if not os.path.isfile(classes_path):
        raise DatasetError(f"class list not found: {classes_path}")
    class_names = [line.strip() for _, line in text_lines(classes_path) if line.strip()]
    train = decode_images(root, _read_lines(os.path.join(root, "train.txt")))
    test = decode_images(root, _read_lines(os.path.join(root, "test.txt")))
    return build_long_tail("cifar10_sample", train, test, class_names, options, CIFAR_MEAN, CIFAR_STD)
