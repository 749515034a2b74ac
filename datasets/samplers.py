"""Class-rebalancing samplers over dataset positions, seeded per epoch and sharded across ranks.

Every sampler builds one global list of positions from ``torch.Generator().manual_seed(seed *
100003 + epoch)``, so all DDP ranks agree on it without communicating; the list is padded by wrapping to a
multiple of ``world_size`` and rank ``r`` keeps ``list[r::world_size]``. Call ``set_epoch`` before
each epoch, as with ``DistributedSampler``. Instance-uniform sampling (``None`` / ``'uniform'``)
is left to the caller's ordinary shuffling and is not registered here.

``SAMPLERS`` holds factories ``fn(targets, num_classes, seed=0, rank=0, world_size=1, **options)``:
``class_balanced``, ``sqrt``, ``effective_number`` (the semi/self-supervised code's ``Resample``
rule) and ``class_aware`` (the decoupling code's ClassAwareSampler).
"""
from __future__ import annotations

import math
from typing import Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from utils.registry import Registry

SAMPLERS = Registry("sampler")


def class_counts(targets: Sequence[int], num_classes: int) -> np.ndarray:
    """Images per class (int64, (num_classes,)); labels must lie in [0, num_classes)."""
    targets = np.asarray(targets, dtype=np.int64)
    if targets.ndim != 1 or len(targets) == 0:
        raise ValueError(f"targets must be a non-empty 1-D array of labels, got shape {targets.shape}")
    if targets.min() < 0 or targets.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{targets.min()}, {targets.max()}]"
        )
    return np.bincount(targets, minlength=num_classes)


def power_class_weights(counts: Sequence[int], power: float) -> np.ndarray:
    """Per-sample weight ``n_c ** -power`` for each class (0 for empty classes).

    A class then receives a share of draws proportional to ``n_c ** (1 - power)``: power 1 is
    class-balanced, power 0.5 is square-root sampling (Mahajan et al. 2018), power 0 is uniform.
    """
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts[present] ** -power
    return weights


def effective_number_class_weights(counts: Sequence[int], beta: float = 0.9999) -> np.ndarray:
    """Per-sample weight ``(1 - beta) / (1 - beta ** n_c)`` (Cui et al. 2019, Eq. 3; 0 if empty).

    Not normalised: a sampler only needs the ratios.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"--beta must lie in [0, 1), got {beta}")
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = (1.0 - beta) / (1.0 - np.power(beta, counts[present]))
    return weights


class EpochShardSampler(Sampler[int]):
    """Base class: subclasses return the global position list for a generator; this shards it."""

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_samples = num_samples  # length of the global list, before padding
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next ``__iter__`` yields."""
        self.epoch = epoch

    def global_indices(self, generator: torch.Generator) -> torch.Tensor:
        """The (num_samples,) int64 positions every rank agrees on."""
        raise NotImplementedError

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.world_size)

    def __iter__(self) -> Iterator[int]:
        # seed * 100003 keeps neighbouring seeds from replaying each other's orders one epoch apart.
        generator = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        indices = self.global_indices(generator)
        total = len(self) * self.world_size
        if total > len(indices):
            # Wrap around so that every rank runs the same number of steps (DDP would hang
            # otherwise); at most world_size - 1 positions are repeated.
            repeats = math.ceil(total / len(indices))
            indices = indices.repeat(repeats)[:total]
        return iter(indices[self.rank :: self.world_size].tolist())


