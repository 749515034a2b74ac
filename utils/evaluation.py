"""One evaluator for every test-time variant of a trained classifier.

A variant is the trained classifier or its tau-normalised copy (Kang et al., ICLR 2020:
classifier rows scaled by 1 / ||w||^tau, docs/baselines.md#tau-normalisation), optionally with
post-hoc logit adjustment (Menon et al., ICLR 2021, Eq. 9: f_y(x) - tau log pi_y) and flip
test-time augmentation (the mean of the logits of the image and its mirror). The training run's
final report, LCSL's report of its selected checkpoint and test.py all evaluate through
``evaluate_variants``, so one variant gives one number wherever it is computed.

Each distinct network passes over the loader once, and once more over the mirrored images when
one of its variants asks for flip TTA; adjustment and averaging act on the collected float32
logits, so any set of variants of one network costs at most two passes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch

from losses.priors import posthoc_logit_adjust
from models.heads import tau_normalize_head
from utils import dist
from utils.dist import DeviceContext
from utils.engine import DeviceInputs, collect_logits
from utils.metrics import summarize


@dataclass(frozen=True)
class Variant:
    tau_norm: Optional[float] = None  # tau of the tau-normalised classifier; None: the trained one
    posthoc_tau: Optional[float] = None  # tau of post-hoc logit adjustment; None: none
    flip: bool = False  # average the logits with those of the mirrored image

    def name(self, prefix: str) -> str:
        """results.json key: prefix, then _tau_norm<t>, _posthoc_la_tau<t>, _flip_tta as used."""
        parts = [prefix]
        if self.tau_norm is not None:
            parts.append(f"tau_norm{self.tau_norm:g}")
        if self.posthoc_tau is not None:
            parts.append(f"posthoc_la_tau{self.posthoc_tau:g}")
        if self.flip:
            parts.append("flip_tta")
        return "_".join(parts)

    def describe(self, keeps_bias: bool = False) -> str:
        """What the variant scores; ``keeps_bias`` is the method's tau_norm_keeps_bias."""
        what = ("trained classifier" if self.tau_norm is None
                else f"tau-normalised classifier (tau={self.tau_norm:g}, {'bias kept' if keeps_bias else 'no bias'})")
        if self.posthoc_tau is not None:
            what += f", post-hoc logit adjustment (tau={self.posthoc_tau:g})"
        return what + (", flip test-time augmentation" if self.flip else ", no TTA")


def flag_variants(tta_flip: bool, tau_norm: Optional[float], posthoc_tau: Optional[float]) -> list:
    """The variants the --tta_flip / --tau_norm / --posthoc_tau flags of a training run add to
    its report, one per flag (each on its own, not combined)."""
    variants = [Variant(flip=True)] if tta_flip else []
    if posthoc_tau is not None:
        variants.append(Variant(posthoc_tau=posthoc_tau))
    if tau_norm is not None:
        variants.append(Variant(tau_norm=tau_norm))
    return variants


def _network(method, tau_norm: Optional[float], ctx: DeviceContext):
    """What the variant's logits come from: the method's own prediction, or a tau-normalised
    copy of its classifier (the trained head and the checkpoint stay untouched)."""
    if tau_norm is None:
        return method.predict
    trained = method.classifier()
    head = tau_normalize_head(trained.head, tau_norm, keep_bias=method.tau_norm_keeps_bias)
    copy = dist.wrap_forward_only(type(trained)(trained.backbone, head).eval(), ctx)
    scale = method.logit_scale
    return copy if scale == 1.0 else (lambda images: copy(images).float() * scale)


@torch.no_grad()
def evaluate_variants(method, variants: Sequence[Variant], loader, inputs: DeviceInputs, ctx: DeviceContext,
                      train_counts, amp: str = "none", confusion: bool = False) -> Dict[Variant, Dict[str, Any]]:
    """The summary (top-1, many/medium/few, ECE, ..., with `confusion` the confusion matrix) of
    each variant of `method` (in eval mode) on `loader`; shot groups and the post-hoc prior come
    from `train_counts`."""
    by_network: Dict[Optional[float], list] = {}
    for variant in variants:
        by_network.setdefault(variant.tau_norm, []).append(variant)
    summaries: Dict[Variant, Dict[str, Any]] = {}
    for tau_norm, group in by_network.items():
        predict = _network(method, tau_norm, ctx)
        logits, targets = collect_logits(predict, loader, inputs, ctx, amp)
        mirrored = None
        if any(variant.flip for variant in group):
            mirrored, _ = collect_logits(lambda images: predict(torch.flip(images, dims=[3])), loader, inputs,
                                         ctx, amp)
        for variant in group:
            scores = (logits + mirrored) / 2 if variant.flip else logits
            if variant.posthoc_tau is not None:
                scores = posthoc_logit_adjust(scores, train_counts, variant.posthoc_tau)
            summaries[variant] = summarize(scores, targets, train_counts, confusion=confusion)
    return summaries
