"""Classification losses for long-tailed training, built by name from the ``LOSSES`` registry.

Every registered loss is an ``nn.Module`` built as
``LOSSES.build(name, class_counts=[n_1, ..., n_C], **hparams)`` and called as
``loss(logits, targets)`` -> scalar mean. Per-class weights (re-weighting, DRW) are switched with
``loss.set_class_weights(weights_or_None)``; ``needs_normed_head`` tells the entry script whether
the loss expects cosine logits, ``logit_scale`` by what factor it multiplies the logits before its
softmax (LDAM's s; evaluation applies it too, so probabilities are the trained ones).
"""
from utils.registry import Registry

# Created before the submodules are imported: each of them registers itself with this object
# through a decorator when its module is executed.
LOSSES = Registry("loss")

from . import ce, focal, ldam, logit_adjust  # noqa: E402,F401  (imported for registration)
from .ce import ClassCountLoss, CrossEntropy  # noqa: E402
from .focal import FocalLoss  # noqa: E402
from .ldam import LDAMLoss  # noqa: E402
from .logit_adjust import BalancedSoftmaxLoss, LogitAdjustedLoss  # noqa: E402

__all__ = [
    "LOSSES",
    "ClassCountLoss",
    "CrossEntropy",
    "FocalLoss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "BalancedSoftmaxLoss",
]
