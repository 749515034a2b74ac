"""Class-rebalancing samplers: class frequencies, seeding by epoch, DDP sharding, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datasets.samplers import (
    SAMPLERS,
    ClassAwareSampler,
    WeightedClassSampler,
    build_sampler,
    effective_number_class_weights,
    power_class_weights,
)

COUNTS = np.array([1000, 100, 10])


@pytest.fixture
def targets() -> np.ndarray:
    # Long-tailed labels in a scrambled order, so positions and classes are not aligned.
    labels = np.repeat(np.arange(3), COUNTS)
    return np.random.default_rng(0).permutation(labels)


def class_shares(targets: np.ndarray, sampler) -> np.ndarray:
    drawn = targets[np.array(list(sampler))]
    return np.bincount(drawn, minlength=len(COUNTS)) / len(drawn)


def proportional(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values / values.sum()


EXPECTED = {
    ("class_balanced", ()): np.full(3, 1 / 3),
    ("sqrt", ()): proportional(np.sqrt(COUNTS)),
    # Class c is drawn with probability proportional to n_c (1 - beta) / (1 - beta^n_c), worked out
    # for counts 1000, 100, 10: beta 0.9999 is nearly balanced, beta 0.99 keeps most of the skew.
    ("effective_number", ()): np.array([0.3438, 0.3288, 0.3274]),
    ("effective_number", (("beta", 0.99),)): np.array([0.7922, 0.1250, 0.0828]),
    ("class_aware", ()): np.full(3, 1 / 3),
    ("class_aware", (("samples_per_class", 1),)): np.full(3, 1 / 3),
}


def test_every_sampler_has_an_expectation():
    assert {name for name, _ in EXPECTED} == set(SAMPLERS.names())


@pytest.mark.parametrize("name, options", list(EXPECTED))
def test_class_frequencies(targets, name, options):
    sampler = build_sampler(name, targets, 3, seed=1, num_samples=60_000, **dict(options))
    shares = class_shares(targets, sampler)
    # Multinomial draws: standard error < 0.002 at 60k draws, so 0.01 is a 5-sigma margin.
    np.testing.assert_allclose(shares, EXPECTED[(name, options)], atol=0.01)


def test_effective_number_hand_values():
    # beta = 0.5: (1 - 0.5) / (1 - 0.5 ** n) for n = 1, 2, 3, and 0 for an empty class.
    np.testing.assert_allclose(
        effective_number_class_weights([1, 2, 3, 0], beta=0.5), [1.0, 2 / 3, 4 / 7, 0.0]
    )
    np.testing.assert_allclose(power_class_weights([4, 16, 0], 0.5), [0.5, 0.25, 0.0])
    np.testing.assert_allclose(power_class_weights([4, 16], 1.0), [0.25, 0.0625])


def test_class_aware_blocks_are_single_class_and_balanced(targets):
    per_class, num_samples = 4, 1200  # 300 blocks = 100 full passes over the 3 classes
    sampler = build_sampler("class_aware", targets, 3, samples_per_class=per_class, num_samples=num_samples)
    positions = np.array(list(sampler))
    blocks = targets[positions].reshape(-1, per_class)
    assert (blocks == blocks[:, :1]).all()  # each block of 4 comes from one class
    block_classes = blocks[:, 0]
    assert np.bincount(block_classes).tolist() == [100, 100, 100]
    # Classes are visited in shuffled passes: every run of 3 blocks is a permutation.
    assert all(sorted(block_classes[i : i + 3]) == [0, 1, 2] for i in range(0, 300, 3))
    # Tail class (10 images, 400 draws): its list cycles in full passes, each image 40 times.
    tail = positions[targets[positions] == 2]
    assert np.bincount(tail, minlength=len(targets))[targets == 2].tolist() == [40] * 10


def test_class_aware_skips_empty_classes():
    labels = np.array([0, 0, 0, 2, 2])  # class 1 has no images
    sampler = build_sampler("class_aware", labels, 3, samples_per_class=2, num_samples=40)
    drawn = labels[np.array(list(sampler))]
    assert set(drawn.tolist()) == {0, 2}
    assert np.bincount(drawn, minlength=3).tolist() == [20, 0, 20]


def test_weighted_sampler_follows_class_weights(targets):
    sampler = WeightedClassSampler(targets, [0.0, 1.0, 0.0], num_samples=500)
    assert set(targets[np.array(list(sampler))].tolist()) == {1}
    assert len(sampler) == 500


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_seed_and_epoch_fix_the_order(targets, name):
    first = build_sampler(name, targets, 3, seed=5)
    second = build_sampler(name, targets, 3, seed=5)
    order = list(first)
    assert len(order) == len(targets)  # num_samples defaults to the dataset size
    assert order == list(first) == list(second)  # same seed + epoch, same order, any instance
    first.set_epoch(1)
    assert list(first) != order
    second.set_epoch(1)
    assert list(first) == list(second)
    assert list(build_sampler(name, targets, 3, seed=6)) != order


def test_no_global_rng_is_used(targets):
    sampler = build_sampler("class_balanced", targets, 3)
    state = torch.get_rng_state()
    list(sampler)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", SAMPLERS.names())
@pytest.mark.parametrize("world_size, num_samples", [(2, 1000), (3, 1000), (4, 1110)])
def test_ranks_partition_the_global_list(targets, name, world_size, num_samples):
    whole = list(build_sampler(name, targets, 3, seed=2, num_samples=num_samples))
    shards = []
    for rank in range(world_size):
        sampler = build_sampler(
            name, targets, 3, seed=2, rank=rank, world_size=world_size, num_samples=num_samples
        )
        sampler.set_epoch(0)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1]) == math.ceil(num_samples / world_size)
    # Interleaving the shards gives back the global list, padded by wrapping to its start.
    interleaved = [shard[i] for i in range(len(shards[0])) for shard in shards]
    padded = whole + whole[: len(interleaved) - len(whole)]
    assert interleaved == padded


def test_sampler_drives_a_dataloader(targets):
    dataset = TensorDataset(torch.as_tensor(targets))
    sampler = build_sampler("sqrt", targets, 3, num_samples=64)
    batches = list(DataLoader(dataset, batch_size=16, sampler=sampler))
    assert len(batches) == 4 and all(batch[0].shape == (16,) for batch in batches)


def test_errors_name_the_problem(targets):
    with pytest.raises(KeyError, match="class_balanced"):
        build_sampler("balanced", targets, 3)
    with pytest.raises(ValueError, match="rank"):
        build_sampler("sqrt", targets, 3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="labels"):
        build_sampler("class_balanced", targets, 2)  # label 2 is out of range
    with pytest.raises(ValueError, match="beta"):
        build_sampler("effective_number", targets, 3, beta=1.0)
    with pytest.raises(TypeError, match="beta"):
        build_sampler("class_balanced", targets, 3, beta=0.9)
    with pytest.raises(ValueError, match="samples_per_class"):
        ClassAwareSampler(targets, samples_per_class=0)
