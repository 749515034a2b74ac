"""Containers shared by every dataset: where images live and what a long-tailed split holds."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image


class DatasetError(RuntimeError):
    """A dataset file or option is wrong; the message says which and how to fix it."""


@contextlib.contextmanager
def download_folder(root: str) -> Iterator[None]:
    """A download into ``root`` that fails (offline, a bad md5) takes with it the folders it
    created, the partial archive included: a mistyped --data_root leaves no stray folder behind,
    and a folder that existed before is left with what it held."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # Every rank builds the data: another process may be writing into the folder right now.
        yield
        return
    created = None  # the outermost folder of root's path that does not exist yet
    path = os.path.abspath(root)
    while not os.path.exists(path):
        created, path = path, os.path.dirname(path)
    try:
        yield
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


@contextlib.contextmanager
def staging_folder(root: str) -> Iterator[str]:
    """A folder inside ``root`` that only this process writes (named by host and process id), for
    a download and its extraction; removed afterwards, whatever happened. Files move from it into
    place with ``os.replace`` only once complete and md5-checked, so an interrupted download leaves
    nothing a later run would trust, and processes fetching at once (DDP ranks, two runs on one
    --data_root) never write into one file."""
    prefix = f".download-{socket.gethostname()}-"
    remove_abandoned_staging(root, prefix)
    path = os.path.join(root, f"{prefix}{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_abandoned_staging(root: str, prefix: str) -> List[str]:
    """Deletes the staging folders (``prefix`` + process id) of this host's processes that are
    gone: one killed mid-download (SIGKILL, a lost session) never ran its cleanup. A live
    process's folder, and another host's (its processes cannot be checked from here), stay.
    Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        pid = name[len(prefix):]
        if not name.startswith(prefix) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0 only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(name)
        except OSError:  # alive, another user's (EPERM)
            pass
    return removed


def move_missing(source: str, target: str) -> None:
    """Moves each file of ``source`` to ``target`` where ``target`` lacks it; a file already there
    (put there by the user, or by another process a moment ago) is kept."""
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        if not os.path.lexists(os.path.join(target, name)):
            os.replace(os.path.join(source, name), os.path.join(target, name))


@dataclass(frozen=True)
class DataOptions:
    """What the command line says about the data; every dataset factory takes one."""

    data_root: str = "./data"  # images / pickles live here (CIFAR: cifar-10-batches-py/ below it)
    imb_type: str = "exp"  # 'exp' or 'step' per-class counts (CIFAR-style datasets)
    imb_factor: float = 0.01  # 1 / imbalance ratio, in (0, 1]
    lt_selection: str = "shuffle"  # 'shuffle' (LDAM-DRW, seeded per class) or 'first' (file order)
    lt_seed: int = 0  # NumPy seed of the 'shuffle' selection
    val_per_class: int = 0  # balanced validation images per class, from images the LT subset left
    split_dir: Optional[str] = None  # folder of ImageNet-LT / iNat / Places-LT list files
    train_list: Optional[str] = None  # explicit list files override split_dir
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    download: bool = True  # fetch missing CIFAR files (md5-checked) when the network allows


@dataclass
class ImageSource:
    """N labelled images, either in memory (uint8, N x H x W x 3) or as files on disk."""

    targets: np.ndarray  # int64, (N,)
    array: Optional[np.ndarray] = None  # uint8, (N, H, W, 3), RGB
    paths: Optional[List[str]] = None  # absolute file paths, one per image

    def __post_init__(self):
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if (self.array is None) == (self.paths is None):
            raise ValueError("an ImageSource holds either an array or paths, not both")
        if len(self) != len(self.targets):
            raise ValueError(f"{len(self)} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.paths)

    @property
    def in_memory(self) -> bool:
        return self.array is not None

    def load(self, index: int) -> Image.Image:
        if self.array is not None:
            return Image.fromarray(self.array[index])
        return load_image(self.paths[index])

    def subset(self, indices: Sequence[int]) -> "ImageSource":
        indices = np.asarray(indices, dtype=np.int64)
        if self.array is not None:
            return ImageSource(self.targets[indices], array=self.array[indices])
        return ImageSource(self.targets[indices], paths=[self.paths[i] for i in indices])


def load_image(path: str) -> Image.Image:
    """Opens one image as RGB, or says which file is missing or unreadable."""
    if not os.path.isfile(path):
        raise DatasetError(f"image not found: {path} (check --data_root and the list file)")
    try:
        with Image.open(path) as image:
            if image.mode in WIDE_MODES:
                # convert("RGB") clips 16- and 32-bit values to 255: the image would train as white.
                raise DatasetError(f"image {path} has {image.mode} pixels (16-bit or wider), which this toolkit "
                                   "does not read: convert it to 8-bit RGB or grayscale")
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as error:  # the bomb check is no OSError
        raise DatasetError(f"cannot read image {path}: {error}; replace the file or remove its line from the "
                           "list") from None


# PIL modes of more than 8 bits per channel.
WIDE_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


@dataclass
class LongTailData:
    """A long-tailed training set with its balanced evaluation sets, as every method sees it."""

    name: str
    num_classes: int
    train: ImageSource
    test: ImageSource
    train_counts: List[int]  # images per class in `train`, class 0 first
    mean: Tuple[float, float, float]  # per-channel mean of [0, 1] pixels, for normalisation
    std: Tuple[float, float, float]
    image_size: int  # side of the network input: 32 for CIFAR-style, 224 for ImageNet-style
    class_names: List[str] = field(default_factory=list)
    val: Optional[ImageSource] = None  # balanced validation split when requested
    unlabeled: Optional[ImageSource] = None  # training images the LT subset left out (true labels kept)
    train_indices: Optional[np.ndarray] = None  # positions of `train` in the original training file
    val_indices: Optional[np.ndarray] = None  # positions of `val` there, when it was cut from it

    @property
    def style(self) -> str:
        """'cifar' for small images (in-memory, 32 px), 'imagenet' for large file-based sets."""
        return "cifar" if self.image_size <= 64 else "imagenet"


class ImageDataset(torch.utils.data.Dataset):
    """Applies a transform (PIL image -> uint8 tensor, or a tuple of them) to an ImageSource.

    Items are ``(views, target, index)``; ``index`` lets methods keep per-sample state.
    """

    def __init__(self, source: ImageSource, transform: Callable):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.transform(self.source.load(index)), int(self.source.targets[index]), index
