"""Classifier heads on pooled features, and the weight-norm tools the long-tail recipes apply to them.

* ``linear``: an ``nn.Linear`` with bias (cross-entropy, logit adjustment, LCSL).
* ``normed``: ``NormedLinear``, the cosine classifier of LDAM-DRW (Cao et al., NeurIPS 2019) and
  BCL / BCCL: logits_c = s * cos(h, w_c).
* ``tau_normalized_weight`` / ``tau_normalize_head``: post-hoc tau-normalisation of Kang et al.,
  "Decoupling Representation and Classifier for Long-Tailed Recognition" (ICLR 2020), Sec. 4:
  w_c <- w_c / ||w_c||^tau, which shrinks the large norms head classes acquire under
  instance-balanced training. LCSL evaluates tau = 1.9 at the end of training.
* ``normalize_rows_``: the in-place tau = 1 version the LCSL teacher applies every epoch.

Every head factory has the signature ``(in_dim, num_classes, scale)`` so ``build_model`` can treat
them alike; each head exposes ``in_features``, ``out_features`` and a ``weight`` of shape
(num_classes, in_dim).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class NormedLinear(nn.Module):
    """Cosine classifier: ``scale * <h / ||h||, w_c / ||w_c||>`` for every class c, no bias.

    LDAM-DRW uses scale 1 (its loss multiplies the margin-adjusted cosine by s = 30); BCCL uses
    scale 1 / 0.03; BCL uses 30. Outputs lie in [-scale, scale], so the head cannot grow its logits
    for frequent classes by growing their weight norms, which is the point of using it on long
    tails. The weight has ``nn.Linear``'s shape and name, so weight-norm tools apply unchanged.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0):
        super().__init__()
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"NormedLinear scale must be a positive finite number, got {scale}")
        self.in_features = in_features
        self.out_features = out_features
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self, max_norm: float | None = None) -> None:
        """Uniform(-1, 1) entries, then each class vector scaled to unit norm (``max_norm=None``,
        LDAM-DRW's ``renorm_(2, 1, 1e-5).mul_(1e5)``) or clipped to norm at most ``max_norm``
        (BCCL's ``renorm_(2, 1, 5)``, ``model/resnet.py``).

        Only the direction enters the forward, but the norm sets the head's effective learning
        rate: the gradient of cos(h, w) with respect to w scales with 1 / ||w||, so BCCL's rows of
        norm ~4.6 (64-d uniform entries: sqrt(64 / 3)) learn about five times slower at first
        than unit rows.
        """
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            if max_norm is None:
                self.weight.copy_(F.normalize(self.weight, dim=1))
            else:
                self.weight.renorm_(2, 0, max_norm)  # dim 0: each row, our (classes x dim) layout

    def forward(self, x: Tensor) -> Tensor:
        # x: N x D, weight: C x D  ->  logits: N x C
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale:g}"


def linear_head(in_dim: int, num_classes: int, scale: float | None = None) -> nn.Linear:
    """Plain linear classifier with bias. It has no scale, so asking for one is an error."""
    if scale is not None:
        raise ValueError(
            f"the 'linear' head takes no scale (got scale={scale}); use head='normed' for a scaled "
            "cosine classifier"
        )
    return nn.Linear(in_dim, num_classes, bias=True)


def normed_head(in_dim: int, num_classes: int, scale: float | None = None) -> NormedLinear:
    """Cosine classifier; ``scale=None`` means 1.0, the unscaled cosine that LDAM's loss expects."""
    return NormedLinear(in_dim, num_classes, scale=1.0 if scale is None else scale)


def tau_normalized_weight(weight: Tensor, tau: float) -> Tensor:
    """Row-wise ``w_c / ||w_c||_2 ** tau`` (tau-normalisation, Kang et al., ICLR 2020, Sec. 4).

    tau = 0 returns the weights unchanged and tau = 1 gives unit rows; values in between remove the
    norm imbalance between classes partially, values above 1 (LCSL uses 1.9) reverse it, so classes
    whose weights had large norms (the frequent ones) end up with the smaller ones.

    Args:
        weight: C x D class weight matrix (``nn.Linear.weight`` layout).
        tau: non-negative exponent.
    Returns:
        a new C x D tensor; ``weight`` is not modified.
    """
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D (classes x dim) weight, got shape {tuple(weight.shape)}")
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be a non-negative finite number, got {tau}")
    # Clamp so an all-zero row stays zero instead of becoming 0/0 = nan.
    norms = weight.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


def _check_has_weight(head: nn.Module) -> None:
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise TypeError(f"expected a head with a 2-D `weight` (Linear or NormedLinear), got {type(head).__name__}")


def tau_normalize_head(head: nn.Module, tau: float, keep_bias: bool = True) -> nn.Module:
    """A deep copy of ``head`` with tau-normalised weight rows; the bias kept, or dropped.

    The post-hoc classifier re-balancing of Kang et al. (ICLR 2020): no retraining, evaluated on
    the copy so the trained head (and its checkpoint) stays intact. Their tau_norm.py scores
    features against the normalised rows alone (no bias: ``keep_bias=False``); LCSL's final
    report normalises the weight of its linear layer in place, which keeps adding the bias
    (``keep_bias=True``). For a ``NormedLinear`` the forward renormalises anyway, so the copy
    computes the same logits; it is accepted so that evaluation code need not branch on the
    head type.
    """
    _check_has_weight(head)
    normalized = copy.deepcopy(head)
    with torch.no_grad():
        normalized.weight.copy_(tau_normalized_weight(head.weight, tau))
    if not keep_bias and getattr(normalized, "bias", None) is not None:
        normalized.bias = None  # F.linear without a bias
    return normalized


@torch.no_grad()
def normalize_rows_(head: nn.Module) -> nn.Module:
    """L2-normalise every class weight row of ``head`` in place (tau = 1); the bias is untouched.

    LCSL re-normalises its teacher's classifier at the start of each epoch, removing the
    weight-norm advantage of head classes before the teacher labels minority samples.
    Returns ``head`` for chaining.
    """
    _check_has_weight(head)
    head.weight.copy_(F.normalize(head.weight, dim=1))
    return head
