"""Backbones, classifier heads and the ``Classifier`` that joins them.

``MODELS`` and ``HEADS`` are the registries behind ``--arch`` / ``--head`` (``choices=MODELS.names()``);
``build_model(arch, num_classes, head, scale)`` is the one way training, evaluation and checkpoint
reloading construct a network, so a checkpoint that records these four values rebuilds its model.

A backbone maps N x 3 x H x W images to N x ``out_dim`` globally pooled features; a head maps those
to N x num_classes logits. Keeping the two apart (instead of a ``fc`` inside each backbone) lets the
methods read features without forward hooks (contrastive branches, centroids) and lets the
long-tail recipes swap or re-normalise the classifier alone (cosine heads, tau-normalisation).
"""
from __future__ import annotations

from torch import Tensor, nn

from utils.registry import Registry

from .heads import (
    NormedLinear,
    linear_head,
    normalize_rows_,
    normed_head,
    tau_normalize_head,
    tau_normalized_weight,
)
from .resnet import ResNetTrunk, resnet50, resnext50
from .resnet_cifar import CifarResNet, resnet32, resnet34_cifar

# Registered here, in one place, so the catalogue of names is readable at a glance and the
# backbone files stay free of registry imports.
MODELS = Registry("model")
MODELS.register("resnet32")(resnet32)
MODELS.register("resnet34_cifar")(resnet34_cifar)
MODELS.register("resnet50")(resnet50)
MODELS.register("resnext50")(resnext50)

HEADS = Registry("head")
HEADS.register("linear")(linear_head)
HEADS.register("normed")(normed_head)


class Classifier(nn.Module):
    """``head(backbone(x))``, with the features available without hooks.

    Parameter names start with ``backbone.`` and ``head.``, so a pre-trained trunk is loaded into
    ``model.backbone`` and a re-trained classifier (decoupled training, tau-normalisation) into
    ``model.head`` without renaming.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        feat_dim = getattr(backbone, "out_dim", None)
        if not isinstance(feat_dim, int):
            raise TypeError(f"backbone {type(backbone).__name__} must define an int `out_dim`")
        head_in = getattr(head, "in_features", None)
        if head_in != feat_dim:
            raise ValueError(f"head expects {head_in}-d features but the backbone gives {feat_dim}-d")
        self.backbone = backbone
        self.head = head
        self.feat_dim: int = feat_dim
        self.num_classes: int = int(getattr(head, "out_features"))

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled backbone features: N x 3 x H x W -> N x feat_dim."""
        return self.backbone(x)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (N x num_classes), or ``(logits, features)`` when ``return_features`` is set."""
        features = self.backbone(x)
        logits = self.head(features)
        if return_features:
            return logits, features
        return logits


def build_model(arch: str, num_classes: int, head: str = "linear", scale: float | None = None) -> Classifier:
    """Backbone ``arch`` from ``MODELS`` plus head ``head`` from ``HEADS`` with ``num_classes`` outputs.

    ``scale`` is the cosine head's logit scale (None: 1.0); the linear head rejects it. Unknown
    names raise ``KeyError`` listing the registered ones.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    # Look both names up before building, so a typo in the head fails before a ResNet-50 is built.
    backbone_factory = MODELS.get(arch)
    head_factory = HEADS.get(head)
    backbone = backbone_factory()
    classifier_head = head_factory(backbone.out_dim, num_classes, scale)
    if isinstance(classifier_head, nn.Linear):
        init_linear_like_backbone(backbone, classifier_head)
    return Classifier(backbone, classifier_head)


def init_linear_like_backbone(backbone: nn.Module, linear: nn.Linear) -> nn.Linear:
    """Kaiming-normal weights for a linear layer on a Kaiming-initialised backbone.

    The LDAM-DRW ResNet-32 code (also Yang & Xu's ``models/resnet_cifar.py``, ``_weights_init``)
    applies ``kaiming_normal_`` to every Linear it builds: the classifier, and in rotation
    pre-training the 4-way rotation classifier. Other backbones keep PyTorch's default init.
    The bias keeps PyTorch's default, as there. Returns ``linear``.
    """
    if getattr(backbone, "kaiming_init", False):
        nn.init.kaiming_normal_(linear.weight)
    return linear


__all__ = [
    "MODELS",
    "HEADS",
    "Classifier",
    "build_model",
    "init_linear_like_backbone",
    "CifarResNet",
    "ResNetTrunk",
    "NormedLinear",
    "resnet32",
    "resnet34_cifar",
    "resnet50",
    "resnext50",
    "linear_head",
    "normed_head",
    "tau_normalized_weight",
    "tau_normalize_head",
    "normalize_rows_",
]
