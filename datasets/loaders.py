"""Batches for training and evaluation, behind one interface.

Every loader yields ``(views, targets, indices)`` with uint8 images (N, 3, H, W) — a tensor, or a
tuple of tensors for multi-view recipes — on the CPU; the engine moves them to the device and
normalises there. Shuffling and re-sampling are seeded from (seed, epoch), never from the global
generator, so a resumed run draws exactly the batches the uninterrupted run would have drawn.

Evaluation loaders come from one function (``build_eval_loaders``) for training and test.py
alike, and file-based evaluation sets are checked image by image before training starts
(``check_evaluation_images``). A ``DatasetError`` raised in a DataLoader worker reaches the
caller as its own one-line message, not wrapped in the worker's traceback.
"""
from __future__ import annotations

import dataclasses
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from datasets.base import WIDE_MODES, DataOptions, DatasetError, ImageDataset, ImageSource, LongTailData


class ShuffleSampler(Sampler[int]):
    """Uniform shuffling seeded by (seed, epoch), split across DDP ranks (padded by wrapping)."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __len__(self) -> int:
        return -(-self.size // self.world_size)

    def __iter__(self) -> Iterator[int]:
        order = self._global_order().tolist()
        total = len(self) * self.world_size
        order += order[: total - len(order)]
        return iter(order[self.rank:total:self.world_size])


class EpochBatches:
    """Batches of a sampler's positions for one epoch at a time: what every training loader shares."""

    sampler: Sampler
    batch_size: int
    drop_last: bool
    epoch: int

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order (and augmentation seeds) the next ``__iter__`` yields."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class EpochLoader(EpochBatches):
    """A DataLoader whose sampler and worker seeds follow the epoch (``set_epoch``)."""

    def __init__(self, dataset: ImageDataset, batch_size: int, sampler: Sampler, workers: int,
                 drop_last: bool, seed: int, pin_memory: bool = False):
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.workers, self.drop_last, self.seed, self.pin_memory = workers, drop_last, seed, pin_memory
        self.epoch = 0

    def __iter__(self):
        # Worker seeds derive from this generator; with no workers, the transforms draw from the
        # global torch generator, whose state the checkpoint restores at epoch boundaries.
        rank = getattr(self.sampler, "rank", 0)  # each DDP rank augments its images differently
        generator = torch.Generator().manual_seed((self.seed * 7919 + self.epoch) * 1009 + rank)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=self.sampler,
                            num_workers=self.workers, drop_last=self.drop_last, generator=generator,
                            pin_memory=self.pin_memory, persistent_workers=False)
        return one_line_worker_errors(loader)


# The last traceback line of an exception re-raised from a worker: "module.Class: message".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: (.*)$")


def one_line_worker_errors(batches: Iterable) -> Iterator:
    """Iterates `batches` (a DataLoader); a ``DatasetError`` from a worker process, which PyTorch
    re-raises with the worker's whole traceback as its message, is raised again with the
    worker's original one-line message, so the user sees what they would see without workers."""
    try:
        yield from batches
    except DatasetError as error:
        text = str(error)
        if "Original Traceback" not in text:
            raise
        lines = [line for line in text.splitlines() if line.strip()]
        match = next((m for m in map(_EXCEPTION_LINE.match, reversed(lines)) if m), None)
        raise DatasetError(match.group(1) if match else lines[-1]) from None


class ArrayEvalBatches:
    """Un-augmented batches straight from an in-memory uint8 array (no per-image PIL work).

    Under DDP each rank takes positions rank::world_size, so every test image is seen once.
    """

    def __init__(self, source: ImageSource, batch_size: int, rank: int = 0, world_size: int = 1):
        if not source.in_memory:
            raise ValueError("ArrayEvalBatches needs an in-memory ImageSource")
        self.positions = np.arange(rank, len(source), world_size)
        self.images = torch.from_numpy(source.array[self.positions]).permute(0, 3, 1, 2)
        self.targets = torch.from_numpy(source.targets[self.positions])
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.positions), self.batch_size):
            stop = start + self.batch_size
            yield (self.images[start:stop].contiguous(), self.targets[start:stop],
                   torch.from_numpy(self.positions[start:stop]))


