"""Every registered method through the DataParallel code path (``--gpu 0,1``).

Without CUDA, ``nn.DataParallel`` runs its module directly, so these tests cannot check the
scatter / gather itself; they check the plumbing around it: each method's step and ``predict``
run through the wrappers (no attribute read through a wrapper, no wrapper in the state dict),
give the numbers of the unwrapped method, and evaluation goes through a DataParallel wrapper.
"""
import pytest
import torch
import torch.nn as nn

from methods import METHODS, build_method
from models import build_model
from utils import dist

COUNTS = [6, 3, 1]
# MoCo: one BatchNorm group on one device equals DataParallel's per-GPU BatchNorm only when the
# "GPUs" are one (CPU pass-through), so the single-device run uses bn_splits=1 to compare.
OPTIONS = {"bccl": {"feat_dim": 8, "queue_size": 6, "num_centroids": 2},
           "moco": {"dim": 4, "queue_size": 8, "bn_splits": 1}, "lcsl": {"arch": "resnet32"}}
DATA_PARALLEL = dist.DeviceContext(torch.device("cpu"), data_parallel_ids=[0, 1])
SINGLE = dist.DeviceContext(torch.device("cpu"))


def wrapped(name, ctx):
    torch.manual_seed(0)
    method = build_method(name, build_model("resnet32", len(COUNTS)), COUNTS, **OPTIONS.get(name, {}))
    method.wrap(lambda net: dist.wrap_network(net, ctx), lambda net: dist.wrap_forward_only(net, ctx))
    return method


@pytest.mark.parametrize("name", METHODS.names())
def test_method_step_and_predict_through_data_parallel(name):
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(6, 3, 8, 8, generator=generator) for _ in range(2)]
    targets = torch.tensor([0, 0, 1, 2, 0, 1])
    outputs = {}
    for label, ctx in (("dp", DATA_PARALLEL), ("single", SINGLE)):
        method = wrapped(name, ctx)
        method.train()
        method.on_epoch_start(0)
        views = tuple(images[:method.num_views]) if method.num_views > 1 else images[0]
        torch.manual_seed(2)  # methods that draw (mixup, rotations, key shuffles) draw alike
        out = method.training_step(views, targets, 0)
        out["loss"].backward()
        method.eval()
        outputs[label] = (out["loss"].detach(), method.predict(images[0]), method.state_dict())
    dp_loss, dp_logits, dp_state = outputs["dp"]
    loss, logits, state = outputs["single"]
    torch.testing.assert_close(dp_loss, loss)
    torch.testing.assert_close(dp_logits, logits)
    assert dp_logits.shape == (6, len(COUNTS))
    assert dp_state.keys() == state.keys() and not any("module." in key for key in dp_state)


def test_evaluation_goes_through_data_parallel():
    # The classifier is the trained network (ERM): predict reuses the training wrapper.
    erm = wrapped("erm", DATA_PARALLEL)
    assert isinstance(erm._eval_network, nn.DataParallel) and erm._eval_network is erm._network
    # A different trained network (BCCL's two-view network): the classifier gets its own wrapper.
    bccl = wrapped("bccl", DATA_PARALLEL)
    assert isinstance(bccl._eval_network, nn.DataParallel) and bccl._eval_network.module is bccl.classifier()
    # One device: no wrapper at all.
    for name in ("erm", "bccl"):
        single = wrapped(name, SINGLE)
        assert single._eval_network is single.classifier()


def test_gpu_ids_under_torchrun_are_named_as_ignored(monkeypatch, capsys):
    # torchrun gives each process the GPU of its LOCAL_RANK: a --gpu list would silently not be
    # the GPUs used, so rank 0 says so (the other ranks stay quiet).
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # no process group needed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ctx = dist.setup_devices("2,3")
    assert (ctx.rank, ctx.world_size) == (0, 2)
    assert "warning: --gpu 2,3 is ignored under torchrun" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    dist.setup_devices("2,3")
    dist.setup_devices(None)
    assert capsys.readouterr().err == ""
