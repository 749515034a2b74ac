"""LCSL: Long-tailed Classification via Self-Labeling (Vu, Phung, Wang and Mai, IEEE TCSVT 2024,
doi:10.1109/TCSVT.2024.3421942), as its released code trains it (docs/lcsl.md#algorithm).

Two networks of one architecture: the *student* S, trained by SGD, and the *teacher* T (the
paper's "preceding network"), never trained by gradient. Every batch is mixed (mixup, lambda ~
Beta(1, 1)); T labels each mixed image, and a label counts only when T is confident and names a
minority class. The student learns from both signals:

    L = beta * [lambda * CE(S(x~), y) + (1 - lambda) * CE(S(x~), y_pi)]
        + alpha * (1 / B) * sum_i m_i * CE(S(x~)_i, yhat_i),
    yhat_i = argmax softmax(T_flip(x~)_i / tau),  m_i = 1[max softmax >= conf] * 1[yhat_i in M],

where T_flip averages T's logits on the image and its mirror and M is the set of classes with
fewer training images than the mean. Before the mixed batch, the student also sees the clean batch
in train mode without a graph, as the reference does: that pass only updates BatchNorm's running
statistics. T starts as a separate random network and gives no labels
until a student first replaces it (``training_step`` says why). At the start of each epoch T's classifier rows are scaled
to unit L2 norm; after each evaluation T is replaced by S whenever S's mean per-class accuracy on
the selection split improves (the same S the engine saves as best.pth, see ``on_epoch_end``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from datasets.longtail import minority_classes
from methods.base import METHODS, Method, StepOutput
from methods.options import MethodOptions, derived, option
from models import build_model
from models.heads import normalize_rows_
from utils import dist
from utils.config import FINITE, NON_NEGATIVE, POSITIVE, PROBABILITY, SELECTION_SPLITS, ConfigError, Recipe
from utils.metrics import improves


# ---- pure pieces (tested against hand-computed values) -------------------------------------------
def draw_mixup(batch_size: int, mixup_alpha: float, device: torch.device) -> Tuple[Tensor, Tensor]:
    """lambda ~ Beta(a, a) as a 0-d tensor on ``device``, and the pairing permutation.

    Mixup (Zhang et al., ICLR 2018, Eq. 1). Sampling on the device keeps the step free of host
    synchronisation; ``validate_args=False`` skips the argument checks, which would read the
    tensor back. a = 0 means no mixing (lambda = 1), as in the reference.
    """
    if mixup_alpha > 0:
        concentration = torch.full((), float(mixup_alpha), device=device)
        lam = torch.distributions.Beta(concentration, concentration, validate_args=False).sample()
    else:
        lam = torch.ones((), device=device)
    return lam, torch.randperm(batch_size, device=device)


def mix_images(images: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
    """x~_i = lambda * x_i + (1 - lambda) * x_pi(i); images: B x 3 x H x W."""
    lam = lam.to(images.dtype)
    return lam * images + (1 - lam) * images[perm]


def self_labels(teacher_logits: Tensor, tau: float, threshold: float,
                minority: Tensor) -> Tuple[Tensor, Tensor]:
    """The teacher's label for each image and whether it counts (docs/lcsl.md#teacher-labels).

    Args:
        teacher_logits: B x C (already averaged over the image and its flip).
        tau: softmax temperature.
        threshold: minimum confidence (``--lambda_init``), compared with ``>=``.
        minority: C booleans, True for classes with fewer training images than the mean.
    Returns:
        labels (B,) long and mask (B,) float in {0, 1}.
    """
    probs = F.softmax(teacher_logits.float() / tau, dim=1)
    confidence, labels = probs.max(dim=1)
    mask = (confidence >= threshold) & minority[labels]
    return labels, mask.float()


def lcsl_loss(logits: Tensor, targets: Tensor, perm: Tensor, lam: Tensor, pseudo_labels: Tensor,
              mask: Tensor, alpha: float, beta: float) -> Tuple[Tensor, Dict[str, Tensor]]:
    """beta * mixup CE + alpha * masked self-labeling CE, both averaged over the whole batch.

    The self-labeling term divides by B, not by the number of counted labels, as the released
    code does: it is weak while few labels pass the filter. Returns the loss and the unweighted
    parts ``loss/mix`` and ``loss/sl`` (detached) for logging.
    """
    logits = logits.float()  # B x C; CE in float32 whatever the autocast dtype
    lam = lam.float()
    mix = lam * F.cross_entropy(logits, targets) + (1 - lam) * F.cross_entropy(logits, targets[perm])
    sl = (F.cross_entropy(logits, pseudo_labels, reduction="none") * mask).mean()
    loss = beta * mix + alpha * sl
    return loss, {"loss/mix": mix.detach(), "loss/sl": sl.detach()}


def flip_averaged_logits(network: nn.Module, images: Tensor) -> Tensor:
    """(network(x) + network(flip(x))) / 2 in one forward pass of 2B images.

    Only valid for a network in eval mode (batch statistics would otherwise mix the two halves),
    which the teacher always is.
    """
    both = network(torch.cat([images, torch.flip(images, dims=[3])]))  # 2B x C
    plain, flipped = both.chunk(2)
    return (plain + flipped) / 2


@dataclass(frozen=True)
class LCSLOptions(MethodOptions):
    """The flags of the paper's config.py, and what train_LCSL.py decides from others."""

    arch: str = derived("resnet32")  # --arch: the teacher is built as this architecture
    alpha: float = option(1.0, "--alpha", valid=NON_NEGATIVE, help="weight of the self-labeling loss")
    beta: float = option(1.0, "--beta", valid=NON_NEGATIVE, help="weight of the mixup loss")
    tau: float = option(1.0, "--tau", valid=POSITIVE, help="temperature of the teacher's softmax")
    threshold: float = option(0.5, "--lambda_init", valid=PROBABILITY,
                              help="confidence (a softmax probability) a teacher label needs to count")
    fc_norm: bool = option(True, "--fc_norm", flag=FINITE, flag_default=1.9, convert=lambda value: value > 0,
                           help="> 0: L2-normalise the teacher's classifier rows each epoch (only the sign matters)")
    select_on: str = derived("val", choices=SELECTION_SPLITS)  # --select_on
    mixup_alpha: float = derived(1.0, valid=NON_NEGATIVE)  # hard-coded in the reference

    def __post_init__(self):
        super().__post_init__()
        if self.alpha == 0 and self.beta == 0:  # the loss is alpha * self-labels + beta * mixup
            raise ConfigError("--alpha 0 and --beta 0 leave LCSL no loss to train on: give the self-labeling "
                              "loss (--alpha) or the mixup loss (--beta) a positive weight")


