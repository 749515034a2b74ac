"""Empirical risk minimisation with the standard long-tail recipes.

One network, one loss from ``losses`` (CE, focal, LDAM, logit-adjusted CE, balanced softmax),
optionally re-weighted per class: ``reweight`` uses class-balanced weights from the first epoch
(Cui et al., CVPR 2019), ``drw`` switches them on at ``drw_epoch`` (Cao et al., NeurIPS 2019).
Re-sampling is the data pipeline's job (a sampler), so it combines with any of these.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from losses import LOSSES
from losses.priors import drw_weights, effective_number_weights
from methods.base import METHOD_CLIS, METHODS, Method, MethodChoice, MethodCommandLine
from methods.options import MethodOptions, derived, option
from utils.config import BELOW_ONE, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, ConfigError, Recipe

TRAIN_RULES = ("none", "reweight", "drw")


@dataclass(frozen=True)
class ERMOptions(MethodOptions):
    loss: str = derived("ce", choices=LOSSES.names())  # from --method or --loss_type
    loss_options: Dict[str, Any] = derived(factory=dict)  # e.g. LDAM's margin and scale
    train_rule: str = derived("none", choices=TRAIN_RULES)  # from --method or --train_rule
    drw_epoch: int = option(160, "--drw_epoch", valid=NON_NEGATIVE_INT, help="DRW: 0-based epoch re-weighting starts")
    cb_beta: float = option(0.9999, "--cb_beta", valid=BELOW_ONE,
                            help="effective-number beta of the class-balanced weights and sampler")


@METHODS.register("erm")
class ERM(Method):
    name = "erm"
    Options = ERMOptions

    def __init__(self, model: nn.Module, class_counts: Sequence[int], **options):
        super().__init__(model, class_counts, **options)
        self.criterion = LOSSES.build(self.options.loss, class_counts=list(class_counts), **self.options.loss_options)

    @property
    def logit_scale(self) -> float:
        return self.criterion.logit_scale

    def class_weights(self, epoch: int) -> Optional[torch.Tensor]:
        counts = self.class_counts.tolist()
        if self.options.train_rule == "reweight":
            return effective_number_weights(counts, self.options.cb_beta)
        if self.options.train_rule == "drw":
            return drw_weights(counts, epoch, self.options.drw_epoch, self.options.cb_beta)
        return None

    def on_epoch_start(self, epoch: int) -> None:
        weights = self.class_weights(epoch)
        self.criterion.set_class_weights(None if weights is None else weights.to(self.class_counts.device))

    def training_step(self, images, targets, epoch, indices=None):
        logits = self.network(images)
        loss = self.criterion(logits, targets)
        return {"loss": loss, "logits": logits, "parts": {f"loss/{self.options.loss}": loss.detach()}}


# ---- command line ------------------------------------------------------------------------------
# Shorthands for --method; each is (loss, train rule, sampler). The semi-self paper's
# --loss_type / --train_rule compose the same pieces.
PRESETS: Dict[str, tuple] = {
    "ce": ("ce", "none", None),
    "focal": ("focal", "none", None),
    "ldam": ("ldam", "none", None),
    "ldam_drw": ("ldam", "drw", None),
    "cb_reweight": ("ce", "reweight", None),
    "drw": ("ce", "drw", None),
    "resample": ("ce", "none", "effective_number"),
    "balanced_sampling": ("ce", "none", "class_balanced"),
    "logit_adjust": ("logit_adjust", "none", None),
    "balanced_softmax": ("balanced_softmax", "none", None),
}
LOSS_TYPES = {"ce": "ce", "ldam": "ldam", "focal": "focal", "la": "logit_adjust",
              "logit_adjust": "logit_adjust", "balanced_softmax": "balanced_softmax", "bs": "balanced_softmax"}
TRAIN_RULE_FLAGS = {"none": ("none", None), "resample": ("none", "effective_number"),
                    "reweight": ("reweight", None), "drw": ("drw", None)}
# The LDAM-DRW / semi-self recipe (docs/baselines.md#the-ldam-drw-recipe).
RECIPE = Recipe(lr=0.1, weight_decay=2e-4, epochs=200, warmup_epochs=5, cos=False, schedule=(160, 180),
                lr_gamma=0.01, batch_size=128, aug=("standard",), seed=0)


def resolve(args, method: Optional[str]):
    """(loss, train_rule, sampler) from --method and the paper flags; contradictions are errors."""
    loss, rule, sampler = PRESETS.get(method or "ce")
    if args.loss_type is not None:
        flag_loss = LOSS_TYPES[args.loss_type]
        if method is not None and flag_loss != loss:
            raise ConfigError(f"--method {method} trains with the '{loss}' loss but --loss_type "
                              f"{args.loss_type} asks for '{flag_loss}': drop one of them")
        loss = flag_loss
    if args.train_rule is not None:
        flag_rule, flag_sampler = TRAIN_RULE_FLAGS[args.train_rule]
        if method is not None and (flag_rule, flag_sampler) != (rule, sampler):
            raise ConfigError(f"--method {method} and --train_rule {args.train_rule} disagree: drop one")
        rule, sampler = flag_rule, flag_sampler
    if args.sampler is not None:
        if sampler is not None and sampler != args.sampler:
            raise ConfigError(f"--sampler {args.sampler} contradicts the '{sampler}' re-sampling "
                              "that --method/--train_rule already select")
        sampler = args.sampler
    return loss, rule, sampler


def sampler_options(args, sampler: Optional[str]) -> Dict[str, Any]:
    """The options of the re-sampling --sampler (or the method) chose, from their flags."""
    return {"class_aware": {"samples_per_class": args.samples_per_class},
            "effective_number": {"beta": args.cb_beta}}.get(sampler, {})


class ERMCommandLine(MethodCommandLine):
    names = tuple(sorted(PRESETS))
    title = "ERM baselines (--method ce|focal|ldam|...)"
    Options = ERMOptions
    recipe = RECIPE
    erm_flags = ("loss_type", "train_rule", "sampler")

    def claims(self, args) -> bool:
        """ERM is chosen by a shorthand, or implicitly by the semi-self paper's flags."""
        return args.method in PRESETS or (args.method is None and (
            args.loss_type is not None or args.train_rule is not None or args.sampler is not None))

    def add_extra_arguments(self, group) -> None:
        from datasets.samplers import SAMPLERS

        group.add_argument("--loss_type", type=str.lower, default=None, choices=sorted(LOSS_TYPES),
                           help="CE, LDAM, Focal (semi-self paper), LA (logit adjustment), balanced_softmax")
        group.add_argument("--train_rule", type=str.lower, default=None, choices=sorted(TRAIN_RULE_FLAGS),
                           help="None, Resample, Reweight or DRW (semi-self paper)")
        group.add_argument("--sampler", default=None, choices=SAMPLERS.names(), help="re-sampling of the training set")
        group.add_argument("--samples_per_class", type=POSITIVE_INT, default=4,
                           help="class_aware sampler: images of a class per visit (default: 4)")
        group.add_argument("--focal_gamma", type=NON_NEGATIVE, default=1.0, help="focal loss gamma (default: 1.0)")
        group.add_argument("--ldam_max_margin", type=NON_NEGATIVE, default=0.5,
                           help="LDAM margin of the rarest class (default: 0.5)")
        group.add_argument("--ldam_scale", type=POSITIVE, default=30.0, help="LDAM logit scale (default: 30.0)")
        group.add_argument("--la_tau", type=NON_NEGATIVE, default=1.0, help="logit-adjustment loss tau (default: 1.0)")

    def choose(self, args) -> MethodChoice:
        """The ERM run the flags describe (semi-self spellings or --method shorthands)."""
        method = args.method if args.method in PRESETS else None
        loss, rule, sampler = resolve(args, method)
        label = method or "_".join(p for p in (loss, rule if rule != "none" else "", sampler or "") if p)
        normed = loss == "ldam" if args.use_norm is None else args.use_norm
        if loss == "ldam" and not normed:
            raise ConfigError("the LDAM loss expects cosine logits: drop --use_norm False")
        if not normed and args.head_scale is not None:
            raise ConfigError("--head_scale applies to the cosine classifier only: add --use_norm True")
        # LDAM scales cosine logits itself (s = 30); other losses on a cosine head need the scale.
        head_scale = args.head_scale if args.head_scale is not None else (
            (1.0 if loss == "ldam" else 30.0) if normed else None)
        loss_options = {"focal": {"gamma": args.focal_gamma},
                        "ldam": {"max_margin": args.ldam_max_margin, "scale": args.ldam_scale},
                        "logit_adjust": {"tau": args.la_tau}}.get(loss, {})
        options = ERMOptions.from_args(args, loss=loss, loss_options=loss_options, train_rule=rule)
        return MethodChoice("erm", options, label, self.recipe, head="normed" if normed else "linear",
                            head_scale=head_scale, sampler=sampler, sampler_options=sampler_options(args, sampler))


METHOD_CLIS.register("erm")(ERMCommandLine())
