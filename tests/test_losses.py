"""Losses and long-tail priors against values worked out by hand with ``math``."""
from __future__ import annotations

import math

import pytest
import torch

from losses import LOSSES
from losses.priors import (
    class_prior,
    drw_weights,
    effective_number_weights,
    ldam_margins,
    log_prior,
    posthoc_logit_adjust,
)

# Two samples, three classes; shared by the hand-computed cases below.
LOGITS = [[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]]
TARGETS = [0, 2]
E = math.exp


def tensors(logits=LOGITS, targets=TARGETS):
    return torch.tensor(logits, dtype=torch.float64), torch.tensor(targets)


def build(name, counts, **hparams):
    # float64 so the comparisons with math can be tight
    return LOSSES.build(name, class_counts=counts, **hparams).double()


# Per-sample CE of LOGITS: -log softmax(z)_y = log sum_j e^{z_j} - z_y.
CE0 = math.log(E(2.0) + E(1.0) + E(0.1)) - 2.0
CE1 = math.log(E(0.5) + E(2.5) + E(0.0)) - 0.0


# ----------------------------------------------------------------------------- priors


def test_class_prior_and_log_prior():
    assert torch.allclose(class_prior([6, 3, 1]), torch.tensor([0.6, 0.3, 0.1]))
    expected = torch.tensor([0.5 * math.log(0.6), 0.5 * math.log(0.3), 0.5 * math.log(0.1)])
    assert torch.allclose(log_prior([6, 3, 1], tau=0.5), expected)
    assert class_prior([6, 3, 1]).dtype == torch.float32


def test_effective_number_weights_hand_values():
    beta = 0.9999
    raw = [(1 - beta) / (1 - beta**5000), (1 - beta) / (1 - beta**50)]
    expected = [2 * r / sum(raw) for r in raw]  # normalised to sum to C = 2
    weights = effective_number_weights([5000, 50], beta)
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    # 1 - 0.9999^5000 = 0.39349, 1 - 0.9999^50 = 0.0049878: the tail weighs ~79x the head.
    assert weights.tolist() == pytest.approx([0.025034, 1.974966], rel=1e-4)
    assert weights.sum().item() == pytest.approx(2.0)


@pytest.mark.parametrize("rule, before, after", [("none", 1.410038, 1.410038), ("reweight", 2.108981, 2.108981),
                                                  ("drw", 1.410038, 2.108981)])
def test_erm_applies_its_train_rule_at_each_epoch_start(rule, before, after):
    # Counts 5000 : 50 give class weights (0.025034, 1.974966) (above). A batch of two: logits
    # (0, 0) for target 0, loss ln 2 = 0.693147; logits (2, 0) for target 1, loss ln(1 + e^2) =
    # 2.126928. Unweighted mean 1.410038; weighted (0.025034 * 0.693147 + 1.974966 * 2.126928) / 2
    # = 2.108981. DRW (drw_epoch 2) weighs from epoch 2 on; re-weighting from the start.
    from methods import build_method
    from models import build_model

    method = build_method("erm", build_model("resnet32", 2), [5000, 50], train_rule=rule, drw_epoch=2)
    logits, targets = torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
    for epoch, expected in ((0, before), (1, before), (2, after), (3, after)):
        method.on_epoch_start(epoch)
        assert float(method.criterion(logits, targets)) == pytest.approx(expected, abs=2e-5), epoch


