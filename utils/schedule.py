"""Learning-rate schedules as pure functions of the 0-based epoch.

The engine calls one of these once per epoch and writes the value into every parameter group,
which is how all three reference repositories schedule the learning rate. Bad arguments raise a
``ValueError`` naming the argument, since a silently wrong schedule only shows up as a worse
number at the end of a run.
"""
from __future__ import annotations

import math
from typing import Sequence


def _check_common(epoch: int, base_lr: float) -> None:
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0 (epochs are 0-based), got {epoch}")
    if not (math.isfinite(base_lr) and base_lr >= 0):
        raise ValueError(f"base_lr must be a finite number >= 0, got {base_lr}")


def _check_epochs(epoch: int, epochs: int) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if epoch >= epochs:
        raise ValueError(f"epoch {epoch} is past the schedule: 0-based epochs run from 0 to {epochs - 1}")


def _linear_warmup(epoch: int, base_lr: float, warmup_epochs: int) -> float:
    # (e + 1) / W rather than e / W, so the first epoch already trains at base_lr / W, not 0.
    return base_lr * (epoch + 1) / warmup_epochs


def warmup_cosine_lr(epoch: int, base_lr: float, epochs: int, warmup_epochs: int) -> float:
    """Linear warmup, then half-cosine decay (the LCSL and BCCL schedule).

    lr(e) = base_lr * (e + 1) / W                                   for e < W,
    lr(e) = base_lr * 0.5 * (1 + cos(pi * (e - W + 1) / (E - W + 1)))  for W <= e < E.

    The cosine is the SGDR annealing of Loshchilov & Hutter (ICLR 2017, Eq. 5) without restarts,
    with the "+1" offsets of the reference code: it never reaches exactly 0 in the last epoch.
    """
    _check_common(epoch, base_lr)
    _check_epochs(epoch, epochs)
    if warmup_epochs < 0:
        # A warm-up as long as the run is allowed: short smoke runs then stay in the ramp.
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if epoch < warmup_epochs:
        return _linear_warmup(epoch, base_lr, warmup_epochs)
    progress = (epoch - warmup_epochs + 1) / (epochs - warmup_epochs + 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_step_lr(
    epoch: int, base_lr: float, warmup_epochs: int, milestones: Sequence[int], gamma: float
) -> float:
    """Linear warmup, then multiply by ``gamma`` at every milestone reached (LDAM-DRW recipe).

    lr(e) = base_lr * (e + 1) / W                               for e < W,
    lr(e) = base_lr * gamma ** #{m in milestones : e >= m}      otherwise.

    The CIFAR recipe of the LDAM-DRW code (Cao et al., NeurIPS 2019), reused by semi-self, is
    W = 5, milestones (160, 180), gamma = 0.01: lr / 5 at epoch 0, lr up to epoch 159, lr * 1e-2
    from 160 and lr * 1e-4 from 180. The linear warmup follows Goyal et al. (2017, Sec. 2.2).
    """
    _check_common(epoch, base_lr)
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma}")
    milestones = list(milestones)
    if any(later <= earlier for earlier, later in zip(milestones, milestones[1:])):
        raise ValueError(f"milestones must be strictly increasing, got {milestones}")
    if milestones and milestones[0] < warmup_epochs:
        # A decay during warmup would be overridden by the ramp and then apply all at once.
        raise ValueError(f"milestones must not fall inside the warmup (< {warmup_epochs}), got {milestones}")
    if epoch < warmup_epochs:
        return _linear_warmup(epoch, base_lr, warmup_epochs)
    passed = sum(1 for milestone in milestones if epoch >= milestone)
    return base_lr * gamma**passed


def cosine_lr(epoch: int, base_lr: float, epochs: int) -> float:
    """Half-cosine decay without warmup: base_lr * 0.5 * (1 + cos(pi * e / E)) (MoCo's schedule).

    Loshchilov & Hutter (ICLR 2017, Eq. 5) with eta_min = 0 and a single cycle of E epochs; the
    first epoch runs at base_lr.
    """
    _check_common(epoch, base_lr)
    _check_epochs(epoch, epochs)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
