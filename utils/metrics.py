"""Evaluation metrics for long-tailed classification; every accuracy is in percent (0-100).

The functions work on CPU tensors or arrays holding the whole evaluation set; gathering the
outputs of several processes is the caller's job. Many / medium / few groups follow the OLTR
convention (Liu et al., CVPR 2019, Sec. 5): they are defined by the *training* counts, with
many > 100 and few < 20 images.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]
GROUPS = ("many", "medium", "few")


# Scores are percentages. Two epochs with the same number of correct images on a balanced split
# have equal accuracy, but the per-class mean can differ from the overall top-1 in the last bit;
# one image more on a split of a million images is still 1e-4 points, far above this tolerance.
SCORE_TOLERANCE = 1e-6
# Names of the summary keys a method may select its best checkpoint by (Method.selection_metric).
SELECTION_METRICS = {"top1": "top-1", "mean_per_class": "mean per-class accuracy"}


def improves(score: float, best: Optional[float]) -> bool:
    """Whether `score` beats the best so far (None: nothing yet) by more than rounding: the one
    rule for best.pth, best_on_<split> and LCSL's teacher replacement."""
    return best is None or score > best + SCORE_TOLERANCE


def _to_numpy(values: ArrayLike, dtype=None) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def _check_logits(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"expected logits of shape (N, C) with N > 0, got {tuple(logits.shape)}")
    if targets.shape != (logits.shape[0],):
        raise ValueError(f"expected targets of shape ({logits.shape[0]},), got {tuple(targets.shape)}")


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    """The one prediction rule every reported number uses: the class with the highest logit.

    Ties (common with bf16 logits) go to the lowest class index, and NaN never wins a row, so
    top-1, per-class, many / medium / few and ECE all score the same predicted class (a ``topk``
    for top-1 next to an ``argmax`` for per-class accuracy may break the same tie differently).
    Returns (N,) int64.
    """
    scores = _ranking_scores(logits)
    best = scores.max(dim=1, keepdim=True).values  # (N, 1)
    classes = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    # The smallest index among the maxima, explicitly rather than by a sort's tie order.
    return torch.where(scores == best, classes, scores.shape[1]).min(dim=1).values


def target_rank(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target under the ``predicted_class`` order (N,): the classes with a
    higher logit, plus those with an equal logit and a lower index. Rank 0 is exactly
    ``predicted_class == target``, so top-1 from ranks equals top-1 from predictions."""
    scores = _ranking_scores(logits)
    targets = targets.long().to(scores.device)
    own = scores.gather(1, targets.unsqueeze(1))  # (N, 1)
    classes = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0)
    ahead = (scores > own) | ((scores == own) & (classes < targets.unsqueeze(1)))
    return ahead.sum(dim=1)


def _ranking_scores(logits: torch.Tensor) -> torch.Tensor:
    # NaN compares false with everything; as -inf it ranks last and can never be predicted.
    logits = torch.as_tensor(logits).float()
    return torch.where(torch.isnan(logits), torch.full_like(logits, float("-inf")), logits)


def topk_accuracy(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
    """Percentage of samples whose target is among the k highest logits, for each k in ``ks``.

    Ranks follow ``predicted_class`` (ties to the lower class index), so top-1 here is the
    accuracy of the predictions that per-class accuracy scores. k is clipped to the number of
    classes (top-5 of a 3-class problem is top-3, i.e. 100%), but the returned dict keeps the
    requested k as its key so callers can always read ``[5]``.
    """
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets)
    _check_logits(logits, targets)
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of k >= 1, got {tuple(ks)}")
    rank = target_rank(logits, targets)  # (N,)
    return {k: 100.0 * (rank < k).float().mean().item() for k in ks}


def per_class_accuracy(predictions: ArrayLike, targets: ArrayLike, num_classes: int) -> np.ndarray:
    """Accuracy of each class in percent, float64 of shape (C,); NaN where the class has no sample.

    NaN (not 0) so that an absent class cannot pull a mean down; use ``np.nanmean`` to average.
    """
    predictions = _to_numpy(predictions, np.int64).ravel()
    targets = _to_numpy(targets, np.int64).ravel()
    if predictions.shape != targets.shape:
        raise ValueError(f"{predictions.size} predictions but {targets.size} targets")
    if targets.size and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got [{targets.min()}, {targets.max()}]")
    total = np.bincount(targets, minlength=num_classes).astype(np.float64)
    correct = np.bincount(targets[predictions == targets], minlength=num_classes).astype(np.float64)
    accuracy = np.full(num_classes, np.nan)
    present = total > 0
    accuracy[present] = 100.0 * correct[present] / total[present]
    return accuracy


def confusion_matrix(predictions: ArrayLike, targets: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts, int64 of shape (C, C): row = true class, column = predicted class."""
    predictions = _to_numpy(predictions, np.int64).ravel()
    targets = _to_numpy(targets, np.int64).ravel()
    if predictions.shape != targets.shape:
        raise ValueError(f"{predictions.size} predictions but {targets.size} targets")
    for name, values in (("targets", targets), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got [{values.min()}, {values.max()}]")
    cells = np.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes)
    return cells.reshape(num_classes, num_classes).astype(np.int64)


def largest_confusions(matrix: np.ndarray, true_class: int, k: int = 3) -> List[Tuple[int, float]]:
    """The ``k`` classes that take the largest share (percent) of ``true_class``'s images, its own
    excepted, largest first (ties: lower class index first); classes that take none are left out."""
    row = np.asarray(matrix[true_class], dtype=np.float64)
    total = row.sum()
    if total == 0:
        return []
    others = [(c, 100.0 * row[c] / total) for c in range(len(row)) if c != true_class and row[c] > 0]
    return sorted(others, key=lambda item: (-item[1], item[0]))[:k]


def shot_groups(
    train_counts: ArrayLike, many_threshold: int = 100, few_threshold: int = 20
) -> Dict[str, List[int]]:
    """Class indices per group: many (count > 100), few (count < 20), medium (the rest).

    These are the OLTR thresholds (Liu et al., CVPR 2019) used by LCSL, BCCL and semi-self.
    """
    if few_threshold > many_threshold:
        raise ValueError(f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})")
    counts = _to_numpy(train_counts, np.float64).ravel()
    many = counts > many_threshold
    few = counts < few_threshold
    medium = ~many & ~few
    return {name: np.flatnonzero(mask).tolist() for name, mask in zip(GROUPS, (many, medium, few))}


