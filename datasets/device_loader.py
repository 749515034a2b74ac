"""Training batches cut from a dataset that lives on the training device, augmented there.

CIFAR-scale training sets (50,000 x 32 x 32 x 3 uint8 = 150 MB) fit on any accelerator, so
``DeviceLoader`` copies the whole uint8 array to the device once and then, per batch, gathers the
sampled images and runs a batched tensor recipe (``datasets.augment.tensor``) on them: no worker
processes, no per-image Python, no host-to-device copy per step (the layout of KellerJordan's
airbench ``CifarLoader``). It yields what ``EpochLoader`` yields, ``(views, targets, indices)``
with uint8 views, so the engine's ``DeviceInputs`` normalises both the same way.

Order and augmentation are reproducible: positions come from the same samplers as the PIL path
(``ShuffleSampler`` by default, seeded from (seed, epoch)), and augmentation parameters from a CPU
generator seeded from (seed, epoch, rank), so a run resumed at an epoch boundary sees the batches
of the uninterrupted run, and a given seed gives the same augmentations on CPU and GPU.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from datasets.augment.tensor import BatchTransform
from datasets.base import ImageSource
from datasets.loaders import EpochBatches, ShuffleSampler

Views = Union[Tensor, Tuple[Tensor, ...]]


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of an epoch's augmentation generator; distinct for every (seed, epoch, rank).

    Kept apart from the samplers' seeds (``seed * 100003 + epoch``, ``seed + epoch``) by a
    different mixing, so the crop offsets are not a function of the shuffling order.
    """
    mixed = (seed * 1_000_003 + epoch) * 8191 + rank
    return (mixed * 2654435761 + 0x5EED) % (2 ** 63)


class DeviceLoader(EpochBatches):
    """Batches of an in-memory ``ImageSource`` held on ``device``, augmented by a batch recipe.

    Args:
        source: training images (``source.array`` uint8, N x H x W x 3) and targets.
        transform: a batch recipe or ``BatchViews`` from ``build_tensor_views``.
        batch_size: images per batch on this process (the global batch divided by world_size).
        sampler: positions per epoch, with ``set_epoch``; ``None`` shuffles uniformly with
            ``ShuffleSampler(seed, rank, world_size)``, exactly as ``build_train_loader`` does.
        device: where the images live and are augmented.
        seed, rank, world_size: seeding and the DDP shard this process reads.
        drop_last: drop the last incomplete batch.
        cpu_aug_threads: torch threads while augmenting on a CPU device (``None``: unchanged).
            One by default: a batch's ops are small and memory-bound, so more threads gain little,
            while on a shared machine every op waits for the slowest OpenMP thread; we measured
            a SimCLR view of 128 images at 30 ms on one thread and over 1 s on two under load.
    """

    def __init__(self, source: ImageSource, transform: BatchTransform, batch_size: int,
                 sampler: Optional[Sampler] = None, device: Union[str, torch.device] = "cpu", seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 cpu_aug_threads: Optional[int] = 1):
        if not source.in_memory:
            raise ValueError("DeviceLoader needs an in-memory dataset (CIFAR-style); "
                             "use --aug_backend pil for file-based datasets")
        if batch_size < 1:
            raise ValueError(f"-b/--batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        # (N, 3, H, W) uint8, copied to the device once for the whole run.
        pixels = torch.from_numpy(np.ascontiguousarray(source.array))
        self.images = pixels.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.targets = torch.from_numpy(np.asarray(source.targets, dtype=np.int64)).to(self.device)
        self.transform = transform
        self.batch_size, self.drop_last = batch_size, drop_last
        self.seed, self.rank = seed, rank
        self.cpu_aug_threads = cpu_aug_threads if self.device.type == "cpu" else None
        self.sampler = sampler if sampler is not None else ShuffleSampler(len(source), seed, rank, world_size)
        self.epoch = 0

    def __iter__(self) -> Iterator[Tuple[Views, Tensor, Tensor]]:
        positions = torch.as_tensor(list(iter(self.sampler)), dtype=torch.int64)
        on_device = positions.to(self.device, non_blocking=True)
        generator = torch.Generator().manual_seed(augmentation_seed(self.seed, self.epoch, self.rank))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, len(positions))
            index = on_device[start:stop]
            with self._augment_threads():
                views = self.transform(self.images.index_select(0, index), generator)
            # Indices stay on the CPU, as EpochLoader gives them (methods keep per-sample state there).
            yield views, self.targets.index_select(0, index), positions[start:stop]

    @contextlib.contextmanager
    def _augment_threads(self):
        if self.cpu_aug_threads is None:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.cpu_aug_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return (f"{type(self).__name__}({n} images {c}x{h}x{w} on {self.device}, batch_size={self.batch_size}, "
                f"sampler={type(self.sampler).__name__}, transform={self.transform!r})")