class WeightedClassSampler(EpochShardSampler):
    """Draws ``num_samples`` positions with replacement, each with probability proportional to
    the weight of its class (the semi/self-supervised code's ``ImbalancedDatasetSampler``).

    Class ``c`` is then drawn with probability ``n_c * w_c / sum_k n_k * w_k``.
    """

    def __init__(
        self,
        targets: Sequence[int],
        class_weights: Sequence[float],
        num_samples: Optional[int] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        class_weights = torch.as_tensor(np.asarray(class_weights, dtype=np.float64))
        if class_weights.ndim != 1 or int(targets.max()) >= len(class_weights):
            raise ValueError(
                f"class_weights needs one entry per class: {len(class_weights)} weights "
                f"for labels up to {int(targets.max())}"
            )
        if (class_weights < 0).any() or not torch.isfinite(class_weights).all():
            raise ValueError("class_weights must be finite and non-negative")
        self.weights = class_weights[targets]  # (N,) per-position weight
        if self.weights.sum() <= 0:
            raise ValueError("every position has weight 0; nothing can be drawn")
        super().__init__(len(targets) if num_samples is None else num_samples, seed, rank, world_size)

    def global_indices(self, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)


class ClassAwareSampler(EpochShardSampler):
    """Class-aware sampling (Shen et al. 2016), as the decoupling code's ``ClassAwareSampler``.

    Visits classes in a shuffled order, reshuffled whenever every class has been visited; each
    visit yields the next ``samples_per_class`` positions of that class from its own shuffled
    list, reshuffled whenever it runs out. Each block of ``samples_per_class`` consecutive
    positions therefore belongs to one class, and classes are visited equally often. Empty
    classes are skipped.

    The reference code draws ``max_c n_c * C`` positions per epoch; here the length is
    ``num_samples`` (default: the dataset size), which the SS configs cap steps at anyway.
    """

    def __init__(
        self,
        targets: Sequence[int],
        samples_per_class: int = 4,
        num_samples: Optional[int] = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if samples_per_class < 1:
            raise ValueError(f"--samples_per_class must be >= 1, got {samples_per_class}")
        targets = np.asarray(targets, dtype=np.int64)
        classes = np.unique(targets)
        self.samples_per_class = samples_per_class
        # Positions of each non-empty class, in class order.
        self.class_positions: List[torch.Tensor] = [
            torch.from_numpy(np.flatnonzero(targets == c)) for c in classes
        ]
        super().__init__(len(targets) if num_samples is None else num_samples, seed, rank, world_size)

    def global_indices(self, generator: torch.Generator) -> torch.Tensor:
        num_classes = len(self.class_positions)
        num_blocks = math.ceil(self.num_samples / self.samples_per_class)
        # Class of each block: shuffled passes over the classes, concatenated.
        passes = math.ceil(num_blocks / num_classes)
        order = torch.cat([torch.randperm(num_classes, generator=generator) for _ in range(passes)])
        order = order[:num_blocks]
        blocks = torch.empty(num_blocks, self.samples_per_class, dtype=torch.int64)
        # Blocks grouped by class, each group in visiting order (a stable sort keeps the order).
        by_class = torch.argsort(order, stable=True)
        visits_per_class = torch.bincount(order, minlength=num_classes).tolist()
        for positions, visits in zip(self.class_positions, torch.split(by_class, visits_per_class)):
            needed = len(visits) * self.samples_per_class
            if needed == 0:
                continue
            # The class's own stream: shuffled passes over its positions, concatenated, so a
            # block may straddle two passes exactly as a cycling iterator would.
            n_pass = math.ceil(needed / len(positions))
            stream = torch.cat(
                [positions[torch.randperm(len(positions), generator=generator)] for _ in range(n_pass)]
            )
            blocks[visits] = stream[:needed].view(len(visits), self.samples_per_class)
        return blocks.flatten()[: self.num_samples]


def _weighted(
    targets: Sequence[int],
    class_weights: np.ndarray,
    seed: int,
    rank: int,
    world_size: int,
    num_samples: Optional[int],
) -> WeightedClassSampler:
    return WeightedClassSampler(targets, class_weights, num_samples, seed, rank, world_size)


@SAMPLERS.register("class_balanced")
def class_balanced(
    targets: Sequence[int],
    num_classes: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    *,
    num_samples: Optional[int] = None,
) -> WeightedClassSampler:
    """Every class equally likely: per-sample weight ``1 / n_c``."""
    weights = power_class_weights(class_counts(targets, num_classes), 1.0)
    return _weighted(targets, weights, seed, rank, world_size, num_samples)


@SAMPLERS.register("sqrt")
def square_root(
    targets: Sequence[int],
    num_classes: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    *,
    num_samples: Optional[int] = None,
) -> WeightedClassSampler:
    """Square-root sampling: class frequency proportional to ``sqrt(n_c)``."""
    weights = power_class_weights(class_counts(targets, num_classes), 0.5)
    return _weighted(targets, weights, seed, rank, world_size, num_samples)


@SAMPLERS.register("effective_number")
def effective_number(
    targets: Sequence[int],
    num_classes: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    *,
    beta: float = 0.9999,
    num_samples: Optional[int] = None,
) -> WeightedClassSampler:
    """Per-sample weight ``(1 - beta) / (1 - beta ** n_c)``: ``--train_rule Resample`` of Yang &
    Xu 2020 (docs/baselines.md#re-sampling), with replacement, ``len(targets)`` draws by default."""
    weights = effective_number_class_weights(class_counts(targets, num_classes), beta)
    return _weighted(targets, weights, seed, rank, world_size, num_samples)


@SAMPLERS.register("class_aware")
def class_aware(
    targets: Sequence[int],
    num_classes: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    *,
    samples_per_class: int = 4,
    num_samples: Optional[int] = None,
) -> ClassAwareSampler:
    """Round-robin over shuffled classes, ``samples_per_class`` positions per visit (cRT;
    docs/baselines.md#re-sampling)."""
    class_counts(targets, num_classes)  # validates the labels against num_classes
    return ClassAwareSampler(targets, samples_per_class, num_samples, seed, rank, world_size)


def build_sampler(
    name: str,
    targets: Sequence[int],
    num_classes: int,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    **options,
) -> EpochShardSampler:
    """Builds a registered sampler; an unknown name raises a ``KeyError`` listing the valid ones.

    ``None`` / ``'uniform'`` mean ordinary shuffling and are handled by the caller.
    """
    return SAMPLERS.build(name, targets, num_classes, seed, rank, world_size, **options)
