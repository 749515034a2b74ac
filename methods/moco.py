"""MoCo v2 as self-supervised pre-training (SSP), the ImageNet-LT / iNaturalist stage 1 of Yang & Xu,
"Rethinking the Value of Labels for Improving Class-Imbalanced Learning" (NeurIPS 2020), Sec. 4.

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning" (CVPR 2020) with
the v2 changes of Chen et al. (arXiv:2003.04297): an MLP projection (d-d-128), temperature 0.2,
the ``moco_v2`` augmentation and a cosine schedule (docs/semi_self.md#moco-pre-training). InfoNCE, Eq. 1:
    loss = -log exp(q.k+ / T) / (exp(q.k+ / T) + sum_{k- in queue} exp(q.k- / T)).

The key encoder is a momentum copy of the query backbone + projection held as *buffers* (never
optimised, never wrapped by DDP, checkpointed and moved with the method); the queue of K keys is a
buffer with a pointer. Batch statistics of BatchNorm would let a query and its key share
information within a batch, so keys are computed on a shuffled batch ("shuffle BN"):
  * DDP: the key views of all ranks are gathered, permuted by one permutation drawn on rank 0,
    encoded on each rank, and returned to their owners; the enqueued keys are gathered too.
  * DataParallel: the key batch is permuted before the replicas split it, so every replica
    normalises keys of other images than the queries it normalised.
  * One device: the same permuted batch, encoded in ``bn_splits`` groups (queries in groups of
    the unpermuted batch), i.e. the statistics of ``bn_splits`` devices of B / ``bn_splits``
    images each. (Per-group calls update BN's running averages once per group, not once per step.)
The network's class head is trained as an online linear probe on detached query features, so the
per-epoch test accuracy means something; labels never reach the backbone.
Stage 2: ``--pretrained_model RUN`` loads ``model.backbone`` (the query encoder's trunk).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence, Tuple

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F

from methods.base import METHOD_CLIS, METHODS, Method, MethodChoice, MethodCommandLine
from methods.options import MethodOptions, option
from utils import dist
from utils.config import BELOW_ONE, POSITIVE, POSITIVE_INT, ConfigError, Recipe


def projection_head(in_dim: int, out_dim: int, mlp: bool) -> nn.Module:
    """MoCo v2's d-d-out MLP (Linear, ReLU, Linear), or MoCo v1's single Linear."""
    if mlp:
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))
    return nn.Linear(in_dim, out_dim)


def buffer_copy(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters are turned into buffers of the same names: it follows the
    method through ``.to()`` and checkpoints, but no optimiser or DDP wrapper can see it."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().clone())
    return clone


class _QueryNetwork(nn.Module):
    """Images -> (normalised query embeddings N x dim, probe logits N x C on detached features)."""

    def __init__(self, model: nn.Module, projector: nn.Module):
        super().__init__()
        self.model = model
        self.projector = projector

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        features = self.model.backbone(images)
        return F.normalize(self.projector(features), dim=1), self.model.head(features.detach())


class _KeyEncoder(nn.Module):
    """Momentum backbone + projection: images -> normalised keys N x dim."""

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = buffer_copy(backbone)
        self.projector = buffer_copy(projector)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(images)), dim=1)


@dataclass(frozen=True)
class MoCoOptions(MethodOptions):
    dim: int = option(128, "--moco_dim", "--moco-dim", valid=POSITIVE_INT, help="embedding dimension")
    queue_size: int = option(65536, "--moco_k", "--moco-k", valid=POSITIVE_INT,
                             help="queue size K (negatives); e.g. 4096 on CIFAR")
    momentum: float = option(0.999, "--moco_m", "--moco-m", valid=BELOW_ONE, help="momentum of the key encoder")
    temperature: float = option(0.2, "--moco_t", "--moco-t", valid=POSITIVE, help="softmax temperature (MoCo v2: 0.2)")
    mlp: bool = option(True, "--mlp", help="MLP projection head (MoCo v2)")
    bn_splits: int = option(4, "--moco_bn_splits", valid=POSITIVE_INT,
                            help="one device only: BatchNorm groups that stand in for devices in shuffle BN")


@METHODS.register("moco")
class MoCo(Method):
    """MoCo v2 on two ``moco_v2`` views of each image (view 1: queries, view 2: keys)."""

    name = "moco"
    self_supervised = True
    num_views = 2
    Options = MoCoOptions

    def __init__(self, model: nn.Module, class_counts: Sequence[int], **options):
        super().__init__(model, class_counts, **options)
        dim, queue_size = self.options.dim, self.options.queue_size
        self.projector = projection_head(model.feat_dim, dim, self.options.mlp)
        self.key_encoder = _KeyEncoder(model.backbone, self.projector)
        # One key per row, unit length: the negatives of Eq. 1.  queue: K x dim
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        object.__setattr__(self, "_query", _QueryNetwork(model, self.projector))
        object.__setattr__(self, "_keys", self.key_encoder)

    # ---- parallelism -----------------------------------------------------------------------------
    def trainable_network(self) -> nn.Module:
        return self._query

    def wrap(self, wrap_train, wrap_eval) -> None:
        super().wrap(wrap_train, wrap_eval)
        object.__setattr__(self, "_keys", wrap_eval(self.key_encoder))

    def _mode(self) -> str:
        if torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1:
            return "ddp"
        return "dp" if isinstance(self._keys, nn.DataParallel) else "single"

    # ---- the momentum encoder and the queue ----------------------------------------------------------
    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query, for every query parameter (Eq. 2 of He et al.)."""
        keys = dict(self.key_encoder.named_buffers())
        momentum = self.options.momentum
        for prefix, module in (("backbone.", self.model.backbone), ("projector.", self.projector)):
            for name, param in module.named_parameters():
                keys[prefix + name].mul_(momentum).add_(param.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def copy_query_to_key(self) -> None:
        """Starts the key encoder equal to the query encoder (after any pre-trained load)."""
        keys = dict(self.key_encoder.named_buffers())
        for prefix, module in (("backbone.", self.model.backbone), ("projector.", self.projector)):
            for name, tensor in module.state_dict().items():
                keys[prefix + name].copy_(tensor)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Writes the keys of every rank over the oldest queue entries, wrapping around.

        Positions are computed on the device, so the step needs no host synchronisation; unlike
        the reference, K need not be a multiple of the batch size.
        """
        keys = dist.gather_no_grad(keys)  # N_all x dim
        size = self.queue.shape[0]
        if keys.shape[0] > size:
            raise ValueError(f"a global batch of {keys.shape[0]} keys does not fit a queue of "
                             f"{size} (--moco_k); raise --moco_k or lower -b")
        positions = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue.index_copy_(0, positions, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor) -> torch.Tensor:
        """Keys of ``images`` (N x dim, in input order) computed with shuffled BatchNorm."""
        mode = self._mode()
        if mode == "ddp":
            return self._keys_ddp(images)
        order = torch.randperm(images.shape[0], device=images.device)
        shuffled = images[order]
        if mode == "dp":
            keys = self._keys(shuffled)
        else:
            keys = torch.cat([self._keys(group) for group in shuffled.chunk(self.options.bn_splits)])
        return keys[torch.argsort(order)]

    def _keys_ddp(self, images: torch.Tensor) -> torch.Tensor:
        gathered = dist.gather_no_grad(images)  # N_all x 3 x H x W
        order = torch.randperm(gathered.shape[0], device=images.device)
        torch_dist.broadcast(order, src=0)  # one permutation for all ranks
        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
        mine = order.view(world, -1)[rank]
        keys = dist.gather_no_grad(self._keys(gathered[mine]))  # N_all x dim, in permuted order
        restore = torch.argsort(order).view(world, -1)[rank]
        return keys[restore]

    def _queries(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._mode() != "single" or self.options.bn_splits == 1:
            return self.network(images)
        parts = [self.network(group) for group in images.chunk(self.options.bn_splits)]
        return torch.cat([q for q, _ in parts]), torch.cat([p for _, p in parts])

    # ---- training ---------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        if epoch == 0:
            self.copy_query_to_key()

    def training_step(self, images, targets, epoch, indices=None):
        view_q, view_k = images
        q, probe_logits = self._queries(view_q)  # N x dim, N x C
        with torch.no_grad():
            self.momentum_update()
            k = self.encode_keys(view_k)  # N x dim
        # The queue is cloned: it is overwritten below, and autograd keeps it for the backward.
        contrastive, logits = infonce(q, k, self.queue.clone(), self.options.temperature)
        probe = F.cross_entropy(probe_logits, targets)
        self.enqueue(k)
        accuracy = (logits.detach().argmax(dim=1) == 0).float().mean() * 100.0
        return {"loss": contrastive + probe, "logits": probe_logits,
                "parts": {"loss/infonce": contrastive.detach(), "loss/probe": probe.detach(),
                          "acc/instance": accuracy}}


def infonce(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """MoCo's InfoNCE loss (He et al., CVPR 2020, Eq. 1) and its logits: each query against its
    own key (the positive, column 0) and the K queued keys (negatives), divided by the temperature,
    cross-entropy towards column 0. queries, keys: N x dim; queue: K x dim (all unit vectors)."""
    positive = (queries * keys).sum(dim=1, keepdim=True)  # N x 1
    negative = queries @ queue.t()  # N x K
    logits = torch.cat([positive, negative], dim=1) / temperature  # N x (1 + K)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels), logits


# ---- command line ------------------------------------------------------------------------------
class MoCoCommandLine(MethodCommandLine):
    names = ("moco",)
    title = "MoCo v2 pre-training (--method moco)"
    Options = MoCoOptions
    # pretrain_moco.py's recipe: lr 0.015 for batch 128, wd 1e-4, 200 epochs, cosine without warm-up.
    recipe = Recipe(lr=0.015, weight_decay=1e-4, epochs=200, warmup_epochs=0, cos=True, schedule=(120, 160),
                    lr_gamma=0.1, batch_size=128, aug=("moco_v2",), seed=0)

    def choose(self, args) -> MethodChoice:
        self.refuse_cosine_head(args, "trains a linear probe head (give --use_norm / --head_scale to the "
                                      "stage-2 run that loads this backbone)")
        options = MoCoOptions.from_args(args)
        batch = args.batch_size if args.batch_size is not None else self.recipe.batch_size
        if batch > options.queue_size:  # each step enqueues the whole global batch of keys
            raise ConfigError(f"--moco_k {options.queue_size}: the queue must hold a global batch of keys "
                              f"(-b {batch}): raise --moco_k to {batch} or more, or lower -b")
        # Full batches keep the shuffle-BN groups equal and the DDP gathers the same size on every rank.
        return MethodChoice("moco", options, "moco", self.recipe, drop_last=True)


METHOD_CLIS.register("moco")(MoCoCommandLine())
