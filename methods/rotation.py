"""Rotation prediction as self-supervised pre-training (SSP), the CIFAR stage 1 of Yang & Xu,
"Rethinking the Value of Labels for Improving Class-Imbalanced Learning" (NeurIPS 2020), Sec. 4;
the pretext task of Gidaris et al., "Unsupervised Representation Learning by Predicting Image
Rotations" (ICLR 2018).

Every image of a batch is turned by k x 90 degrees, k drawn from a shuffled balanced list of
{0, 1, 2, 3} (docs/semi_self.md#rotation-pre-training), and a 4-way head learns k with
cross-entropy. Labels never reach the backbone. To make the engine's per-epoch test numbers
meaningful, the network's own class head is trained as an online linear probe on *detached*
features of the upright images (a read-out, not a training signal for the backbone), and the
rotation accuracy on the rotated evaluation images, the number the paper's code logs, is recorded
as ``method/rotation_top1``.

Stage 2: ``main.py --method ce --pretrained_model RUN`` loads this run's ``model.backbone``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from methods.base import METHOD_CLIS, METHODS, Method, MethodChoice, MethodCommandLine
from methods.erm import RECIPE as ERM_RECIPE
from methods.options import MethodOptions
from models import init_linear_like_backbone
from utils import dist

NUM_ROTATIONS = 4


def rotation_labels(batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """k in {0, 1, 2, 3} per image: a random permutation of [0, 1, 2, 3] * ceil(B / 4), cut to B,
    so every rotation appears equally often up to one (the reference's ``rotation``)."""
    repeats = -(-batch_size // NUM_ROTATIONS)
    balanced = torch.arange(NUM_ROTATIONS).repeat(repeats)
    return balanced[torch.randperm(len(balanced), generator=generator)][:batch_size]


def rotate_images(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Image i turned by labels[i] x 90 degrees counter-clockwise over (H, W), as
    ``torch.rot90(image, k, [1, 2])`` on each C x H x W image. One op per k, not per image."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation needs square images, got {images.shape[-2]}x{images.shape[-1]}")
    # A select per k rather than boolean-mask indexing, whose data-dependent size would make the
    # host wait for the GPU on every batch.
    choice = labels.to(images.device, non_blocking=True).view(-1, 1, 1, 1)
    rotated = images
    for k in range(1, NUM_ROTATIONS):
        rotated = torch.where(choice == k, torch.rot90(images, k, dims=(2, 3)), rotated)
    return rotated


class _RotationNetwork(nn.Module):
    """Backbone -> (rotation logits N x 4, probe logits N x C); the probe sees detached features."""

    def __init__(self, model: nn.Module, rotation_head: nn.Module):
        super().__init__()
        self.model = model
        self.rotation_head = rotation_head

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.model.backbone(images)
        return self.rotation_head(features), self.model.head(features.detach())


@METHODS.register("rotation")
class RotationPretraining(Method):
    """4-way rotation classification on the long-tailed training images (no labels used)."""

    name = "rotation"
    self_supervised = True

    def __init__(self, model: nn.Module, class_counts: Sequence[int]):
        super().__init__(model, class_counts)
        # As the reference builds it: the network's own classifier with 4 outputs, so on ResNet-32
        # it gets the same Kaiming-normal init.
        self.rotation_head = init_linear_like_backbone(model.backbone, nn.Linear(model.feat_dim, NUM_ROTATIONS))
        # Outside the module tree (the state dict holds `model` and `rotation_head` once each).
        object.__setattr__(self, "_joint", _RotationNetwork(model, self.rotation_head))
        # Hits and images of the rotated evaluation batches since the last epoch end.
        self.register_buffer("rotation_eval", torch.zeros(2, dtype=torch.long), persistent=False)

    def trainable_network(self) -> nn.Module:
        return self._joint

    def training_step(self, images, targets, epoch, indices=None):
        labels = rotation_labels(images.shape[0]).to(images.device, non_blocking=True)
        rotation_logits, probe_logits = self.network(rotate_images(images, labels))
        rotation_loss = F.cross_entropy(rotation_logits, labels)
        # The probe reads upright images only (those with k = 0), the view evaluation shows it;
        # a mask instead of indexing keeps the step free of host synchronisation.
        upright = (labels == 0).float()
        per_image = F.cross_entropy(probe_logits, targets, reduction="none")
        probe_loss = (per_image * upright).sum() / upright.sum().clamp_min(1.0)
        accuracy = (rotation_logits.detach().argmax(dim=1) == labels).float().mean() * 100.0
        return {"loss": rotation_loss + probe_loss, "logits": rotation_logits,
                "parts": {"loss/rotation": rotation_loss.detach(), "loss/probe": probe_loss.detach(),
                          "acc/rotation": accuracy}}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Probe logits of the upright images; also scores the rotation head on the same images
        turned by 0, 90, 180, 270, 0, ... degrees (a fixed pattern, so epochs are comparable)."""
        batch = images.shape[0]
        labels = torch.arange(batch, device=images.device) % NUM_ROTATIONS
        # DataParallel splits the doubled batch across GPUs; DDP is bypassed, as evaluation shards
        # may differ in length between ranks and DDP's forward would wait for the others.
        net = self._network if isinstance(self._network, nn.DataParallel) else self._joint
        rotation_logits, probe_logits = net(torch.cat([images, rotate_images(images, labels)]))
        hits = (rotation_logits[batch:].argmax(dim=1) == labels).sum()
        self.rotation_eval += torch.stack([hits, torch.full_like(hits, batch)]).to(self.rotation_eval)
        return probe_logits[:batch]

    def on_epoch_end(self, epoch: int, evaluations: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        counts = dist.all_reduce_mean(self.rotation_eval.double())  # the ratio is what matters
        self.rotation_eval.zero_()
        if counts[1] <= 0:
            return {}
        accuracy = float(100.0 * counts[0] / counts[1])
        return {"method/rotation_top1": accuracy,
                "method/rotation_scope": f"rotated images of the {' and '.join(sorted(evaluations))} "
                                         "split(s) at the last evaluation"}


# ---- command line ------------------------------------------------------------------------------
class RotationCommandLine(MethodCommandLine):
    """Rotation pre-training has no flags of its own."""

    names = ("rotation",)
    title = "rotation pre-training (--method rotation)"
    # The paper's pretrain_rot.py trains with the supervised CIFAR recipe
    # (docs/baselines.md#the-ldam-drw-recipe).
    recipe = ERM_RECIPE

    def choose(self, args) -> MethodChoice:
        self.refuse_cosine_head(args, "trains linear heads (give --use_norm / --head_scale to the stage-2 "
                                      "run that loads this backbone)")
        return MethodChoice("rotation", MethodOptions(), "rotation", self.recipe)


METHOD_CLIS.register("rotation")(RotationCommandLine())
