"""Learning-rate schedules at their boundary epochs."""
from __future__ import annotations

import math

import pytest

from utils.schedule import cosine_lr, warmup_cosine_lr, warmup_step_lr


def test_warmup_step_ldam_drw_recipe():
    lr = 0.1
    recipe = dict(base_lr=lr, warmup_epochs=5, milestones=(160, 180), gamma=0.01)
    assert warmup_step_lr(0, **recipe) == pytest.approx(lr / 5)
    assert warmup_step_lr(3, **recipe) == pytest.approx(lr * 4 / 5)
    assert warmup_step_lr(4, **recipe) == pytest.approx(lr)
    assert warmup_step_lr(159, **recipe) == pytest.approx(lr)
    assert warmup_step_lr(160, **recipe) == pytest.approx(lr * 1e-2)
    assert warmup_step_lr(179, **recipe) == pytest.approx(lr * 1e-2)
    assert warmup_step_lr(180, **recipe) == pytest.approx(lr * 1e-4)
    assert warmup_step_lr(199, **recipe) == pytest.approx(lr * 1e-4)


def test_warmup_step_without_warmup_or_milestones():
    assert warmup_step_lr(0, 0.5, warmup_epochs=0, milestones=(), gamma=0.1) == 0.5
    assert warmup_step_lr(7, 0.5, warmup_epochs=0, milestones=[7], gamma=0.1) == pytest.approx(0.05)


def test_warmup_cosine_boundaries():
    lr, epochs, warmup = 0.15, 200, 10
    assert warmup_cosine_lr(0, lr, epochs, warmup) == pytest.approx(lr / 10)
    assert warmup_cosine_lr(9, lr, epochs, warmup) == pytest.approx(lr)
    # first cosine epoch: progress (10 - 10 + 1) / (200 - 10 + 1) = 1/191
    assert warmup_cosine_lr(10, lr, epochs, warmup) == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi / 191)))
    # last epoch: progress 190/191, just above zero
    last = warmup_cosine_lr(199, lr, epochs, warmup)
    assert last == pytest.approx(lr * 0.5 * (1 + math.cos(math.pi * 190 / 191)))
    assert 0 < last < 1e-4
    # halfway through the cosine part: (6 - 2 + 1) / (11 - 2 + 1) = 1/2 -> lr / 2
    assert warmup_cosine_lr(6, 1.0, 11, 2) == pytest.approx(0.5)


def test_warmup_cosine_without_warmup():
    assert warmup_cosine_lr(0, 1.0, 3, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_cosine_boundaries():
    assert cosine_lr(0, 0.03, 200) == pytest.approx(0.03)
    assert cosine_lr(100, 0.03, 200) == pytest.approx(0.015)
    assert cosine_lr(199, 0.03, 200) == pytest.approx(0.03 * 0.5 * (1 + math.cos(math.pi * 199 / 200)))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: cosine_lr(-1, 0.1, 10), "epoch must be >= 0"),
        (lambda: cosine_lr(10, 0.1, 10), "past the schedule"),
        (lambda: cosine_lr(0, -0.1, 10), "base_lr"),
        (lambda: warmup_cosine_lr(0, 0.1, 10, -1), "warmup_epochs"),
        (lambda: warmup_cosine_lr(0, 0.1, 0, 0), "epochs must be >= 1"),
        (lambda: warmup_step_lr(0, 0.1, -1, (5,), 0.1), "warmup_epochs"),
        (lambda: warmup_step_lr(0, 0.1, 5, (180, 160), 0.1), "strictly increasing"),
        (lambda: warmup_step_lr(0, 0.1, 5, (3,), 0.1), "inside the warmup"),
        (lambda: warmup_step_lr(0, 0.1, 5, (160,), 0.0), "gamma"),
    ],
)
def test_invalid_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_warmup_as_long_as_the_run_stays_in_the_ramp():
    # A 2-epoch smoke run of a 10-epoch-warm-up recipe trains at lr/10 then 2*lr/10.
    assert warmup_cosine_lr(0, 0.15, 2, 10) == pytest.approx(0.015)
    assert warmup_cosine_lr(1, 0.15, 2, 10) == pytest.approx(0.03)


def test_engine_uses_plain_cosine_without_warmup():
    from utils.config import OptimConfig
    from utils.engine import learning_rate

    optim = OptimConfig(lr=0.2, epochs=10, warmup_epochs=0, cosine=True, milestones=())
    assert learning_rate(optim, 0) == pytest.approx(0.2)
    assert learning_rate(optim, 5) == pytest.approx(0.1)  # 0.2 * (1 + cos(pi / 2)) / 2
    with_warmup = OptimConfig(lr=0.15, epochs=200, warmup_epochs=10, cosine=True)
    assert learning_rate(with_warmup, 0) == pytest.approx(0.015)
    step = OptimConfig(lr=0.1, epochs=200, warmup_epochs=5)
    assert learning_rate(step, 170) == pytest.approx(0.001)


def test_lcsl_and_bccl_keep_their_cosine_without_warmup():
    # Their adjust_learning_rate with W = 0: lr * (1 + cos(pi (e + 1) / (E + 1))) / 2, which is
    # below the base lr from the first epoch; MoCo and cRT start at the base lr.
    from methods import METHODS
    from utils.config import OptimConfig
    from utils.engine import learning_rate

    optim = OptimConfig(lr=0.2, epochs=9, warmup_epochs=0, cosine=True, milestones=())
    for name in METHODS.names():
        keeps = METHODS.get(name).warmup_cosine_without_warmup
        assert keeps == (name in ("lcsl", "bccl")), name
        first, middle = (learning_rate(optim, epoch, keeps) for epoch in (0, 4))
        if keeps:
            assert first == pytest.approx(0.2 * (1 + math.cos(math.pi / 10)) / 2)  # 0.1951
            assert middle == pytest.approx(0.1)  # (4 + 1) / (9 + 1) of the half cosine
        else:
            assert first == pytest.approx(0.2)
            assert middle == pytest.approx(0.2 * (1 + math.cos(math.pi * 4 / 9)) / 2)  # 0.1174
