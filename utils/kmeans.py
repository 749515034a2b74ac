"""Batched k-means: the feature queues of all classes clustered at once, where the queues live.

BCCL (docs/bccl.md#queues-and-k-means-refresh) re-clusters each class's queue of recent projections into K
centroids with Lloyd's algorithm (Lloyd 1982): random initial centroids drawn from the queue,
Euclidean assignment, mean update, at most 100 iterations, stop once the squared centroid shift
is <= 1e-4. The reference calls the ``kmeans-gpu`` package once per class from Python; here the
class is a batch dimension, so one call does C problems with a few batched matrix products per
iteration, and each class stops on its own tolerance as it would alone.

Where this differs from ``kmeans-gpu`` (docs/bccl.md#known-bugs-in-the-reference-code, item 6), on purpose:
* an empty cluster is re-seeded at the point farthest from its current centroid (the j-th empty
  cluster of a class takes the j-th farthest point), never set to the zero vector;
* a class with fewer valid points n than K is not clustered: its n points are the centroids and
  slot k holds point (k mod n) of a random order, i.e. the n distinct points repeated cyclically
  (k-means with K >= n clusters puts each point in its own cluster anyway). ``kmeans-gpu`` raises
  for n < K; a class with no point at all gets zero centroids and ``num_points == 0``, so the
  caller can keep what it had;
* the random initialisation comes from a ``torch.Generator`` (deterministic under a seed), not
  NumPy's global RNG; ``init='kmeans++'`` offers k-means++ seeding instead of uniform draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

INITS = ("random", "kmeans++")


@dataclass
class KMeansResult:
    """What ``batched_kmeans`` returns; C problems, P points each, K clusters, D dimensions."""

    centroids: Tensor  # C x K x D float32, means of the assigned points
    assignments: Tensor  # C x P long, cluster of every valid point, -1 for padding
    num_points: Tensor  # C long, valid points per class
    iterations: int  # Lloyd iterations run (by the slowest class)


def squared_distances(points: Tensor, centroids: Tensor) -> Tensor:
    """||x - c||^2 for every point and centroid of every problem: C x P x D, C x K x D -> C x P x K."""
    cross = torch.bmm(points, centroids.transpose(1, 2))  # C x P x K
    squared = points.pow(2).sum(-1, keepdim=True) - 2.0 * cross + centroids.pow(2).sum(-1).unsqueeze(1)
    return squared.clamp_min(0.0)  # the expansion can go slightly negative in floating point


def _gather_points(points: Tensor, index: Tensor) -> Tensor:
    """points[c, index[c, k]] for every c, k: C x P x D, C x K -> C x K x D."""
    return points.gather(1, index.unsqueeze(-1).expand(-1, -1, points.shape[2]))


def _reseed_empty(points: Tensor, valid: Tensor, distances: Tensor, assign: Tensor, means: Tensor,
                  empty: Tensor) -> Tensor:
    """Moves every empty cluster onto a far point: the j-th empty cluster of a class (in cluster
    order) takes the point with the j-th largest distance to its own centroid, so several empty
    clusters of one class get distinct points (the relocation rule of scikit-learn's Lloyd)."""
    own = distances.gather(2, assign.unsqueeze(-1)).squeeze(-1)  # C x P
    own = own.masked_fill(~valid, -1.0)  # padding sorts after every real point
    farthest = torch.argsort(own, dim=1, descending=True, stable=True)  # C x P
    rank = (empty.long().cumsum(1) - 1).clamp(0, points.shape[1] - 1)  # C x K
    candidates = _gather_points(points, farthest.gather(1, rank))  # C x K x D
    return torch.where(empty.unsqueeze(-1), candidates, means)


def _random_init(valid: Tensor, num_points: Tensor, num_clusters: int,
                 generator: Optional[torch.Generator]) -> Tensor:
    """C x K point indices: K distinct valid points drawn uniformly (the reference's init), or,
    for a class with n < K points, its n points repeated cyclically in random order."""
    num_classes, num_slots = valid.shape
    scores = torch.rand(num_classes, num_slots, generator=generator).to(valid.device, non_blocking=True)
    scores = scores.masked_fill(~valid, -1.0)  # padding sorts after every real point
    order = torch.argsort(scores, dim=1, descending=True, stable=True)  # C x P, valid points first
    slot = torch.arange(num_clusters, device=valid.device).unsqueeze(0) % num_points.clamp_min(1).unsqueeze(1)
    return order.gather(1, slot.clamp_max(num_slots - 1))  # C x K


def _kmeans_plus_plus_init(x: Tensor, valid: Tensor, num_clusters: int,
                           generator: Optional[torch.Generator]) -> Tensor:
    """C x K point indices by k-means++ seeding (Arthur & Vassilvitskii, SODA 2007): the first
    uniformly, each next one with probability proportional to its squared distance to the
    nearest chosen one. The draws use the Gumbel-max trick (argmax of log p + Gumbel noise), so
    all classes sample at once from noise made on the CPU generator, with no host round trip."""
    num_classes, num_slots, _ = x.shape
    uniform = torch.rand(num_clusters, num_classes, num_slots, generator=generator).to(x.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1.0 - 1e-7)))  # K x C x P
    log_weight = torch.zeros(num_classes, num_slots, device=x.device).masked_fill(~valid, float("-inf"))
    nearest = torch.full((num_classes, num_slots), float("inf"), device=x.device)  # C x P
    chosen = []
    for k in range(num_clusters):
        pick = (log_weight + gumbel[k]).argmax(1)  # C
        chosen.append(pick)
        centre = _gather_points(x, pick.unsqueeze(1))  # C x 1 x D
        nearest = torch.minimum(nearest, squared_distances(x, centre).squeeze(-1))
        # Chosen points (distance 0) get a tiny weight rather than none, so a class of duplicates
        # still picks valid points; padding stays at -inf.
        log_weight = nearest.clamp_min(1e-12).log().masked_fill(~valid, float("-inf"))
    return torch.stack(chosen, 1)  # C x K