def test_ldam_evaluation_scores_the_probabilities_its_loss_trained():
    # LDAM's head gives cosines (scale 1); the loss trains softmax(30 * cos). A cosine head whose
    # class vectors are e_0 and e_1 on a feature along e_0 gives cosines (1, 0): the trained
    # probability of class 0 is e^30 / (e^30 + 1) = 1 - 9.4e-14, NLL 9.4e-14, where softmax of
    # the raw cosines would say e / (e + 1) = 0.7311 (NLL 0.3133). Evaluation (ECE, NLL, the
    # post-hoc prior, pseudo-label confidences) must see the former; the argmax is the same.
    from methods import build_method
    from models import Classifier
    from models.heads import NormedLinear
    from utils.dist import DeviceContext
    from utils.engine import DeviceInputs
    from utils.evaluation import Variant, evaluate_variants

    class Features(torch.nn.Module):
        out_dim = 2

        def forward(self, x):
            return x.flatten(1)[:, :2]

    head = NormedLinear(2, 2, scale=1.0)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    ldam = build_method("erm", Classifier(Features(), head), [50, 5], loss="ldam", loss_options={})
    ce = build_method("erm", Classifier(Features(), head), [50, 5], loss="ce")
    assert (ldam.logit_scale, ce.logit_scale) == (30.0, 1.0)
    images = torch.zeros(1, 3, 1, 1)  # a float batch passes DeviceInputs as it is
    images[0, 0, 0, 0] = 1.0
    ldam.eval()
    assert ldam.predict(images).tolist() == [[30.0, 0.0]]
    loader = [(images, torch.tensor([0]), torch.tensor([0]))]
    inputs = DeviceInputs((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), torch.device("cpu"))
    variants = [Variant(), Variant(tau_norm=1.0), Variant(posthoc_tau=1.0)]
    summary = evaluate_variants(ldam, variants, loader, inputs, DeviceContext(torch.device("cpu")), [50, 5])
    assert summary[Variant()]["nll"] == pytest.approx(E(-30.0), abs=1e-6)
    assert summary[Variant()]["top1"] == 100.0
    # The tau-normalised copy of a cosine head gives the same cosines, scaled the same way.
    assert summary[Variant(tau_norm=1.0)]["nll"] == pytest.approx(E(-30.0), abs=1e-6)
    # Post-hoc adjustment subtracts log(50/55) and log(5/55) from (30, 0): a margin of 30 - ln 10
    # = 27.70 (on the raw cosines it would be 1 - 2.30 < 0: class 1 would win).
    assert summary[Variant(posthoc_tau=1.0)]["nll"] == pytest.approx(math.log1p(E(-(30 - math.log(10)))), abs=1e-9)
    assert summary[Variant(posthoc_tau=1.0)]["top1"] == 100.0


def test_effective_number_weights_beta_zero_is_uniform():
    assert torch.equal(effective_number_weights([5000, 50, 3], beta=0.0), torch.ones(3))


def test_drw_switches_at_drw_epoch():
    counts = [5000, 50]
    assert torch.equal(drw_weights(counts, epoch=0), torch.ones(2))
    assert torch.equal(drw_weights(counts, epoch=159), torch.ones(2))
    assert torch.equal(drw_weights(counts, epoch=160), effective_number_weights(counts, 0.9999))
    assert torch.equal(drw_weights(counts, epoch=400), effective_number_weights(counts, 0.9999))
    assert torch.equal(drw_weights(counts, epoch=3, drw_epoch=3, beta=0.0), torch.ones(2))


def test_ldam_margins_hand_values():
    # n^{-1/4} = [100^{-1/4}, 1] = [1/sqrt(10), 1]; scaled so the largest is 0.5.
    margins = ldam_margins([100, 1], max_margin=0.5)
    assert margins.tolist() == pytest.approx([0.5 / math.sqrt(10), 0.5], rel=1e-6)
    decreasing = ldam_margins([5000, 2997, 1796, 50])
    assert decreasing[-1].item() == pytest.approx(0.5)
    assert (decreasing[1:] >= decreasing[:-1]).all()  # fewer samples, larger margin


