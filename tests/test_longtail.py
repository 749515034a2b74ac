"""Long-tail recipes against hand-computed values (docs/data.md#long-tailed-cifar-counts,
docs/data.md#leftover-pool, docs/semi_self.md#unlabelled-set-sizes) and properties."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from datasets.longtail import (
    balanced_validation_indices,
    class_counts,
    leftover_indices,
    minority_classes,
    select_indices,
    unlabeled_class_counts,
)
from utils.metrics import shot_groups

CIFAR10_GOLDEN = {
    0.01: [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50],
    0.02: [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100],
    0.1: [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500],
}
CIFAR100_TOTALS = {0.01: 10847, 0.02: 12608, 0.1: 19573}


@pytest.mark.parametrize("imb_factor, expected", sorted(CIFAR10_GOLDEN.items()))
def test_cifar10_exp_counts_match_the_papers(imb_factor, expected):
    counts = class_counts(5000, 10, "exp", imb_factor)
    assert counts == expected
    assert sum(counts) == {0.01: 12406, 0.02: 13996, 0.1: 20431}[imb_factor]


@pytest.mark.parametrize("imb_factor, total", sorted(CIFAR100_TOTALS.items()))
def test_cifar100_exp_totals_match_the_papers(imb_factor, total):
    counts = class_counts(500, 100, "exp", imb_factor)
    assert sum(counts) == total
    assert counts[0] == 500 and counts[-1] == int(500 * imb_factor)


def test_step_counts_split_the_classes_in_half():
    assert class_counts(5000, 10, "step", 0.01) == [5000] * 5 + [50] * 5
    assert class_counts(500, 100, "step", 0.1) == [500] * 50 + [50] * 50
    # Odd C: every class still gets a count (the reference would drop the last one).
    assert class_counts(100, 5, "step", 0.1) == [100, 100, 10, 10, 10]


@pytest.mark.parametrize("imb_type", ["exp", "step"])
def test_count_properties(imb_type):
    # Every combination in one test: 96 microsecond checks cost less than 96 test items.
    for n_max, num_classes, imb_factor in itertools.product([1, 7, 500, 5000], [2, 3, 10, 100],
                                                            [1.0, 0.5, 0.1, 0.02, 0.01, 0.005]):
        case = (n_max, num_classes, imb_factor, imb_type)
        counts = class_counts(n_max, num_classes, imb_type, imb_factor)
        assert len(counts) == num_classes, case
        assert counts[0] == n_max, case
        assert counts[-1] == int(n_max * imb_factor), case
        assert all(a >= b for a, b in zip(counts, counts[1:])), case


def test_balanced_when_imb_factor_is_one():
    assert class_counts(500, 100, "exp", 1.0) == [500] * 100
    assert class_counts(42, 1) == [42]


@pytest.mark.parametrize("imb_factor", [0.0, -0.01, 1.5, 100.0])
def test_bad_imb_factor_names_the_flag(imb_factor):
    with pytest.raises(ValueError, match="--imb_factor"):
        class_counts(5000, 10, "exp", imb_factor)


def test_bad_imb_type_names_the_flag_and_choices():
    with pytest.raises(ValueError, match="--imb_type.*exp, step"):
        class_counts(5000, 10, "linear", 0.01)


def reference_ldam_selection(targets: np.ndarray, counts, seed: int) -> np.ndarray:
    """The LDAM-DRW recipe written out literally, on NumPy's global generator."""
    np.random.seed(seed)
    kept = []
    for c, n_c in enumerate(counts):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)
        kept.append(idx[:n_c])
    return np.concatenate(kept)