@torch.no_grad()
def batched_kmeans(points: Tensor, valid: Tensor, num_clusters: int, max_iter: int = 100,
                   tol: float = 1e-4, generator: Optional[torch.Generator] = None,
                   init: str = "random", check_every: Optional[int] = None) -> KMeansResult:
    """Euclidean k-means on C independent point sets at once.

    Args:
        points: C x P x D, class c's points in ``points[c]`` (any float dtype; computed in float32).
        valid: C x P bool, which entries are real points (a partially filled queue is padded).
        num_clusters: K >= 1.
        max_iter: Lloyd iterations at most (100 as in the reference).
        tol: a class stops once the summed squared shift of its K centroids is <= tol (1e-4).
        generator: CPU generator for the random initial centroids; the same generator state gives
            the same result on any device.
        init: 'random' (K distinct queue points, as kmeans-gpu and hence BCCL) or 'kmeans++'.
        check_every: Lloyd iterations between host reads of the convergence flags; None: 1 on the
            CPU, 8 elsewhere (each read waits for the GPU). The centroids do not depend on it.
    Returns:
        a ``KMeansResult``; see the module docstring for classes with fewer than K points.
    """
    if points.dim() != 3 or valid.shape != points.shape[:2]:
        raise ValueError(f"points must be C x P x D and valid C x P, got {tuple(points.shape)} and "
                         f"{tuple(valid.shape)}")
    if check_every is None:
        check_every = 1 if points.device.type == "cpu" else 8
    if num_clusters < 1 or max_iter < 0 or tol < 0 or check_every < 1:
        raise ValueError(f"need num_clusters >= 1, max_iter >= 0, tol >= 0, check_every >= 1; got "
                         f"{num_clusters}, {max_iter}, {tol}, {check_every}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got '{init}'")
    # Called from inside a training step: autocast would compute the distances in half precision,
    # too coarse to tell apart nearby centroids of unit vectors.
    with torch.autocast(device_type=points.device.type, enabled=False):
        return _lloyd(points.float(), valid.bool(), num_clusters, max_iter, tol, generator, init, check_every)


def _lloyd(x: Tensor, valid: Tensor, num_clusters: int, max_iter: int, tol: float,
           generator: Optional[torch.Generator], init: str, check_every: int) -> KMeansResult:
    """The body of ``batched_kmeans`` on float32 points x (C x P x D) and a bool mask (C x P)."""
    num_points = valid.sum(1)  # C
    index = _random_init(valid, num_points, num_clusters, generator)  # C x K
    if init == "kmeans++":
        index = torch.where((num_points >= num_clusters).unsqueeze(1),
                            _kmeans_plus_plus_init(x, valid, num_clusters, generator), index)
    centroids = _gather_points(x, index)  # C x K x D
    centroids = centroids.masked_fill((num_points == 0).view(-1, 1, 1), 0.0)

    # Only classes with more points than clusters need Lloyd iterations (see the module docstring).
    active = num_points > num_clusters  # C
    # Reading `active` or `empty` on the host waits for the device. With check_every > 1,
    # convergence is read every few iterations and empty clusters are re-seeded unconditionally:
    # a converged class is frozen by the `active` mask and re-seeding with nothing empty is the
    # identity, so the centroids are those of a check after every iteration.
    iterations = 0
    while iterations < max_iter and (iterations % check_every or bool(active.any())):
        iterations += 1
        distances = squared_distances(x, centroids)  # C x P x K
        assign = distances.argmin(-1)  # C x P
        members = F.one_hot(assign, num_clusters).to(x.dtype) * valid.unsqueeze(-1)  # C x P x K
        counts = members.sum(1)  # C x K
        means = torch.bmm(members.transpose(1, 2), x) / counts.clamp_min(1.0).unsqueeze(-1)  # C x K x D
        empty = counts == 0
        if check_every > 1 or bool(empty.any()):
            means = _reseed_empty(x, valid, distances, assign, means, empty)
        shift = (means - centroids).pow(2).sum((1, 2))  # C
        centroids = torch.where(active.view(-1, 1, 1), means, centroids)
        active = active & (shift > tol)

    assignments = squared_distances(x, centroids).argmin(-1).masked_fill(~valid, -1)  # C x P
    return KMeansResult(centroids, assignments, num_points, iterations)
