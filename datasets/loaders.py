"""Batches for training and evaluation, behind one interface.

Every loader yields ``(views, targets, indices)`` with uint8 images (N, 3, H, W) — a tensor, or a
tuple of tensors for multi-view recipes — on the CPU; the engine moves them to the device and
normalises there. Shuffling and re-sampling are seeded from (seed, epoch), never from the global
generator, so a resumed run draws exactly the batches the uninterrupted run would have drawn.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from datasets.base import ImageDataset, ImageSource


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
        return iter(loader)


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


def build_eval_loader(source: ImageSource, transform: Optional[Callable], batch_size: int, *,
                      workers: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False):
    """In-memory sets with no transform are sliced directly; others go through a DataLoader."""
    if transform is None and source.in_memory:
        return ArrayEvalBatches(source, batch_size, rank, world_size)
    if transform is None:
        raise ValueError("file-based evaluation needs a transform (resize / crop)")
    sampler = ShuffleSampler(len(source), rank=rank, world_size=1, shuffle=False)
    positions = list(range(rank, len(source), world_size))
    return DataLoader(ImageDataset(source, transform), batch_size=batch_size,
                      sampler=positions if world_size > 1 else sampler, num_workers=workers,
                      pin_memory=pin_memory)
