"""Cross-entropy and the base class every count-aware classification loss shares."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import LOSSES
from .priors import Counts, as_counts


class ClassCountLoss(nn.Module):
    """A classification loss that knows the training class counts and optional class weights.

    ``class_counts`` (int64, (C,)) and ``class_weights`` (float32, (C,)) are buffers, so
    ``.to(device)`` moves them and a checkpoint stores them. The weights are always present:
    "unweighted" is all ones, for which torch's weighted mean equals the plain mean. That keeps
    the state-dict keys identical whether or not re-weighting (or DRW) is switched on, so a strict
    load never depends on which epoch a checkpoint was written in.

    Subclasses implement ``forward(logits, targets)`` with logits (N, C) and targets (N,) int64,
    returning the scalar mean loss.
    """

    # The entry script reads this to choose a cosine (normalised) classifier head.
    needs_normed_head: bool = False

    @property
    def logit_scale(self) -> float:
        """The factor the loss multiplies the network's logits by before its softmax: the
        predictive distribution it trains is softmax(logit_scale * logits)."""
        return 1.0

    def __init__(self, class_counts: Counts):
        super().__init__()
        counts = as_counts(class_counts)
        if not torch.equal(counts, counts.round()):
            raise ValueError("class_counts must be whole numbers of training samples")
        self.register_buffer("class_counts", counts.long())
        self.register_buffer("class_weights", torch.ones(counts.numel(), dtype=torch.float32))

    @property
    def num_classes(self) -> int:
        return self.class_counts.numel()

    @torch.no_grad()
    def set_class_weights(self, weights: Optional[Counts]) -> None:
        """Use per-class weights w_c from now on (re-weighting, DRW); ``None`` switches them off.

        The buffer is filled in place, so it stays on the device the loss was moved to.
        """
        if weights is None:
            self.class_weights.fill_(1.0)
            return
        values = torch.as_tensor(weights).detach().to("cpu", torch.float64).flatten()
        if values.numel() != self.num_classes:
            raise ValueError(f"got {values.numel()} class weights for {self.num_classes} classes")
        if not torch.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
            raise ValueError("class weights must be finite, non-negative and not all zero")
        self.class_weights.copy_(values.to(self.class_weights.dtype))

    def _check(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        # Shape checks only: they cost nothing and turn a class-count mismatch between the
        # dataset and the head into a clear error instead of an index error inside a kernel.
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"{type(self).__name__} expects logits of shape (N, {self.num_classes}), "
                f"got {tuple(logits.shape)}"
            )
        if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
            raise ValueError(f"expected targets of shape ({logits.shape[0]},), got {tuple(targets.shape)}")

    def _weight_for(self, logits: torch.Tensor) -> torch.Tensor:
        # F.cross_entropy wants the weight in the input's dtype (e.g. half logits outside autocast).
        return self.class_weights.to(logits.dtype)

    def _weighted_ce(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """sum_i w_{y_i} CE_i / sum_i w_{y_i}: torch's weighted mean, as the reference code uses."""
        return F.cross_entropy(logits, targets, weight=self._weight_for(logits))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"


@LOSSES.register("ce")
class CrossEntropy(ClassCountLoss):
    """Softmax cross-entropy -log softmax(z)_y, optionally class-weighted.

    With effective-number weights this is the class-balanced softmax loss of Cui et al.
    (CVPR 2019, Eq. 4 applied to softmax CE); with ``drw_weights`` it is CE-DRW (Cao et al.,
    NeurIPS 2019, Alg. 1).
    """

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(logits, targets)
        return self._weighted_ce(logits, targets)
