"""Residual networks for 32x32 inputs: the thin ResNet-32 and the wide ResNet-34 of the CIFAR-LT papers.

* ``resnet32``: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), Sec. 4.2:
  a 3x3 stem with 16 channels, three stages of n = 5 basic blocks with 16/32/64 channels
  (6n + 2 = 32 layers) and parameter-free "option A" shortcuts. This is the ~0.46M-parameter
  network that LDAM-DRW (Cao et al., NeurIPS 2019), BCCL and Yang & Xu (NeurIPS 2020) train on
  CIFAR-LT, with the Kaiming-normal initialisation of the LDAM-DRW code.
* ``resnet34_cifar``: the ImageNet ResNet-34 stage layout [3, 4, 6, 3] with 64/128/256/512 channels
  and projection ("option B") shortcuts, but with a 3x3 stride-1 stem and no max-pool so that a
  32x32 image still ends on a 4x4 map. About 21M parameters; the CIFAR backbone of the LCSL code.

Both return globally average-pooled features; the classifier lives in ``models.heads``. Module names
(``conv1``, ``bn1``, ``layerK.i.conv1``, ``layerK.i.shortcut``) follow the public CIFAR code bases, so
their checkpoints map onto these backbones without renaming anything but the final classifier.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ShortcutKind = Literal["A", "B"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the following BatchNorm supplies the shift)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class SubsampleChannelPad(nn.Module):
    """Option-A shortcut of He et al. (2016, Sec. 4.2): identity with stride and zero channels.

    Spatial size is reduced by keeping every ``stride``-th pixel (``x[:, :, ::s, ::s]``) and the
    missing channels are zeros, split evenly on both sides of the input channels as in the CIFAR
    reference code. It has no parameters, so ResNet-32 keeps its 0.46M count. It is a real module
    rather than a lambda so that models pickle (DataLoader workers, ``torch.save(model)``).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option-A shortcut cannot shrink channels: {in_planes} -> {out_planes}")
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.stride = stride
        self.pad_front = (out_planes - in_planes) // 2
        self.pad_back = out_planes - in_planes - self.pad_front

    def forward(self, x: Tensor) -> Tensor:
        # x: N x C_in x H x W  ->  N x C_out x ceil(H/s) x ceil(W/s)
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad reads its tuple from the last dim backwards: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}"


def make_shortcut(kind: ShortcutKind, in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """The residual branch's skip path: identity when shapes agree, else option A or option B.

    Option B (a 1x1 strided convolution + BatchNorm) is what the ImageNet ResNets and the wide
    CIFAR ResNet-34 use; option A is parameter-free and belongs to the thin CIFAR ResNets.
    """
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if kind == "A":
        return SubsampleChannelPad(in_planes, out_planes, stride)
    if kind == "B":
        return nn.Sequential(
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_planes),
        )
    raise ValueError(f"unknown shortcut kind {kind!r}; choose 'A' or 'B'")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a skip path, ReLU after the sum (He et al. 2016, Fig. 2)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: ShortcutKind = "A"):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem, a stack of BasicBlock stages, global average pooling; returns (N, out_dim) features.

    Args:
        num_blocks: blocks per stage, e.g. ``(5, 5, 5)`` for ResNet-32.
        widths: channels per stage; the stem has ``widths[0]`` channels. The first stage keeps the
            resolution, every later stage halves it.
        shortcut: ``"A"`` (zero-padding) or ``"B"`` (1x1 projection) where shapes change.
        kaiming_init: Kaiming-normal conv weights as in the LDAM-DRW ResNet-32; ``False`` keeps
            PyTorch's default initialisation, as the kuangliu-style ResNet-34 code does.
    """

    def __init__(
        self,
        num_blocks: Sequence[int],
        widths: Sequence[int],
        shortcut: ShortcutKind,
        kaiming_init: bool = True,
    ):
        super().__init__()
        if len(num_blocks) != len(widths) or not widths:
            raise ValueError(f"need one width per stage, got num_blocks={num_blocks}, widths={widths}")
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for index, (blocks, width) in enumerate(zip(num_blocks, widths)):
            stride = 1 if index == 0 else 2
            stage = []
            for block_index in range(blocks):
                stage.append(BasicBlock(in_planes, width, stride if block_index == 0 else 1, shortcut))
                in_planes = width
            # layer1, layer2, ...: the names every public CIFAR ResNet uses.
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.num_stages = len(widths)
        self.out_dim: int = in_planes
        self.kaiming_init = kaiming_init  # build_model gives a linear head the same init
        if kaiming_init:
            self._init_kaiming()

    def _init_kaiming(self) -> None:
        # LDAM-DRW's `_weights_init` (kaiming_normal_, fan_in, ReLU gain, on conv and linear
        # weights; BatchNorm left at 1 / 0). Matching it keeps the CIFAR-LT numbers of LDAM-DRW,
        # BCCL and Yang & Xu comparable; a Linear head attached later gets its own init.
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        # x: N x 3 x H x W
        out = F.relu(self.bn1(self.conv1(x)))
        for index in range(self.num_stages):
            out = getattr(self, f"layer{index + 1}")(out)
        # Adaptive pooling: equals avg_pool(8) / avg_pool(4) of the reference code on 32x32 inputs
        # and stays global on any other size.  N x C x h x w -> N x C
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


def resnet32() -> CifarResNet:
    """ResNet-32 for CIFAR (He et al. 2016; LDAM-DRW / BCCL / Yang & Xu 2020): 64-d features."""
    return CifarResNet(num_blocks=(5, 5, 5), widths=(16, 32, 64), shortcut="A", kaiming_init=True)


def resnet34_cifar() -> CifarResNet:
    """Wide ResNet-34 with a 3x3 stem and no max-pool (the LCSL CIFAR backbone): 512-d features."""
    return CifarResNet(num_blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), shortcut="B", kaiming_init=False)
