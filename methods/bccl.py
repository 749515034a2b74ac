"""BCCL: "Balanced Clustering Contrastive Learning for Long-Tailed Data Recognition", as its
released code does it (github.com/GGTINE/Balanced-Clustering-Contrastive-Learning-for-Long-Tailed-
Data-Recognition; docs/bccl.md), with the bugs of docs/bccl.md#known-bugs-in-the-reference-code
fixed.

Two augmented views of every image go through one backbone. The cosine classifier is trained
with logit-adjusted cross-entropy on view 1; a projection head gives unit-norm embeddings z that
are trained with a class-averaged supervised contrastive loss and, after the warm-up, a centroid
loss against K k-means centroids of every class, taken from per-class FIFO queues of recent z
(docs/bccl.md#model-and-heads to docs/bccl.md#total-loss; the BCCL README's command is
``main.py``'s default).

    L = alpha * L_SCL + beta * L_CE                       for epochs e <  --warmup_epochs
    L = alpha * L_SCL + beta * L_CE + ceta * L_cen        for epochs e >= --warmup_epochs

Queues, their pointers and fill counts, the centroids and the k-means call counter are buffers,
so checkpoints carry them and ``--resume`` continues a run exactly. Under DDP the projections
and labels of all ranks are gathered before both contrastive losses and the queue update, so
every rank holds the same queues and computes the same centroids.

The paper's abstract also claims an expansion of tail-class features based on class frequency;
the released code has no such term (docs/bccl.md#the-claimed-frequency-based-expansion), and
neither has this module: the only frequency-dependent part is the logit adjustment of the CE.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from losses import LOSSES
from losses.supcon import centroid_loss, class_averaged_supcon
from methods.base import METHOD_CLIS, METHODS, Method, MethodChoice, MethodCommandLine
from methods.options import MethodOptions, derived, option
from models.heads import NormedLinear
from utils.dist import gather_no_grad, gather_with_grad
from utils.kmeans import INITS as KMEANS_INITS
from utils.config import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, SEED, ConfigError, Recipe, add_bool_flag
from utils.kmeans import batched_kmeans

REFRESH_MODES = ("step", "epoch")
QUEUE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# BCCL's NormedLinear init: uniform(-1, 1) class vectors clipped to norm 5 (model/resnet.py, line 15).
HEAD_INIT_MAX_NORM = 5.0
CIFAR_HIDDEN = 512  # the "cifar" projection head widens ResNet-32's 64-d features (docs/bccl.md#model-and-heads)
# k-means runs on at most this many queued numbers at once (C x Q x D split over classes), which
# bounds its float32 temporaries on ImageNet-LT / iNaturalist (1000-8142 classes, D = 2048).
KMEANS_CHUNK_ELEMENTS = 1 << 25


class ProjectionHead(nn.Sequential):
    """Linear-BN-ReLU-Linear MLP from backbone features to the contrastive embedding (BCCL
    model/models.py, after BCL): 64-512-feat_dim for ResNet-32, d-d-feat_dim otherwise."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


