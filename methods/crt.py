"""Classifier re-training (cRT) of Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition" (ICLR 2020), Sec. 4, as used in the ImageNet-LT / iNaturalist tables of
Yang & Xu (NeurIPS 2020) (configs ``cls_crt.yaml``; docs/baselines.md#classifier-re-training-crt).

Stage 2 of decoupled training: the backbone of a finished run (or an SSP checkpoint) is loaded
with ``--pretrained_model`` and frozen, the classifier is re-initialised and trained alone with
class-aware sampling (4 images per class visit) and cross-entropy. Only the head receives
gradients, so the backbone runs without autograd, outside DDP. The run writes to its own folder,
never over the run it reads.

BatchNorm: the reference puts every network in train mode each epoch, so the frozen backbone's
running statistics drift towards the class-balanced batches; here the backbone stays in eval
mode (a truly fixed representation) unless ``--crt_update_bn True`` asks for the reference's
behaviour.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn

from methods.base import METHOD_CLIS, METHODS, MethodChoice, MethodCommandLine
from methods.erm import ERM, ERMOptions, sampler_options
from methods.options import option
from utils.config import ConfigError, Recipe


@dataclass(frozen=True)
class CRTOptions(ERMOptions):
    """ERM's options (cross-entropy, no re-weighting: the sampler re-balances) and one more."""

    update_bn: bool = option(False, "--crt_update_bn",
                             help="let the frozen backbone's BatchNorm statistics follow the re-sampled "
                                  "batches (the reference's behaviour)")

    def __post_init__(self):
        super().__post_init__()
        if self.train_rule != "none":
            raise ConfigError(f"cRT re-balances by sampling, not by re-weighting: train_rule must be 'none', "
                              f"got '{self.train_rule}'")


@METHODS.register("crt")
class ClassifierRetraining(ERM):
    """Cross-entropy on a frozen backbone; only ``model.head`` is optimised."""

    name = "crt"
    Options = CRTOptions

    def __init__(self, model: nn.Module, class_counts: Sequence[int], **options):
        super().__init__(model, class_counts, **options)
        for param in model.backbone.parameters():
            param.requires_grad_(False)
        object.__setattr__(self, "_features", model.backbone)

    def trainable_network(self) -> nn.Module:
        return self.model.head

    def wrap(self, wrap_train, wrap_eval) -> None:
        super().wrap(wrap_train, wrap_eval)
        object.__setattr__(self, "_features", wrap_eval(self.model.backbone))

    def train(self, mode: bool = True) -> "ClassifierRetraining":
        super().train(mode)
        if mode and not self.options.update_bn:
            self.model.backbone.eval()
        return self

    def training_step(self, images, targets, epoch, indices=None):
        # With --crt_update_bn the forward still refreshes BN statistics; no gradient either way.
        with torch.no_grad():
            features = self._features(images)
        logits = self.network(features)
        loss = self.criterion(logits, targets)
        return {"loss": loss, "logits": logits, "parts": {f"loss/{self.options.loss}": loss.detach()}}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        # Both halves through their DataParallel wrappers when there are some (DDP is bypassed).
        head = self._network if isinstance(self._network, nn.DataParallel) else self.model.head
        return head(self._features(images))


# ---- command line ------------------------------------------------------------------------------
def _same_place(out_dir: Optional[str], pretrained: str) -> bool:
    if out_dir is None:
        return False
    source = os.path.abspath(pretrained)
    source_dir = source if os.path.isdir(source) else os.path.dirname(source)
    return os.path.abspath(out_dir) == source_dir


class CRTCommandLine(MethodCommandLine):
    names = ("crt",)
    title = "classifier re-training (--method crt)"
    Options = CRTOptions
    # cls_crt.yaml of ImageNet-LT: batch 512, 10 epochs, lr 0.2, wd 5e-4, cosine, colour jitter.
    recipe = Recipe(lr=0.2, weight_decay=5e-4, epochs=10, warmup_epochs=0, cos=True, schedule=(160, 180),
                    lr_gamma=0.1, batch_size=512, aug=("standard",), seed=0)
    # iNaturalist18/cls_crt.yaml: 30 epochs, wd 1e-4, and no colour jitter in its transform.
    dataset_recipes = {"inat2018": dataclasses.replace(recipe, epochs=30, weight_decay=1e-4)}
    erm_flags = ("sampler",)

    def choose(self, args) -> MethodChoice:
        if args.pretrained_model is None:
            raise ConfigError("--method crt re-trains the classifier of a trained backbone: give the run "
                              "folder or checkpoint with --pretrained_model")
        if _same_place(args.out_dir, args.pretrained_model):
            raise ConfigError(f"--out_dir {args.out_dir} is the folder of --pretrained_model: cRT writes "
                              "its own run and must not overwrite the run it reads")
        self.refuse_cosine_head(args, "re-trains a linear classifier")
        sampler = args.sampler or "class_aware"
        # The reference caps an epoch at floor(N / batch) steps: drop the last partial batch.
        options = CRTOptions(cb_beta=args.cb_beta, update_bn=args.crt_update_bn)
        from datasets.augment import recipe_options

        inat = args.dataset == "inat2018"
        recipe = self.dataset_recipes.get(args.dataset, self.recipe)
        # iNaturalist's transform has no colour jitter: switched off in the recipes that have one.
        jitters = all("color_jitter" in recipe_options(name) for name in (args.aug or recipe.aug))
        return MethodChoice("crt", options, "crt", recipe, sampler=sampler,
                            sampler_options=sampler_options(args, sampler), drop_last=True,
                            aug_options={"color_jitter": False} if inat and jitters else {})


METHOD_CLIS.register("crt")(CRTCommandLine())
