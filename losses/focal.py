"""Focal loss in the form used by the LDAM-DRW and semi-self code."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import LOSSES
from .ce import ClassCountLoss
from .priors import Counts


@LOSSES.register("focal")
class FocalLoss(ClassCountLoss):
    """Focal loss (Lin et al., ICCV 2017, Eq. 4): FL = (1 - p_t)^gamma * (-log p_t).

    Following the semi-self / LDAM-DRW code, the modulating factor is computed from the per-sample
    *weighted* CE value v_i = w_{y_i} * CE_i rather than from the softmax itself:
    p_i = exp(-v_i) and loss = mean_i (1 - p_i)^gamma * v_i. Without weights p_i is exactly the
    target probability, so this is Lin et al.'s loss; with weights the class weight also
    sharpens the modulation. The reduction is a plain mean over the batch (not torch's weighted
    mean), again as in that code, so with weights and gamma = 0 it is mean(w_y * CE), which
    differs from weighted ``ce`` by the constant-per-batch factor N / sum_i w_{y_i}.
    """

    def __init__(self, class_counts: Counts, gamma: float = 1.0):
        super().__init__(class_counts)
        if not (math.isfinite(gamma) and gamma >= 0):
            raise ValueError(f"focal gamma must be a finite number >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(logits, targets)
        # v: (N,), each sample's CE already multiplied by its class weight.
        per_sample = F.cross_entropy(logits, targets, weight=self._weight_for(logits), reduction="none")
        # 1 - exp(-v) via expm1 keeps precision when v is tiny (well-classified samples).
        modulation = (-torch.expm1(-per_sample)).pow(self.gamma)
        return (modulation * per_sample).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}"