def shot_accuracy(
    per_class_acc: ArrayLike, train_counts: ArrayLike, many_threshold: int = 100, few_threshold: int = 20
) -> Dict[str, Optional[float]]:
    """Mean per-class accuracy within the many / medium / few groups of ``shot_groups``.

    A group with no class (e.g. "few" on CIFAR-10) or with no evaluated class is ``None``: a 0
    there would read as a measured failure.
    """
    accuracy = _to_numpy(per_class_acc, np.float64).ravel()
    if accuracy.size != _to_numpy(train_counts).size:
        raise ValueError(f"{accuracy.size} per-class accuracies but {_to_numpy(train_counts).size} train counts")
    result: Dict[str, Optional[float]] = {}
    for name, classes in shot_groups(train_counts, many_threshold, few_threshold).items():
        values = accuracy[classes]
        values = values[~np.isnan(values)]
        result[name] = float(values.mean()) if values.size else None
    return result


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15,
                               predictions: Optional[torch.Tensor] = None) -> float:
    """Expected calibration error in percent (Guo et al., ICML 2017, Eq. 3).

    Samples are binned by confidence max_c p_c into equal-width bins (b/B, (b+1)/B] over (0, 1];
    ECE = sum_b |acc_b - conf_b| * |bin b| / N. A sample is correct when its prediction (given,
    or ``predicted_class(probs)``) is its target.
    """
    probs, targets = torch.as_tensor(probs), torch.as_tensor(targets)
    _check_logits(probs, targets)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    prediction = predicted_class(probs) if predictions is None else torch.as_tensor(predictions)
    confidence = probs.double().max(dim=1).values.cpu().numpy()
    correct = (prediction == targets).cpu().numpy().astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side='left') returns i with edges[i-1] < conf <= edges[i]: right-closed bins.
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    size = np.bincount(bins, minlength=n_bins)
    gap_sum = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    # |sum(acc - conf)| / N per bin equals |acc_b - conf_b| * |bin b| / N.
    return float(100.0 * np.abs(gap_sum[size > 0]).sum() / confidence.size)


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood -log softmax(z)_y in nats."""
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets)
    _check_logits(logits, targets)
    return F.cross_entropy(logits.double(), targets.long()).item()


def summarize(logits: torch.Tensor, targets: torch.Tensor, train_counts: ArrayLike, confusion: bool = False) -> dict:
    """Every number the results file reports, from the full-set logits (N, C) and targets (N,).

    ``per_class`` is a list with ``None`` for classes absent from the evaluation set, so the
    dict can be written as strict JSON; ``mean_per_class`` averages the present classes only.
    ``confusion`` adds the confusion matrix of the same predictions (C lists of C counts; asked
    for, not always there: ImageNet-LT's would be a million numbers in every results file).
    """
    logits, targets = torch.as_tensor(logits).detach().cpu(), torch.as_tensor(targets).detach().cpu().long()
    _check_logits(logits, targets)
    num_classes = len(_to_numpy(train_counts).ravel())
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} classes but train_counts has {num_classes}")
    # Every number below scores this one prediction (or, for top-5, the ranking it heads).
    predictions = predicted_class(logits)
    topk = topk_accuracy(logits, targets, ks=(1, 5))
    per_class = per_class_accuracy(predictions, targets, num_classes)
    shots = shot_accuracy(per_class, train_counts)
    groups = shot_groups(train_counts)
    extra = {"confusion": confusion_matrix(predictions, targets, num_classes).tolist()} if confusion else {}
    return {
        "top1": topk[1],
        "top5": topk[5],
        **shots,
        "group_sizes": {name: len(classes) for name, classes in groups.items()},
        "mean_per_class": float(np.nanmean(per_class)),  # N > 0, so at least one class is present
        "per_class": [None if math.isnan(value) else float(value) for value in per_class],
        "ece": expected_calibration_error(logits.double().softmax(dim=1), targets, predictions=predictions),
        "nll": negative_log_likelihood(logits, targets),
        "num_samples": int(targets.numel()),
        **extra,
    }


def format_shot_table(summary: dict) -> str:
    """A small text table of a ``summarize`` result, e.g. for the end-of-training log line.

    ::

        group     top1    many  medium     few
        acc (%)  41.20   66.31   42.00     n/a
        classes    100      35      35       0
    """

    def cell(value: Optional[float]) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    sizes = summary["group_sizes"]
    rows = [
        ("group", "top1", *GROUPS),
        ("acc (%)", cell(summary["top1"]), *(cell(summary[name]) for name in GROUPS)),
        ("classes", str(len(summary["per_class"])), *(str(sizes[name]) for name in GROUPS)),
    ]
    lines = [f"{row[0]:<8}" + "".join(f"{entry:>8}" for entry in row[1:]) for row in rows]
    lines.append(
        f"top5 {cell(summary['top5'])}  mean/class {cell(summary['mean_per_class'])}  "
        f"ECE {cell(summary['ece'])}  NLL {summary['nll']:.4f}  (n={summary['num_samples']})"
    )
    return "\n".join(lines)