class TwoViewNetwork(nn.Module):
    """Backbone + classifier + projection head on all views in one pass: the module DataParallel
    and DDP wrap, so the losses are computed on the gathered outputs.

    Views are concatenated inside, so BatchNorm sees both views of a replica's images together as
    in the reference, and outputs are batch-major (N x V x ...) so DataParallel's gather along
    dim 0 keeps each image's views together.
    """

    def __init__(self, classifier: nn.Module, projector: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.projector = projector

    def forward(self, *views: Tensor) -> Tuple[Tensor, Tensor]:
        num_views, batch = len(views), views[0].shape[0]
        logits, features = self.classifier(torch.cat(views, 0), return_features=True)  # (V*N) x C, (V*N) x d
        z = F.normalize(self.projector(features).float(), dim=1)  # (V*N) x D, unit norm in float32
        # Contiguous, so DataParallel's gather concatenates plain tensors.
        return (logits.view(num_views, batch, -1).transpose(0, 1).contiguous(),  # N x V x C
                z.view(num_views, batch, -1).transpose(0, 1).contiguous())  # N x V x D


class ClassQueues(nn.Module):
    """One FIFO ring buffer of the ``size`` most recent embeddings per class
    (docs/bccl.md#queues-and-k-means-refresh).

    The class of an entry is its row, so features and labels cannot drift apart; ``entries()``
    returns them flattened with labels, oldest first.
    """

    def __init__(self, num_classes: int, size: int, dim: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("features", torch.zeros(num_classes, size, dim, dtype=dtype))  # C x Q x D
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))  # C, next slot to write
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))  # C, filled slots <= Q

    @property
    def size(self) -> int:
        return self.features.shape[1]

    def valid_mask(self) -> Tensor:
        """C x Q, True for filled slots. Slots fill from 0 upwards, and once a class's queue has
        wrapped around every slot is filled, so the filled slots are always the first ``count``."""
        return torch.arange(self.size, device=self.count.device).unsqueeze(0) < self.count.unsqueeze(1)

    @torch.no_grad()
    def push(self, features: Tensor, labels: Tensor) -> None:
        """Appends ``features`` (M x D) of classes ``labels`` (M) in the given order; when a class
        receives more than Q entries at once only its last Q are kept, as in the reference."""
        size = self.size
        # Written with gathers and scatters only (no boolean indexing), so a push never waits
        # for the device.
        per_class = torch.zeros_like(self.count).scatter_add_(0, labels, torch.ones_like(labels))  # C
        # rank[m]: how many earlier entries of this push share m's class (a stable sort keeps order).
        order = torch.argsort(labels, stable=True)  # M
        starts = per_class.cumsum(0) - per_class  # C, first sorted position of each class
        rank = torch.empty_like(labels)
        rank[order] = torch.arange(labels.numel(), device=labels.device) - starts[labels[order]]
        slot = (self.ptr[labels] + rank) % size  # M
        # With more than Q entries of a class, entries Q apart share a slot and the newest must win:
        # every entry writes the value of the newest entry of its slot, so the duplicates agree.
        newest_rank = rank + (per_class[labels] - 1 - rank) // size * size
        winner = order[starts[labels] + newest_rank]  # M
        self.features[labels, slot] = features[winner].to(self.features.dtype)
        self.ptr.add_(per_class).remainder_(size)
        self.count.add_(per_class).clamp_(max=size)

    @torch.no_grad()
    def entries(self) -> Tuple[Tensor, Tensor]:
        """(features M x D, labels M) of every filled slot, class by class, oldest first."""
        size = self.size
        steps = torch.arange(size, device=self.ptr.device).unsqueeze(0)  # 1 x Q
        oldest = (self.ptr - self.count).remainder(size).unsqueeze(1)  # C x 1
        ordered = self.features.gather(1, ((oldest + steps) % size).unsqueeze(-1).expand_as(self.features))
        labels = torch.arange(self.count.numel(), device=self.ptr.device).unsqueeze(1).expand(-1, size)
        mask = steps < self.count.unsqueeze(1)
        return ordered[mask], labels[mask]


@dataclass(frozen=True)
class BCCLOptions(MethodOptions):
    feat_dim: int = option(128, "--feat_dim", valid=POSITIVE_INT, help="projection dimension (2048 on ImageNet-LT)")
    temperature: float = option(0.1, "--temp", valid=POSITIVE, help="contrastive temperature (0.07 on ImageNet-LT)")
    alpha: float = option(1.0, "--alpha", valid=NON_NEGATIVE, help="weight of the supervised contrastive loss")
    beta: float = option(1.0, "--beta", valid=NON_NEGATIVE, help="weight of the logit-adjusted CE")
    ceta: float = option(0.1, "--ceta", valid=NON_NEGATIVE, help="weight of the centroid loss")
    queue_size: int = option(100, "--queue_size", valid=POSITIVE_INT, help="queued embeddings per class")
    num_centroids: int = option(5, "--centroid", valid=POSITIVE_INT, help="k-means centroids per class")
    warmup_epochs: int = derived(10, valid=NON_NEGATIVE_INT)  # --warmup_epochs: no centroid loss before it
    kmeans_every: int = option(10, "--kmeans_every", valid=POSITIVE_INT,
                               help="re-cluster in epochs e %% N == 0 after warm-up")
    kmeans_refresh: str = option("step", "--kmeans_refresh", choices=REFRESH_MODES,
                                 help="re-cluster at every step of those epochs (reference) or once at their start")
    kmeans_init: str = option("random", "--kmeans_init", choices=KMEANS_INITS,
                              help="k-means initial centroids: uniform queue points (reference) or k-means++")
    queue_dtype: str = option("float32", "--queue_dtype", choices=tuple(QUEUE_DTYPES),
                              help="storage of the queues (float16 halves their memory on iNaturalist)")
    seed: int = derived(42, valid=SEED)  # --seed: seeds the k-means initialisations


