"""Label-distribution-aware margin loss (LDAM)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import LOSSES
from .ce import ClassCountLoss
from .priors import Counts, ldam_margins


@LOSSES.register("ldam")
class LDAMLoss(ClassCountLoss):
    """LDAM (Cao et al., NeurIPS 2019, Eq. 13) on cosine logits.

    L = -log( e^{s(z_y - m_y)} / (e^{s(z_y - m_y)} + sum_{j != y} e^{s z_j}) ), with margins
    m_c = C' / n_c^{1/4} (Eq. 12) and scale s. Only the target logit is shifted, so rare classes
    must win by a larger margin. The logits are expected in [-1, 1] from a normalised classifier
    (``needs_normed_head``); s = 30 turns them into usable softmax temperatures. Class weights
    (re-weighting, DRW) enter as torch's weighted mean, as in LDAM-DRW.
    """

    needs_normed_head = True

    def __init__(self, class_counts: Counts, max_margin: float = 0.5, scale: float = 30.0):
        super().__init__(class_counts)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"ldam scale must be a finite number > 0, got {scale}")
        self.max_margin = float(max_margin)
        self.scale = float(scale)
        self.register_buffer("margins", ldam_margins(self.class_counts, max_margin))

    @property
    def logit_scale(self) -> float:
        return self.scale

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(logits, targets)
        # margins[targets]: (N,) -> (N, 1); scatter_add subtracts it from column y_i of row i only.
        target_margin = self.margins.to(logits.dtype)[targets].unsqueeze(1)
        shifted = logits.scatter_add(1, targets.unsqueeze(1), -target_margin)
        return self._weighted_ce(self.scale * shifted, targets)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_margin={self.max_margin}, scale={self.scale}"
