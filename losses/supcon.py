"""Contrastive losses of BCCL on L2-normalised projections: class-averaged SupCon and the centroid loss.

Both take ``features`` shaped N x V x D (N images, V augmented views, unit-norm D-d projections)
and integer ``labels`` of length N, the layout of Khosla et al.'s SupCon code. They are not in
the ``LOSSES`` registry, whose entries are ``(logits, targets)`` classification losses.

References:
* Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. 2 (L^sup_out).
* Zhu et al., "Balanced Contrastive Learning for Long-Tailed Visual Recognition", CVPR 2022,
  Eq. 5-6 (class-averaging of the denominator).
* BCCL ("Balanced Clustering Contrastive Learning for Long-Tailed Data Recognition"): the released
  code's versions of both, reproduced here (docs/bccl.md#class-averaged-contrastive-loss and
  docs/bccl.md#centroid-loss).

Both are computed in float32 with autocast off: the SupCon logits z.z'/T reach 1/T ~ 14 and a
log-sum-exp over a few hundred of them loses digits in half precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(features: Tensor, labels: Tensor) -> None:
    if features.dim() != 3:
        raise ValueError(f"features must be N x V x D (images x views x dim), got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.numel() != features.shape[0]:
        raise ValueError(f"labels must have one entry per image ({features.shape[0]}), got shape {tuple(labels.shape)}")


def _flatten_views(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """N x V x D -> (V*N) x D in view-major order (all view-1 rows, then all view-2 rows, ...),
    the anchor order of the SupCon and BCCL code, with the labels repeated to match."""
    num_views = features.shape[1]
    anchors = features.transpose(0, 1).reshape(-1, features.shape[2])  # (V*N) x D
    return anchors, labels.repeat(num_views)  # (V*N)


def class_averaged_supcon(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """BCCL's class-averaged supervised contrastive loss (docs/bccl.md#class-averaged-contrastive-loss).

    For every anchor i among the M = V*N projections, with positives P(i) = {p != i : y_p = y_i}:

        L_i = -1/|P(i)| * sum_{p in P(i)} [ z_i.z_p / T - log sum_{j != i} exp(z_i.z_j / T) / w_ij ]
        w_ij = b_{y_j} - [j in P(i)]   (values < 1e-6 replaced by 1),

    where b_c is the number of class-c images in the batch counted over ONE view. Dividing each
    term of the denominator by its class size makes every class weigh about the same in it, so
    head classes, which fill most of a long-tailed batch, stop dominating the repulsion (BCL's
    class-averaging, Zhu et al. CVPR 2022, Eq. 6; BCCL counts one view where BCL counts both plus
    a prototype). |P(i)| is floored at 1, so an anchor without positives contributes 0 but still
    counts in the mean L = (1/M) sum_i L_i, as in the reference code.

    Args:
        features: N x V x D L2-normalised projections.
        labels: N class indices.
        temperature: T (BCCL: 0.1 on CIFAR, 0.07 on ImageNet-LT / iNaturalist).
    Returns:
        the scalar loss (float32).
    """
    _check(features, labels)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    with torch.autocast(device_type=features.device.type, enabled=False):
        anchors, anchor_labels = _flatten_views(features.float(), labels)  # M x D, M
        size = anchors.shape[0]
        logits = anchors @ anchors.T / temperature  # M x M
        self_mask = torch.eye(size, dtype=torch.bool, device=anchors.device)
        positive = (anchor_labels[:, None] == anchor_labels[None, :]) & ~self_mask  # M x M
        # b_{y_j} for every image j, counted over one view (a comparison, so no host sync).
        class_size = (labels[:, None] == labels[None, :]).sum(1).to(logits.dtype)  # N
        class_size = class_size.repeat(features.shape[1])  # M, in anchor order
        weights = class_size[None, :] - positive.to(logits.dtype)  # M x M, w_ij
        weights = torch.where(weights < 1e-6, torch.ones_like(weights), weights)
        # log sum_{j != i} exp(l_ij) / w_ij as one log-sum-exp of l_ij - log w_ij: stable for any T.
        shifted = (logits - weights.log()).masked_fill(self_mask, float("-inf"))
        log_denominator = torch.logsumexp(shifted, dim=1, keepdim=True)  # M x 1
        log_prob = logits - log_denominator  # M x M
        num_positives = positive.sum(1).clamp_min(1)  # M
        per_anchor = -(log_prob * positive).sum(1) / num_positives  # M
        return per_anchor.mean()


def centroid_loss(features: Tensor, labels: Tensor, centroids: Tensor) -> Tensor:
    """BCCL's centroid loss against K k-means centroids per class (docs/bccl.md#centroid-loss).

    With s_{i,ck} = z_i . mu_{c,k} (no temperature, centroids not re-normalised) the released code
    evaluates -mean(log(exp(s * m) / exp(s * (1 - m)))) with m the own-class mask, which is

        L_cen = 1 / (M * C * K) * sum_i [ sum_{c != y_i, k} s_{i,ck} - sum_k s_{i,y_i k} ]

    over the M = V*N anchors: a linear pull towards the anchor's own class centroids and push
    away from every other class's, averaged over all C*K columns. It is computed in this linear
    form directly (the exp / log round trip of the reference overflows for no benefit). A class
    whose centroids are all zero (it has not been clustered yet) contributes 0 to the sum but
    still counts in C, as the zero-initialised centroids of the reference do.

    Args:
        features: N x V x D L2-normalised projections.
        labels: N class indices in [0, C).
        centroids: C x K x D centroids.
    Returns:
        the scalar loss (float32).
    """
    _check(features, labels)
    if centroids.dim() != 3 or centroids.shape[2] != features.shape[2]:
        raise ValueError(f"centroids must be C x K x {features.shape[2]}, got shape {tuple(centroids.shape)}")
    num_classes, num_centroids, dim = centroids.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        anchors, anchor_labels = _flatten_views(features.float(), labels)  # M x D, M
        similarity = anchors @ centroids.float().reshape(-1, dim).T  # M x (C*K), column c*K + k
        own = F.one_hot(anchor_labels, num_classes).to(similarity.dtype)  # M x C
        own = own.repeat_interleave(num_centroids, dim=1)  # M x (C*K)
        # (1 - 2m) * s is s for other-class columns and -s for own-class columns.
        return ((1.0 - 2.0 * own) * similarity).mean()