def synthetic_targets(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


@pytest.mark.parametrize("seed", [0, 1, 2024])
@pytest.mark.parametrize("num_classes, per_class", [(10, 300), (100, 30)])
def test_shuffle_selection_equals_the_ldam_reference(seed, num_classes, per_class):
    targets = synthetic_targets(num_classes, per_class, seed=7)
    counts = class_counts(per_class, num_classes, "exp", 0.02)
    saved = np.random.get_state()
    try:
        expected = reference_ldam_selection(targets, counts, seed)
    finally:
        np.random.set_state(saved)
    np.testing.assert_array_equal(select_indices(targets, counts, "shuffle", seed), expected)


def test_selection_leaves_numpy_global_state_alone():
    targets = synthetic_targets(10, 100)
    np.random.seed(12345)
    before = np.random.get_state()
    select_indices(targets, class_counts(100, 10), "shuffle", seed=0)
    after = np.random.get_state()
    assert before[0] == after[0] and all(np.array_equal(a, b) for a, b in zip(before[1:], after[1:]))


def test_first_selection_keeps_file_order_per_class():
    targets = synthetic_targets(10, 50)
    counts = class_counts(50, 10, "exp", 0.1)
    chosen = select_indices(targets, counts, "first")
    expected = np.concatenate([np.where(targets == c)[0][:n] for c, n in enumerate(counts)])
    np.testing.assert_array_equal(chosen, expected)


def test_selection_is_in_class_order_with_the_right_counts():
    targets = synthetic_targets(10, 200)
    counts = class_counts(200, 10, "exp", 0.01)
    chosen = select_indices(targets, counts, "shuffle", 3)
    assert np.bincount(targets[chosen], minlength=10).tolist() == counts
    assert np.all(np.diff(targets[chosen]) >= 0)
    assert len(np.unique(chosen)) == len(chosen)


def test_selection_rejects_unknown_rule_and_short_classes():
    targets = synthetic_targets(3, 5)
    with pytest.raises(ValueError, match="--lt_selection"):
        select_indices(targets, [5, 2, 1], "random")
    with pytest.raises(ValueError, match="class 0 has 5"):
        select_indices(targets, [6, 2, 1])


@pytest.mark.parametrize(
    "imb_factor, expected",
    [
        (0.01, [0, 2003, 3204, 3923, 4355, 4613, 4768, 4861, 4917, 4950]),
        (0.02, [0, 1763, 2904, 3643, 4122, 4432, 4632, 4762, 4846, 4900]),
    ],
)
def test_leftover_pool_of_full_cifar10(imb_factor, expected):
    targets = synthetic_targets(10, 5000)
    chosen = select_indices(targets, class_counts(5000, 10, "exp", imb_factor), "shuffle", 0)
    pool = leftover_indices(targets, chosen)
    assert np.bincount(targets[pool], minlength=10).tolist() == expected
    assert len(pool) == {0.01: 37594, 0.02: 36004}[imb_factor]
    assert np.all(np.diff(pool) > 0)  # file order
    assert len(np.intersect1d(pool, chosen)) == 0 and len(pool) + len(chosen) == len(targets)


def test_validation_split_comes_from_leftovers_and_skips_a_full_head():
    targets = synthetic_targets(10, 5000)
    chosen = select_indices(targets, class_counts(5000, 10, "exp", 0.01), "shuffle", 0)
    val = balanced_validation_indices(targets, chosen, per_class=20, seed=0)
    # The head class keeps all 5000 images for training, so it has none to give.
    assert np.bincount(targets[val], minlength=10).tolist() == [0] + [20] * 9
    assert len(np.intersect1d(val, chosen)) == 0
    assert np.all(np.diff(targets[val]) >= 0)
    np.testing.assert_array_equal(val, balanced_validation_indices(targets, chosen, 20, seed=0))
    assert not np.array_equal(val, balanced_validation_indices(targets, chosen, 20, seed=1))


def test_validation_split_takes_what_a_short_class_has():
    targets = np.array([0, 0, 0, 1, 1, 2])
    val = balanced_validation_indices(targets, used=[0, 3], per_class=2, seed=0)
    assert sorted(val[targets[val] == 0].tolist()) == [1, 2]
    assert val[targets[val] == 1].tolist() == [4]
    assert val[targets[val] == 2].tolist() == [5]
    assert len(balanced_validation_indices(targets, [0], per_class=0)) == 0
    with pytest.raises(ValueError, match="--val_per_class"):
        balanced_validation_indices(targets, [0], per_class=-1)


def test_minority_classes_follow_lcsl():
    assert len(minority_classes(class_counts(500, 100, "exp", 0.01))) == 67
    assert minority_classes(class_counts(5000, 10, "exp", 0.01)) == [3, 4, 5, 6, 7, 8, 9]
    assert minority_classes([10, 10, 10]) == []


def test_unlabeled_counts_follow_ss():
    assert unlabeled_class_counts(13996, 10, 1 / 50) == [24999, 16186, 10477, 6784, 4390, 2843, 1839, 1189, 771, 496]
    assert unlabeled_class_counts(13996, 10, 1.0) == [6998] * 10
    assert sum(unlabeled_class_counts(12406, 10, 0.01, size_factor=1)) <= 12406
    with pytest.raises(ValueError, match="--imb_factor_unlabel"):
        unlabeled_class_counts(100, 10, 0.0)


@pytest.mark.parametrize(
    "n_max, num_classes, imb_factor, sizes",
    [
        (500, 100, 0.01, (35, 35, 30)),
        (500, 100, 0.02, (41, 41, 18)),
        (500, 100, 0.1, (69, 31, 0)),
        (5000, 10, 0.01, (8, 2, 0)),
    ],
)
def test_shot_groups_match_the_published_splits(n_max, num_classes, imb_factor, sizes):
    groups = shot_groups(class_counts(n_max, num_classes, "exp", imb_factor))
    assert tuple(len(groups[g]) for g in ("many", "medium", "few")) == sizes


def test_shot_group_boundaries():
    assert shot_groups([101, 100, 20, 19]) == {"many": [0], "medium": [1, 2], "few": [3]}