def test_posthoc_logit_adjust_hand_values():
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    adjusted = posthoc_logit_adjust(logits, [6, 3, 1], tau=1.0)
    expected = [1.0 - math.log(0.6), 1.0 - math.log(0.3), 1.0 - math.log(0.1)]
    assert adjusted[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert adjusted.argmax().item() == 2  # a tie goes to the rarest class once the prior is removed
    with pytest.raises(ValueError, match="2 classes but counts have 3"):
        posthoc_logit_adjust(torch.ones(1, 2), [6, 3, 1])


@pytest.mark.parametrize("bad", [[], [[1, 2]], [3, -1], [1.0, float("nan")]])
def test_invalid_counts_raise(bad):
    with pytest.raises(ValueError):
        class_prior(bad)


@pytest.mark.parametrize("fn", [log_prior, effective_number_weights, ldam_margins])
def test_zero_count_rejected_where_undefined(fn):
    with pytest.raises(ValueError, match="count > 0"):
        fn([10, 0, 3])


# ----------------------------------------------------------------------------- losses


def test_ce_hand_value():
    logits, targets = tensors()
    assert build("ce", [5, 5, 5])(logits, targets).item() == pytest.approx((CE0 + CE1) / 2, rel=1e-12)


def test_weighted_ce_is_torch_weighted_mean():
    logits, targets = tensors()
    loss = build("ce", [5, 5, 5])
    loss.set_class_weights([1.0, 2.0, 3.0])
    # targets are classes 0 and 2 -> weights 1 and 3
    assert loss(logits, targets).item() == pytest.approx((1 * CE0 + 3 * CE1) / (1 + 3), rel=1e-12)
    loss.set_class_weights(None)
    assert loss(logits, targets).item() == pytest.approx((CE0 + CE1) / 2, rel=1e-12)


def test_focal_gamma_zero_equals_ce():
    logits, targets = tensors()
    focal = build("focal", [5, 5, 5], gamma=0.0)(logits, targets)
    assert focal.item() == pytest.approx(build("ce", [5, 5, 5])(logits, targets).item(), rel=1e-12)


def test_focal_gamma_one_hand_value():
    logits, targets = tensors()
    expected = ((1 - E(-CE0)) * CE0 + (1 - E(-CE1)) * CE1) / 2
    assert build("focal", [5, 5, 5], gamma=1.0)(logits, targets).item() == pytest.approx(expected, rel=1e-12)


def test_focal_weighted_uses_weighted_per_sample_ce():
    logits, targets = tensors()
    loss = build("focal", [5, 5, 5], gamma=2.0)
    loss.set_class_weights([1.0, 2.0, 3.0])
    v0, v1 = 1 * CE0, 3 * CE1  # p = exp(-v) from the weighted value, then a plain mean
    expected = ((1 - E(-v0)) ** 2 * v0 + (1 - E(-v1)) ** 2 * v1) / 2
    assert loss(logits, targets).item() == pytest.approx(expected, rel=1e-12)


def test_ldam_two_class_hand_value():
    m0, m1 = 0.5 / math.sqrt(10), 0.5  # margins of counts [100, 1]
    logits, targets = tensors([[0.6, 0.2], [0.1, 0.3]], [0, 1])
    # row 0: target 0 -> s * [0.6 - m0, 0.2]; row 1: target 1 -> s * [0.1, 0.3 - m1]
    a0, b0 = 30 * (0.6 - m0), 30 * 0.2
    a1, b1 = 30 * 0.1, 30 * (0.3 - m1)
    loss0 = math.log(E(a0) + E(b0)) - a0
    loss1 = math.log(E(a1) + E(b1)) - b1
    loss = build("ldam", [100, 1], max_margin=0.5, scale=30.0)
    assert loss(logits, targets).item() == pytest.approx((loss0 + loss1) / 2, rel=1e-10)
    # Weights that do not sum to the batch size, so the weighted mean (divided by the summed
    # weights of the batch's targets, as torch's and the reference's) differs from mean(w * loss).
    loss.set_class_weights([1.0, 3.0])
    assert loss(logits, targets).item() == pytest.approx((1.0 * loss0 + 3.0 * loss1) / 4.0, rel=1e-10)
    assert loss(logits, targets).item() == pytest.approx(6.750269, abs=1e-6)


def test_ldam_zero_margin_is_scaled_ce():
    logits, targets = tensors()
    ldam = build("ldam", [9, 4, 1], max_margin=0.0, scale=2.0)
    ce = build("ce", [9, 4, 1])
    assert ldam(logits, targets).item() == pytest.approx(ce(2.0 * logits, targets).item(), rel=1e-12)


def test_logit_adjust_uniform_prior_equals_ce():
    logits, targets = tensors()
    adjusted = build("logit_adjust", [7, 7, 7], tau=1.0)(logits, targets)
    assert adjusted.item() == pytest.approx(build("ce", [7, 7, 7])(logits, targets).item(), abs=1e-12)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_logit_adjust_hand_value(tau):
    pi = [0.6, 0.3, 0.1]  # counts [6, 3, 1]
    # CE(z + tau log pi, y) = log sum_j pi_j^tau e^{z_j} - tau log pi_y - z_y
    row0 = math.log(sum(p**tau * E(z) for p, z in zip(pi, LOGITS[0]))) - tau * math.log(pi[0]) - 2.0
    row1 = math.log(sum(p**tau * E(z) for p, z in zip(pi, LOGITS[1]))) - tau * math.log(pi[2]) - 0.0
    logits, targets = tensors()
    loss = build("logit_adjust", [6, 3, 1], tau=tau)(logits, targets)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-7)