@METHODS.register("bccl")
class BCCL(Method):
    """BCCL around a ``Classifier``: a projection head, the three losses, class queues, centroids.

    ``network(view_1, view_2)`` runs everything once per step; ``classifier()`` (the wrapped
    ``Classifier``, raw logits, no adjustment) is what evaluation and test.py use.
    """

    name = "bccl"
    num_views = 2
    warmup_cosine_without_warmup = True
    Options = BCCLOptions

    def __init__(self, model: nn.Module, class_counts: Sequence[int], **options):
        super().__init__(model, class_counts, **options)
        o = self.options
        feat_dim = o.feat_dim
        if isinstance(model.head, NormedLinear):
            # BCCL's cosine classifier starts with class vectors of norm up to 5, not 1 (see
            # NormedLinear.reset_parameters): that sets its early effective learning rate.
            model.head.reset_parameters(max_norm=HEAD_INIT_MAX_NORM)
        hidden = CIFAR_HIDDEN if model.feat_dim == 64 else model.feat_dim
        self.projector = ProjectionHead(model.feat_dim, hidden, feat_dim)
        # Logit adjustment with tau = 1 (Menon et al., ICLR 2021), as BCCL's LogitAdjust.
        self.ce_loss = LOSSES.build("logit_adjust", class_counts=list(class_counts), tau=1.0)
        self.queues = ClassQueues(self.num_classes, o.queue_size, feat_dim, QUEUE_DTYPES[o.queue_dtype])
        self.register_buffer("centroids", torch.zeros(self.num_classes, o.num_centroids, feat_dim))  # C x K x D
        # k-means runs so far: seeds the next run's initialisation, so a resumed run draws the same.
        self.register_buffer("kmeans_runs", torch.zeros((), dtype=torch.long))
        # Shares the model and projector modules; kept out of the module tree so the state dict
        # holds each weight once (model.*, projector.*).
        object.__setattr__(self, "_two_view", TwoViewNetwork(self.model, self.projector))

    def trainable_network(self) -> nn.Module:
        return self._two_view

    # ---- centroids -------------------------------------------------------------------------------
    def is_refresh_epoch(self, epoch: int) -> bool:
        """Epochs whose centroids are re-clustered: e >= warm-up with e % kmeans_every == 0
        (reference main.py:286-289), plus the first epoch after the warm-up, so the centroid loss
        never runs against never-computed (zero) centroids when the warm-up is not a multiple
        of kmeans_every."""
        warmup = self.options.warmup_epochs
        return epoch >= warmup and (epoch % self.options.kmeans_every == 0 or epoch == warmup)

    @torch.no_grad()
    def refresh_centroids(self) -> None:
        """K-means (K = --centroid) on every class's queue; a class with an empty queue keeps its
        previous centroids. Seeded by (seed, number of earlier runs), so every DDP rank, holding
        the same queues, computes the same centroids."""
        generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + int(self.kmeans_runs))
        features, valid = self.queues.features, self.queues.valid_mask()
        num_classes, size, dim = features.shape
        chunk = max(1, KMEANS_CHUNK_ELEMENTS // (size * dim))
        for start in range(0, num_classes, chunk):
            stop = min(start + chunk, num_classes)
            result = batched_kmeans(features[start:stop], valid[start:stop], self.centroids.shape[1],
                                    generator=generator, init=self.options.kmeans_init)
            has_points = (result.num_points > 0).view(-1, 1, 1)
            block = self.centroids[start:stop]
            block.copy_(torch.where(has_points, result.centroids, block))
        self.kmeans_runs.add_(1)

    def on_epoch_start(self, epoch: int) -> None:
        if self.options.kmeans_refresh == "epoch" and self.is_refresh_epoch(epoch):
            self.refresh_centroids()

    # ---- training ----------------------------------------------------------------------------------
    def training_step(self, images, targets: Tensor, epoch: int, indices: Optional[Tensor] = None):
        if not isinstance(images, (tuple, list)) or len(images) != self.num_views:
            raise ValueError(f"BCCL needs {self.num_views} augmented views per image (a list of tensors)")
        logits, z = self.network(*images)  # N x V x C, N x V x D (this rank's images)
        ce = self.ce_loss(logits[:, 0].float(), targets)  # the classifier learns from view 1 only
        # Contrast against the whole global batch; gradients flow back to this rank's slice.
        z_all = gather_with_grad(z)  # B x V x D
        labels_all = gather_no_grad(targets)  # B
        scl = class_averaged_supcon(z_all, labels_all, self.options.temperature)
        loss = self.options.alpha * scl + self.options.beta * ce
        parts: Dict[str, Tensor] = {"loss/ce": ce.detach(), "loss/scl": scl.detach()}
        if epoch >= self.options.warmup_epochs:
            if self.options.kmeans_refresh == "step" and self.is_refresh_epoch(epoch):
                self.refresh_centroids()  # from the queues before this batch, as in the reference
            cen = centroid_loss(z_all, labels_all, self.centroids)
            loss = loss + self.options.ceta * cen
            parts["loss/centroid"] = cen.detach()
        # Both views enter the queues, view-1 block first (the reference's labels.repeat(2) order).
        detached = z_all.detach().transpose(0, 1).reshape(-1, z_all.shape[2])  # (V*B) x D
        self.queues.push(detached, labels_all.repeat(z_all.shape[1]))
        return {"loss": loss, "logits": logits[:, 0], "parts": parts}


# ---- command line ------------------------------------------------------------------------------
# --cl_views -> (view 1, view 2) recipes for CIFAR-style and ImageNet-style images (docs/bccl.md#views).
VIEWS = {
    "sim-sim": {"cifar": ("autoaug", "simclr"), "imagenet": ("simclr", "simclr")},
    "sim-rand": {"cifar": ("randaug", "simclr"), "imagenet": ("randaug", "simclr")},
    "rand-rand": {"cifar": ("randaug", "randaug"), "imagenet": ("randaug", "randaug")},
}
# RandAugment of the rand views: BCL's n = 2 (BCCL's test.py agrees; its myparser.py says 20).
RANDAUG_DEFAULTS = {"randaug_n": 2, "randaug_m": 10}
HEAD_SCALE = 1 / 0.03  # NormedLinear logits = cos / 0.03 in BCCL


class BCCLCommandLine(MethodCommandLine):
    names = ("bccl",)
    title = "BCCL (--method bccl, the default)"
    Options = BCCLOptions
    # The BCCL recipe (docs/bccl.md#schedule-and-defaults); the step schedule applies only with
    # --cos False; on ImageNet-style data the views are the 'imagenet' column of VIEWS.
    recipe = Recipe(lr=0.15, weight_decay=5e-4, epochs=200, warmup_epochs=10, cos=True, schedule=(160, 180),
                    lr_gamma=0.1, batch_size=128, aug=VIEWS["sim-sim"]["cifar"], seed=42)

    def add_extra_arguments(self, group) -> None:
        group.add_argument("--cl_views", default="sim-sim", choices=sorted(VIEWS),
                           help="augmentation of view 1 (CE + contrast) and view 2 (contrast); --aug overrides "
                                "(default: sim-sim)")
        add_bool_flag(group, "--randaug", default=True,
                      help="allow the RandAugment views (kept from BCCL's flags: False rejects sim-rand/rand-rand)")

    def choose(self, args) -> MethodChoice:
        """The BCCL run the flags describe (the BCCL README's spellings)."""
        from datasets import dataset_entry
        from utils.cli import pick

        normed = True if args.use_norm is None else args.use_norm
        if not normed and args.head_scale is not None:
            raise ConfigError("--head_scale applies to the cosine classifier only: add --use_norm True")
        style = dataset_entry(args.dataset).image_style
        recipes = tuple(args.aug) if args.aug else VIEWS[args.cl_views][style]
        uses_randaug = "randaug" in recipes
        if uses_randaug and not args.randaug:
            raise ConfigError(f"--cl_views {args.cl_views} / --aug {' '.join(recipes)} use RandAugment but "
                              "--randaug False forbids it: drop --randaug False or use --cl_views sim-sim")
        if not uses_randaug and (args.randaug_n is not None or args.randaug_m is not None):
            raise ConfigError(f"--randaug_n/--randaug_m set RandAugment, which the views {', '.join(recipes)} "
                              "do not use: add --cl_views sim-rand or rand-rand")
        options = BCCLOptions.from_args(args, warmup_epochs=pick(args.warmup_epochs, self.recipe.warmup_epochs),
                                        seed=pick(args.seed, self.recipe.seed))
        label = "bccl" if args.cl_views == "sim-sim" or args.aug else f"bccl_{args.cl_views}"
        head_scale = (HEAD_SCALE if args.head_scale is None else args.head_scale) if normed else None
        return MethodChoice("bccl", options, label, dataclasses.replace(self.recipe, aug=recipes),
                            head="normed" if normed else "linear", head_scale=head_scale, drop_last=True,
                            aug_options=dict(RANDAUG_DEFAULTS) if uses_randaug else {})


METHOD_CLIS.register("bccl")(BCCLCommandLine())
