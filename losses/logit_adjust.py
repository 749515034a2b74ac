"""Losses that add a class-prior offset to the logits during training only."""
from __future__ import annotations

import torch

from . import LOSSES
from .ce import ClassCountLoss
from .priors import Counts, log_prior


@LOSSES.register("logit_adjust")
class LogitAdjustedLoss(ClassCountLoss):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021, Eq. 10): CE(z + tau * log pi, y).

    Adding the log prior during training makes the raw logits estimate the balanced posterior,
    so prediction uses the raw logits with no post-hoc step (this is how BCCL uses it, tau = 1).
    With a uniform prior the offset is the same for every class and the loss equals CE.
    """

    def __init__(self, class_counts: Counts, tau: float = 1.0):
        super().__init__(class_counts)
        self.tau = float(tau)
        self.register_buffer("log_prior", log_prior(self.class_counts, self.tau))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(logits, targets)
        # The float32 offset promotes half logits, so the shift is added at full precision.
        return self._weighted_ce(logits + self.log_prior, targets)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.tau}"


@LOSSES.register("balanced_softmax")
class BalancedSoftmaxLoss(ClassCountLoss):
    """Balanced softmax (Ren et al., NeurIPS 2020, Eq. 4): CE(z + log n_c, y).

    phi_y = n_y e^{z_y} / sum_j n_j e^{z_j} compensates the label shift between the long-tailed
    training set and a balanced test set. Since softmax ignores a common shift, log n_c and
    log pi_c = log n_c - log N give the same loss: this equals ``logit_adjust`` with tau = 1.
    """

    def __init__(self, class_counts: Counts):
        super().__init__(class_counts)
        if (self.class_counts == 0).any():
            raise ValueError("balanced_softmax needs every class count > 0 (log n_c of an empty class is -inf)")
        self.register_buffer("log_counts", self.class_counts.double().log().float())

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check(logits, targets)
        return self._weighted_ce(logits + self.log_counts, targets)