def test_balanced_softmax_hand_value():
    counts = [6, 3, 1]
    # -log( n_y e^{z_y} / sum_j n_j e^{z_j} )
    row0 = math.log(sum(n * E(z) for n, z in zip(counts, LOGITS[0]))) - math.log(6) - 2.0
    row1 = math.log(sum(n * E(z) for n, z in zip(counts, LOGITS[1]))) - math.log(1) - 0.0
    logits, targets = tensors()
    loss = build("balanced_softmax", counts)(logits, targets)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-7)
    # softmax ignores the constant log N, so this is logit adjustment with tau = 1
    same = build("logit_adjust", counts, tau=1.0)(logits, targets)
    assert loss.item() == pytest.approx(same.item(), rel=1e-7)


# ----------------------------------------------------------------------------- registry contract


def test_registry_names_and_heads():
    assert {"ce", "focal", "ldam", "logit_adjust", "balanced_softmax"} <= set(LOSSES.names())
    heads = {name: LOSSES.get(name).needs_normed_head for name in LOSSES.names()}
    assert [name for name, normed in heads.items() if normed] == ["ldam"]
    with pytest.raises(KeyError, match="balanced_softmax"):
        LOSSES.build("cross_entropy", class_counts=[1, 2])


def test_bad_inputs_raise():
    loss = LOSSES.build("ce", class_counts=[5, 3, 1])
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class weights"):
        loss.set_class_weights([1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        loss.set_class_weights([1.0, -2.0, 1.0])
    with pytest.raises(ValueError, match="whole numbers"):
        LOSSES.build("ce", class_counts=[5.5, 3])
    with pytest.raises(ValueError, match="gamma"):
        LOSSES.build("focal", class_counts=[5, 3], gamma=-1.0)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_smoke(name):
    torch.manual_seed(0)
    counts = [50, 10, 3]
    loss = LOSSES.build(name, class_counts=counts)
    # cosine-like logits in [-1, 1] suit LDAM and are harmless for the others
    logits = torch.randn(8, 3).tanh().requires_grad_()
    targets = torch.tensor([0, 1, 2, 0, 0, 1, 2, 0])

    value = loss(logits, targets)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0

    # class weights change the loss and None restores it
    loss.set_class_weights(drw_weights(counts, epoch=200))
    assert not torch.isclose(loss(logits, targets), value)
    loss.set_class_weights(None)
    assert torch.isclose(loss(logits, targets), value)

    # counts and weights are buffers: checkpointed, and moved / cast by .to
    state = loss.state_dict()
    assert {"class_counts", "class_weights"} <= set(state)
    fresh = LOSSES.build(name, class_counts=counts)
    fresh.load_state_dict(state, strict=True)
    moved = fresh.to(torch.device("meta"))
    assert all(buffer.device.type == "meta" for buffer in moved.buffers())
    cast = LOSSES.build(name, class_counts=counts).to(torch.float64)
    assert cast.class_weights.dtype == torch.float64 and cast.class_counts.dtype == torch.int64
