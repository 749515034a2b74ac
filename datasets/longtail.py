"""Long-tail recipes: per-class counts, seeded image selection, splits and class groups.

Pure functions of labels, counts and seeds (NumPy only, no global state), shared by every
CIFAR-style dataset so that CIFAR-10, CIFAR-100 and the bundled sample are cut the same way.
The counts and the ``shuffle`` selection follow the LDAM-DRW recipe that BCCL and SS reuse; the
``first`` selection is LCSL's (docs/data.md#image-selection).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import numpy as np

IMB_TYPES = ("exp", "step")
SELECTIONS = ("shuffle", "first")


def class_counts(n_max: int, num_classes: int, imb_type: str = "exp", imb_factor: float = 0.01) -> List[int]:
    """Images per class of a long-tailed split; class 0 is the head.

    ``exp``: n_c = int(n_max * f^(c / (C - 1))), the LDAM-DRW profile (Cao et al. 2019, Sec. 4).
    ``step``: the first C // 2 classes keep n_max, the rest get int(n_max * f). (The reference
    loops C // 2 twice and so drops the last class when C is odd; here every class gets a count.)
    The power is evaluated exactly as the reference does, so the integer truncation agrees.
    """
    if not 0.0 < imb_factor <= 1.0:
        raise ValueError(f"--imb_factor must be in (0, 1] (1 / imbalance ratio), got {imb_factor}")
    if imb_type not in IMB_TYPES:
        raise ValueError(f"--imb_type must be one of {', '.join(IMB_TYPES)}, got '{imb_type}'")
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"need at least one class and one image per class, got C={num_classes}, n_max={n_max}")
    if imb_type == "step":
        head = num_classes // 2
        return [n_max] * head + [int(n_max * imb_factor)] * (num_classes - head)
    if num_classes == 1:
        return [n_max]
    return [int(n_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def smallest_imb_factor(n_max: int, num_classes: int, imb_type: str = "exp") -> float:
    """The smallest ``--imb_factor``, rounded up to three significant digits, whose ``class_counts``
    give every class at least one image (1 / n_max up to rounding: the tail keeps int(n_max * f))."""
    exact = 1.0 / n_max
    step = 10.0 ** (math.floor(math.log10(exact)) - 2)
    multiple = math.ceil(exact / step - 1e-6)
    # Each candidate is tested as the printed number a user would type.
    while float(f"{multiple * step:.3g}") < 1.0:
        factor = float(f"{multiple * step:.3g}")
        if min(class_counts(n_max, num_classes, imb_type, factor)) >= 1:
            return factor
        multiple += 1
    return 1.0


def select_indices(
    targets: Sequence[int], counts: Sequence[int], selection: str = "shuffle", seed: int = 0
) -> np.ndarray:
    """Positions of the long-tailed subset in the original training file.

    ``shuffle`` reproduces the LDAM-DRW indices exactly: the reference seeds NumPy's global
    generator once, then for c = 0..C-1 shuffles ``np.where(targets == c)[0]`` and keeps the first
    n_c. A private ``RandomState(seed)`` yields the same stream without touching global state.
    ``first`` keeps the first n_c images of each class in file order (LCSL).
    The result lists class 0 first, each class in selection order.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"--lt_selection must be one of {', '.join(SELECTIONS)}, got '{selection}'")
    targets = np.asarray(targets)
    rng = np.random.RandomState(seed)
    chosen = []
    for c, n_c in enumerate(counts):
        idx = np.where(targets == c)[0]
        if len(idx) < n_c:
            raise ValueError(f"class {c} has {len(idx)} training images but the recipe asks for {n_c}")
        if selection == "shuffle":
            # Shuffle every class, as the reference does, so later classes see the same stream.
            rng.shuffle(idx)
        chosen.append(idx[:n_c])
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def leftover_indices(targets: Sequence[int], used: Sequence[int]) -> np.ndarray:
    """Positions not in ``used``, in file order: the unlabeled pool of the semi-supervised setting.

    On full CIFAR-10 at rho=100 the pool holds 0, 2003, 3204, ... images per class
    (docs/data.md#leftover-pool): it is reverse-imbalanced and empty for the head class.
    """
    keep = np.ones(len(targets), dtype=bool)
    keep[np.asarray(used, dtype=np.int64)] = False
    return np.flatnonzero(keep).astype(np.int64)


def balanced_validation_indices(
    targets: Sequence[int], used: Sequence[int], per_class: int, seed: int = 0
) -> np.ndarray:
    """Up to ``per_class`` images per class, drawn (seeded) from the images ``used`` left over.

    A class with fewer than ``per_class`` leftovers contributes all it has, so the split is only
    balanced where the data allow: on full CIFAR at imb_factor < 1 the head class keeps every one
    of its images in the training subset and gets NO validation images. Class order, then the
    seeded order within each class.
    """
    if per_class < 0:
        raise ValueError(f"--val_per_class must be >= 0, got {per_class}")
    targets = np.asarray(targets)
    pool = leftover_indices(targets, used)
    rng = np.random.RandomState(seed)
    chosen = []
    for c in range(int(targets.max()) + 1 if len(targets) else 0):
        idx = pool[targets[pool] == c]
        rng.shuffle(idx)
        chosen.append(idx[:per_class])
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def minority_classes(counts: Sequence[int]) -> List[int]:
    """Classes with fewer images than the mean count: LCSL's minority set M.

    CIFAR-100 at rho=100 gives 67 classes (mean 108.47), CIFAR-10 at rho=100 gives 7.
    """
    counts = np.asarray(counts, dtype=np.float64)
    return np.flatnonzero(counts < counts.mean()).tolist()


def unlabeled_class_counts(
    labeled_total: int, num_classes: int, imb_factor_unlabel: float, size_factor: int = 5
) -> List[int]:
    """Per-class sizes of the unlabeled set D_U of Yang & Xu (2020), docs/semi_self.md#unlabelled-set-sizes.

    D_U holds ``size_factor`` x |D_L| images: floor(total / C) * f_U^(c / (C - 1)) per class,
    truncated, then rescaled so the sum approaches the total and truncated again (as the SS code
    does). E.g. CIFAR-10, |D_L| = 13,996, f_U = 1/50: 24999, 16186, ..., 496.
    """
    if not 0.0 < imb_factor_unlabel <= 1.0:
        raise ValueError(f"--imb_factor_unlabel must be in (0, 1], got {imb_factor_unlabel}")
    total = labeled_total * size_factor
    base = class_counts(total // num_classes, num_classes, "exp", imb_factor_unlabel) if total >= num_classes else []
    if not base or sum(base) == 0:
        return [0] * num_classes
    scale = total / sum(base)
    return [int(n * scale) for n in base]