def build_train_loader(source: ImageSource, transform: Callable, batch_size: int, *,
                       sampler: Optional[Sampler] = None, workers: int = 0, drop_last: bool = False,
                       seed: int = 0, rank: int = 0, world_size: int = 1,
                       pin_memory: bool = False) -> EpochLoader:
    """`batch_size` is per process (the engine divides the global batch among DDP ranks)."""
    sampler = sampler or ShuffleSampler(len(source), seed=seed, rank=rank, world_size=world_size)
    return EpochLoader(ImageDataset(source, transform), batch_size, sampler, workers, drop_last, seed,
                       pin_memory)


class EvalLoader:
    """A DataLoader over an evaluation set whose worker errors stay one line."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        return one_line_worker_errors(self.loader)


def build_eval_loader(source: ImageSource, transform: Optional[Callable], batch_size: int, *,
                      workers: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
    """In-memory sets with no transform are sliced directly; others go through a DataLoader."""
    if transform is None and source.in_memory:
        return ArrayEvalBatches(source, batch_size, rank, world_size)
    if transform is None:
        raise ValueError("file-based evaluation needs a transform (resize / crop)")
    sampler = ShuffleSampler(len(source), rank=rank, world_size=1, shuffle=False)
    positions = list(range(rank, len(source), world_size))
    return EvalLoader(DataLoader(ImageDataset(source, transform), batch_size=batch_size,
                                 sampler=positions if world_size > 1 else sampler, num_workers=workers,
                                 pin_memory=pin_memory))


def eval_batch_size(batch_per_rank: int, style: str) -> int:
    """Images per evaluation batch and process: the training batch, and at least 256 small or 64
    large images (evaluation keeps no activations for a backward pass)."""
    return max(batch_per_rank, 256 if style == "cifar" else 64)


def build_eval_loaders(data: LongTailData, batch_per_rank: int, *, workers: int = 0, rank: int = 0,
                       world_size: int = 1, pin_memory: bool = False,
                       batch_size: Optional[int] = None) -> Dict[str, object]:
    """Loaders of the test and (when present) validation splits, built the same way for the
    training log and for test.py, so both score a checkpoint with the same batches and resize.

    `batch_per_rank` is the training batch per process; `batch_size` overrides the evaluation
    batch it implies (``eval_batch_size``).
    """
    # Imported here: the augment package pulls in torchvision (seconds), which test.py would
    # otherwise pay before it can refuse a bad checkpoint.
    from datasets.augment import build_transform

    transform = None if data.style == "cifar" else build_transform("test", data.style, data.image_size)
    batch = batch_size or eval_batch_size(batch_per_rank, data.style)
    loaders = {}
    for split, source in (("test", data.test), ("val", data.val)):
        if source is not None and len(source):
            loaders[split] = build_eval_loader(source, transform, batch, workers=workers, rank=rank,
                                               world_size=world_size, pin_memory=pin_memory)
    return loaders


# ---- data paths and evaluation images, checked before any training -------------------------------
PATH_OPTIONS = ("data_root", "split_dir", "train_list", "val_list", "test_list")


def absolute_data_options(name: str, options: DataOptions, base: Optional[str] = None) -> DataOptions:
    """`options` with every path made absolute against `base` (default: the working directory),
    as checkpoints record them: a relative --data_root would otherwise mean whatever folder
    test.py happens to run in. The bundled sample's default root stands for the sample folder,
    unless it holds a sample of its own (a train.txt), which is then what was read
    (datasets.sample.sample_root)."""
    base = os.getcwd() if base is None else base
    changes = {key: os.path.normpath(os.path.join(base, getattr(options, key)))
               for key in PATH_OPTIONS if getattr(options, key) is not None}
    if (name == "cifar10_sample" and os.path.normpath(options.data_root) == os.path.normpath(DataOptions.data_root)
            and not os.path.isfile(os.path.join(changes["data_root"], "train.txt"))):
        from datasets.sample import SAMPLE_DIR

        changes["data_root"] = SAMPLE_DIR
    return dataclasses.replace(options, **changes)


def _list_files(name: str, options: DataOptions) -> Dict[str, str]:
    """The list file each evaluation split was read from, for error messages."""
    from datasets import list_dataset

    layouts = {"imagenet_lt": list_dataset.IMAGENET_LT, "inat2018": list_dataset.INAT2018,
               "places_lt": list_dataset.PLACES_LT}
    folder = options.split_dir or options.data_root
    layout = layouts.get(name)
    test = options.test_list or (layout and layout.test and os.path.join(folder, layout.test))
    val = options.val_list or (layout and layout.val and os.path.join(folder, layout.val))
    if layout is not None and layout.test is None and options.test_list is None:
        test, val = val, None  # iNaturalist: the validation list is the test set
    return {split: path for split, path in (("test", test), ("val", val)) if path}


def unreadable_image(path: str) -> Optional[str]:
    """Why training could not open `path`, or None. Reads the header (and for PNG the chunk
    checksums); a JPEG that does not end with its end-of-image marker, the sign of a cut-off
    download, is decoded in full to decide, so a valid file is never refused."""
    try:
        with open(path, "rb") as stream:
            with Image.open(stream) as image:
                kind, mode = image.format, image.mode
                image.verify()
            if mode in WIDE_MODES:
                return f"of {mode} pixels (16-bit or wider), which this toolkit does not read (convert it to 8-bit)"
            stream.seek(max(os.fstat(stream.fileno()).st_size - 2, 0))
            complete = kind != "JPEG" or stream.read(2) == b"\xff\xd9"
        if not complete:
            with Image.open(path) as image:
                image.load()
    except FileNotFoundError:
        return "not found (check --data_root and the list file)"
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"not a readable image ({detail})"
    return None


def _first_unreadable(paths: Sequence[str], positions: Sequence[int], threads: int) -> Optional[Tuple[int, str]]:
    chunks = [positions[i:i + 256] for i in range(0, len(positions), 256)]

    def scan(chunk):
        for position in chunk:
            reason = unreadable_image(paths[position])
            if reason is not None:
                return position, reason
        return None

    # Threads overlap the file-system latency (the decode itself mostly holds the GIL).
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for found in pool.map(scan, chunks):
            if found is not None:
                pool.shutdown(wait=False, cancel_futures=True)
                return found
    return None


def check_evaluation_images(data: LongTailData, options: DataOptions, rank: int = 0, world_size: int = 1,
                            threads: int = 8) -> int:
    """Opens every file of the test and validation splits once (header and checksums, see
    ``unreadable_image``) and raises a one-line ``DatasetError`` naming the first bad file and its
    list, so a damaged evaluation image stops the run before its first epoch, not after it.
    Under DDP each rank checks a share, and all ranks raise the same error. Returns the number of
    files this process checked (0 for in-memory data).
    """
    from utils import dist

    lists = _list_files(data.name, options)
    found, checked = None, 0
    for order, (split, source) in enumerate((("test", data.test), ("val", data.val))):
        if source is None or source.in_memory:
            continue
        positions = range(rank, len(source), world_size)
        checked += len(positions)
        bad = _first_unreadable(source.paths, positions, threads)
        if bad is not None:
            position, reason = bad
            where = lists.get(split, f"the {split} list")
            found = (order * len(data.test) + position,
                     f"{split} image {source.paths[position]} (entry {position + 1} of {where}) is {reason}: "
                     "replace the file or remove its line")
            break  # test entries come before validation ones, so this is this rank's first
    message = dist.first_over_ranks(found)
    if message is not None:
        raise DatasetError(message)
    return checked