@METHODS.register("lcsl")
class LCSL(Method):
    """Student + teacher; see the module docstring for the loss and the teacher's rules.

    Args:
        model: the student (a ``models.Classifier`` with a linear head).
        class_counts: training images per class; defines the minority set M.
        arch: the backbone name, used to build the teacher as a separate randomly initialised
            network of the student's architecture (as the reference does).
        alpha: weight of the self-labeling loss (``--alpha``).
        beta: weight of the mixup loss (``--beta``; the released code fixed it to 1).
        tau: temperature of the teacher's softmax (``--tau``).
        threshold: confidence a teacher label needs (``--lambda_init``).
        fc_norm: L2-normalise the teacher's classifier rows at each epoch start (``--fc_norm > 0``).
        select_on: split whose mean per-class accuracy decides teacher replacement.
        mixup_alpha: Beta concentration of mixup (1.0, hard-coded in the reference).
    """

    name = "lcsl"
    # The teacher is replaced when this improves on the selection split (reference
    # train_LCSL.py), so best.pth, chosen by the same number and rule, is the teacher's student.
    selection_metric = "mean_per_class"
    # The reference's final report normalises the classifier's weight in place (its Normalizer),
    # and the layer goes on adding its bias.
    tau_norm_keeps_bias = True
    warmup_cosine_without_warmup = True
    Options = LCSLOptions

    def __init__(self, model: nn.Module, class_counts: Sequence[int], **options):
        super().__init__(model, class_counts, **options)
        self.teacher = build_model(self.options.arch, self.num_classes, head="linear")
        self._check_same_architecture()
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        # Checkpointed with the weights, so a resumed run continues with the same teacher and
        # the same bar for replacing it. 0 = the random initial teacher.
        self.register_buffer("best_score", torch.full((), float("-inf"), dtype=torch.float64))
        self.register_buffer("teacher_epoch", torch.zeros((), dtype=torch.long))
        # Derived from class_counts, so not stored in checkpoints.
        minority = torch.zeros(self.num_classes, dtype=torch.bool)
        minority[minority_classes(list(class_counts))] = True
        self.register_buffer("minority", minority, persistent=False)
        # Teacher labels of this epoch per class: every label it gave, and those that counted
        # (confident, minority class). Epoch diagnostics only, reset at each epoch start.
        self.register_buffer("teacher_labels", torch.zeros(self.num_classes), persistent=False)
        self.register_buffer("counted_labels", torch.zeros(self.num_classes), persistent=False)
        object.__setattr__(self, "_teacher_network", None)
        # teacher_epoch > 0, kept on the host so the step never reads the buffer back; refreshed
        # at every epoch start (after a resume too) and on replacement.
        self._teacher_trained = False

    def _check_same_architecture(self) -> None:
        student = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        teacher = {k: tuple(v.shape) for k, v in self.teacher.state_dict().items()}
        if student != teacher:
            differing = sorted(set(student.items()) ^ set(teacher.items()))[:3]
            raise ValueError(f"LCSL's teacher ('{self.init_kwargs['arch']}' with a linear head) does "
                             f"not match the student's weights, e.g. {differing}: the student must "
                             "be that architecture with a linear classifier")

    # ---- modes and parallelism --------------------------------------------------------------------
    def train(self, mode: bool = True) -> "LCSL":
        super().train(mode)
        # The teacher labels with running BN statistics and no dropout, in every phase.
        self.teacher.eval()
        return self

    def wrap(self, wrap_train, wrap_eval) -> None:
        super().wrap(wrap_train, wrap_eval)
        # DataParallel replicates the teacher from its current weights on every call, so the
        # in-place normalisation and replacement below reach the replicas; DDP gets it as is.
        object.__setattr__(self, "_teacher_network", wrap_eval(self.teacher))

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        """B x C flip-averaged teacher logits, without a graph (and under the engine's autocast)."""
        network = self._teacher_network if self._teacher_network is not None else self.teacher
        return flip_averaged_logits(network, images)

    # ---- training ---------------------------------------------------------------------------------
    def draw_mixup(self, batch_size: int, device: torch.device) -> Tuple[Tensor, Tensor]:
        """lambda and the pairing permutation of one batch (a method so tests can fix them)."""
        return draw_mixup(batch_size, self.options.mixup_alpha, device)

    def training_step(self, images: Tensor, targets: Tensor, epoch: int,
                      indices: Optional[Tensor] = None) -> StepOutput:
        lam, perm = self.draw_mixup(targets.shape[0], images.device)
        mixed = mix_images(images, lam, perm)  # B x 3 x H x W; the only images S and T see
        if self._teacher_trained:
            pseudo, mask = self_labels(self.teacher_logits(mixed), self.options.tau, self.options.threshold,
                                       self.minority)
            # index_add_ rather than bincount: no host synchronisation on CUDA.
            self.teacher_labels.index_add_(0, pseudo, torch.ones_like(mask))
            self.counted_labels.index_add_(0, pseudo, mask)
        else:
            # Until a student first replaces it, the teacher is the random initialisation and
            # gives no labels. In the reference its unit-norm rows on a ResNet-34 with PyTorch's
            # default init give near-uniform softmaxes, so the confidence filter drops every label;
            # a Kaiming-initialised ResNet-32 in eval mode with fresh BN statistics instead emits
            # features of norm ~1e3 and fully confident random labels, which would be pure noise.
            pseudo, mask = targets, torch.zeros(targets.shape[0], device=targets.device)
        with torch.no_grad():
            # The reference also runs the student on the clean batch, in train mode, just before
            # the mixed one (train_LCSL.py, line 193). Its output is unused, but every BatchNorm's
            # running statistics see the clean batch and then the mixed one, so at test time BN
            # normalises with statistics of both (mixed images have lower variance: about 0.72
            # of the clean one at the stem). Only that side effect matters, so no graph is kept.
            self.network(images)
        logits = self.network(mixed)  # B x C, the one forward with a graph
        loss, parts = lcsl_loss(logits, targets, perm, lam, pseudo, mask, self.options.alpha, self.options.beta)
        parts["sl/mask_rate"] = mask.mean()  # share of the batch whose teacher label counts
        return {"loss": loss, "logits": logits, "parts": parts}

    # ---- teacher rules ----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Unit-L2 classifier rows for the teacher (``utils.Normalizer`` in the reference), so head
        classes lose the weight-norm advantage before the teacher labels minority samples."""
        self._teacher_trained = int(self.teacher_epoch) > 0
        self.teacher_labels.zero_()
        self.counted_labels.zero_()
        if self.options.fc_norm:
            normalize_rows_(self.teacher.head)

    @torch.no_grad()
    def epoch_statistics(self) -> Dict[str, Tensor]:
        """What shows whether the self-labels reach the tail: the teacher's labels per class (all,
        and those that counted) and the student's classifier row norms and biases, which
        decide how far its logits favour the head classes."""
        head = self.model.head
        return {"lcsl/teacher_labels": dist.all_reduce_sum(self.teacher_labels).cpu(),
                "lcsl/counted_labels": dist.all_reduce_sum(self.counted_labels).cpu(),
                "lcsl/student_row_norm": head.weight.detach().float().norm(dim=1).cpu(),
                "lcsl/student_bias": head.bias.detach().float().cpu()}

    @torch.no_grad()
    def replace_teacher(self) -> None:
        """T <- S: parameters and BN statistics; the teacher keeps requires_grad=False."""
        self.teacher.load_state_dict(self.model.state_dict())

    def on_epoch_end(self, epoch: int, evaluations: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        """Replaces the teacher when the student's mean per-class accuracy on ``select_on``
        strictly improves (reference ``train_LCSL.py``: ``if acc > best``).

        The engine saves best.pth by the same number (``selection_metric``) and the same rule
        (``utils.metrics.improves``), so best.pth holds the student the teacher was copied from,
        on any split, balanced or not. Returns records for results.json.
        """
        if not evaluations:  # an epoch skipped by --eval_interval
            return {}
        if self.options.select_on not in evaluations:
            raise ConfigError(f"LCSL replaces its teacher by the {self.options.select_on} split, but this run "
                              f"evaluates only {', '.join(sorted(evaluations))}: add --val_per_class N "
                              "or use --select_on test")
        score = float(evaluations[self.options.select_on]["mean_per_class"])
        if not improves(score, float(self.best_score)):
            return {}
        self.best_score.fill_(score)
        self.teacher_epoch.fill_(epoch + 1)
        self.replace_teacher()
        self._teacher_trained = True
        return {"method/teacher_epoch": epoch + 1, "method/teacher_score": score,
                "method/teacher_rule": f"student copied into the teacher when its mean per-class "
                                       f"accuracy on the {self.options.select_on} split improved"}


# ---- command line (train_LCSL.py) --------------------------------------------------------------
# LCSL config.py / train_LCSL.py (docs/lcsl.md#schedule-and-defaults): SGD, warm-up 10 then cosine;
# the augmentation is --data_aug's (DATA_AUG).
RECIPE = Recipe(lr=0.01, weight_decay=5e-3, epochs=300, warmup_epochs=10, cos=True, schedule=(), lr_gamma=0.1,
                batch_size=64, aug=("standard",), seed=0)
# Balanced validation images per class on CIFAR-style data, from the images the LT subset left.
# The head class keeps all its images (none left), so it is absent from the split.
DEFAULT_VAL_PER_CLASS = 20
# --data_aug -> recipe per image style (docs/lcsl.md#augmentation): on CIFAR the reference gives every
# value other than 'none' AutoAugment + Cutout, 'sim_aug' included.
DATA_AUG = {"none": {"cifar": "standard", "imagenet": "standard"},
            "autoaug": {"cifar": "autoaug", "imagenet": "randaug"},
            "sim_aug": {"cifar": "autoaug", "imagenet": "sim_aug"}}


class LCSLCommandLine:
    """train_LCSL.py's flags (the paper's config.py spellings) and the TrainConfig they describe."""

    Options = LCSLOptions
    recipe = RECIPE

    def add_arguments(self, parser) -> None:
        from datasets import DATASETS, dataset_name
        from utils import cli
        from utils.config import POSITIVE_INT, TrainConfig

        parser.add_argument("--dataset", default="cifar100", type=dataset_name, choices=DATASETS.names(),
                            help="dataset ('imagenet', 'inat' and 'inaturalist' are accepted for imagenet_lt and inat2018)")
        parser.set_defaults(val_per_class=None)  # resolved per dataset in build_config
        cli.reword(parser, "val_per_class",
                   "validation images per class, taken from the training images the long-tailed subset leaves "
                   f"unused (default: {DEFAULT_VAL_PER_CLASS} on CIFAR-style data; 0 where the dataset has a "
                   "validation list)")
        group = parser.add_argument_group("LCSL (the flags of the paper's config.py)")
        LCSLOptions.add_arguments(group)
        group.add_argument("--data_aug", type=str.lower, default=None, choices=sorted(DATA_AUG),
                           help="none: crop + flip; autoaug: AutoAugment + Cutout (CIFAR) / RandAugment "
                                "(ImageNet-style); sim_aug: the sim_aug recipe (ImageNet-style: jitter, grey, blur), "
                                "AutoAugment + Cutout on CIFAR as in the reference (default: none)")
        group.add_argument("--start_epoch", type=POSITIVE_INT, default=1,
                           help="> 1 continues the run's last.pth (--out_dir, or the newest matching run "
                                "under --root_log); it must be the epoch after the last finished one")
        group.add_argument("--tau_norm", type=cli.limit(TrainConfig, "eval_tau_norm"), default=1.9,
                           help="tau of the tau-normalised classifier in the final report (default: 1.9)")
        group.add_argument("--image_size", type=POSITIVE_INT, default=None,
                           help="accepted for the paper's commands and unused, as there: the dataset sets the size")
        group.add_argument("--optimizer", default="sgd", choices=["sgd"],
                           help="accepted for the paper's commands; SGD is the only optimiser, as there")

    @staticmethod
    def training_recipe(args, style: str) -> Tuple[str, Dict[str, Any]]:
        """The augmentation recipe and its options from --data_aug (or the toolkit's --aug)."""
        from datasets.augment import recipe_options

        if args.aug:
            if args.data_aug is not None:
                raise ConfigError("--aug and --data_aug both choose the training augmentation: pass one")
            if len(args.aug) != 1:
                raise ConfigError(f"LCSL trains on one view, but --aug lists {len(args.aug)} recipes")
            recipe, options = args.aug[0], {}
        else:
            recipe, options = DATA_AUG[args.data_aug or "none"][style], {}
        for key in ("randaug_n", "randaug_m", "color_jitter"):
            value = getattr(args, key, None)
            if value is not None:
                if key not in recipe_options(recipe):
                    raise ConfigError(f"--{key} is an option of other recipes than '{recipe}', the one this "
                                      "run trains with (--data_aug, or --aug)")
                options[key] = value
        return recipe, options

    @staticmethod
    def default_selection(args, val_per_class: int) -> str:
        """Select on a validation split wherever the data have one: the images --val_per_class cuts
        from the CIFAR leftovers, or a list dataset's own validation list (ImageNet-LT and Places-LT
        always have one; iNaturalist's validation list is its test set)."""
        from datasets import dataset_entry

        entry = dataset_entry(args.dataset)
        if entry.small_images:
            return "val" if val_per_class > 0 else "test"
        return "val" if entry.ships_val_list or args.val_list else "test"

    def build_config(self, args):
        """The frozen TrainConfig and a label for the run folder name."""
        from datasets import dataset_entry
        from utils import cli
        from utils.config import TrainConfig

        if args.use_norm or args.head_scale is not None:
            raise ConfigError("LCSL trains a linear classifier (its teacher normalisation and the final "
                              "tau-normalisation act on the weight norms): drop --use_norm / --head_scale")
        entry = dataset_entry(args.dataset)
        arch = cli.architecture(args)
        val_per_class = cli.pick(args.val_per_class, DEFAULT_VAL_PER_CLASS if entry.small_images else 0)
        select_on = cli.pick(args.select_on, self.default_selection(args, val_per_class))
        if select_on == "val" and entry.small_images and val_per_class < 1:
            raise ConfigError("--select_on val needs a validation split: --val_per_class N (N >= 1) cuts one "
                              "from the unused training images; or pass --select_on test, as the paper's code")
        recipe, aug_options = self.training_recipe(args, entry.image_style)
        options = LCSLOptions.from_args(args, arch=arch, select_on=select_on)
        config = TrainConfig(
            script="train_LCSL.py", dataset=args.dataset,
            data=dataclasses.replace(cli.data_options(args, "first"), val_per_class=val_per_class),
            arch=arch, head="linear", head_scale=None, method="lcsl", method_options=options.as_kwargs(),
            batch_size=cli.pick(args.batch_size, RECIPE.batch_size), train_aug=(recipe,),
            aug_options=aug_options, sampler=None, sampler_options={}, select_on=select_on,
            optim=cli.optim_config(args, RECIPE), run=cli.run_config(args, RECIPE.seed),
            **cli.semi_self_fields(args))
        label = f"lcsl_{args.data_aug or ('none' if not args.aug else recipe)}_sel{select_on}"
        return config, label
