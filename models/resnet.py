"""ImageNet-scale backbones: ResNet-50 and ResNeXt-50 (32x4d) in torchvision's layout, without the fc.

ResNet-50: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).
ResNeXt-50 32x4d: Xie et al., "Aggregated Residual Transformations for Deep Neural Networks"
(CVPR 2017). These are the ImageNet-LT / iNaturalist-2018 backbones of LCSL, BCCL and Yang & Xu
(NeurIPS 2020).

The trunk *is* a ``torchvision.models.ResNet`` (a subclass, not a wrapper), so its parameter names
are torchvision's (``conv1.weight``, ``layer3.2.bn2.running_mean``, ...). A torchvision or MoCo
checkpoint therefore loads after only stripping its prefix (``module.encoder_q.``) and dropping
``fc.*``. The fc is replaced by ``nn.Identity`` so the forward ends at the 2048-d output of
torchvision's ``AdaptiveAvgPool2d(1)``, which is global pooling at any input size (unlike the
``avg_pool2d(out, 4)`` of the LCSL iNat ResNet-50, which on a 7x7 map pools only a 4x4 corner).
"""
from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet


class ResNetTrunk(ResNet):
    """A torchvision ``ResNet`` whose ``fc`` is the identity: images -> (N, out_dim) pooled features.

    Args are those of ``torchvision.models.ResNet`` minus ``num_classes`` (the classifier is a
    separate head, see ``models.heads``). Weights are always randomly initialised here; loading a
    pre-trained trunk is the checkpoint code's job, so that it can assert which keys are missing.
    """

    out_dim: int

    def __init__(self, **resnet_kwargs: Any):
        if "num_classes" in resnet_kwargs:
            raise ValueError("ResNetTrunk has no classifier; pass num_classes to the head instead")
        super().__init__(**resnet_kwargs)
        # Read the width before dropping fc: 512 * block.expansion, i.e. 2048 for Bottleneck.
        self.out_dim = self.fc.in_features
        self.fc = nn.Identity()


def resnet50(zero_init_residual: bool = False) -> ResNetTrunk:
    """ResNet-50, same modules and names as ``torchvision.models.resnet50(weights=None)``; 2048-d."""
    return ResNetTrunk(block=Bottleneck, layers=[3, 4, 6, 3], zero_init_residual=zero_init_residual)


def resnext50(zero_init_residual: bool = False) -> ResNetTrunk:
    """ResNeXt-50 32x4d, as ``torchvision.models.resnext50_32x4d(weights=None)``; 2048-d features.

    32 groups of width 4 in the 3x3 convolutions of each bottleneck (Xie et al. 2017, Table 1).
    """
    return ResNetTrunk(
        block=Bottleneck,
        layers=[3, 4, 6, 3],
        groups=32,
        width_per_group=4,
        zero_init_residual=zero_init_residual,
    )
