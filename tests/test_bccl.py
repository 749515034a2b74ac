"""BCCL: its losses against hand-computed values, the class queues, batched k-means, checkpoints,
the command line, resume, DDP gathering, and the paper's command end to end."""
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import main as main_script
import test as test_script
from conftest import run_entry
from datasets.augment import build_views
from losses import LOSSES
from losses.supcon import centroid_loss, class_averaged_supcon
from methods import build_method
from methods.bccl import BCCL, ClassQueues
from models import build_model
from utils.checkpoint import build_payload, load_checkpoint, save_atomic
from utils.config import ConfigError
from utils.kmeans import batched_kmeans
from utils.runner import run_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Subprocesses run single-threaded: the test machines share two cores, and oversubscribed
# OpenMP threads there make a run several times slower, not faster.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PAPER_COMMAND = ["--dataset", "cifar10", "--arch", "resnet32", "--epochs", "200", "--temp", "0.1", "--lr", "0.15",
                 "--use-norm", "True", "--wd", "5e-4", "--cos", "True", "-b", "128", "--feat_dim", "128", "--tb_save"]

# Four unit vectors in the plane: two images x two views, view-major as the losses flatten them.
A0, A1, A2, A3 = (1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, 0.6)


def two_view_batch():
    """Images 0 and 1 (labels 0 and 1); view 1 = A0, A1, view 2 = A2, A3. Features: N x V x D."""
    features = torch.tensor([[A0, A2], [A1, A3]])
    return features, torch.tensor([0, 1])


@pytest.fixture
def one_thread():
    """Trains in-process on one thread, as SUBPROCESS_ENV does for subprocesses."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def parse(*argv):
    return main_script.get_args_parser().parse_args(list(argv))


# ---- losses --------------------------------------------------------------------------------------
def test_supcon_two_views_hand_computed():
    # Anchors A0 (y 0), A1 (y 1), A2 (y 0), A3 (y 1); one image per class, so every weight
    # b_c - [positive] is 0 -> 1 or 1: plain SupCon. Dots / T (T = 0.5):
    # A0.A1 = 0 -> 0, A0.A2 = .6 -> 1.2, A0.A3 = .8 -> 1.6, A1.A2 = .8 -> 1.6, A1.A3 = .6 -> 1.2, A2.A3 = .96 -> 1.92
    l0 = -(1.2 - math.log(math.exp(0.0) + math.exp(1.2) + math.exp(1.6)))  # positive A2
    l1 = -(1.2 - math.log(math.exp(0.0) + math.exp(1.6) + math.exp(1.2)))  # positive A3
    l2 = -(1.2 - math.log(math.exp(1.2) + math.exp(1.6) + math.exp(1.92)))  # positive A0
    l3 = -(1.2 - math.log(math.exp(1.6) + math.exp(1.2) + math.exp(1.92)))  # positive A1
    features, labels = two_view_batch()
    loss = class_averaged_supcon(features, labels, temperature=0.5)
    assert loss.item() == pytest.approx((l0 + l1 + l2 + l3) / 4, rel=1e-6)


def test_supcon_class_averaging_hand_computed():
    # One view, labels 0, 0, 0, 1: b_0 = 3, b_1 = 1. For a class-0 anchor a class-0 term is divided
    # by b_0 - 1 = 2 and the class-1 term by b_1 = 1; the class-1 anchor has no positive -> 0.
    # z = A0, (0.6, 0.8), (0, 1), (-0.6, 0.8); dots / 0.5: 01 1.2, 02 0, 03 -1.2, 12 1.6, 13 0.56, 23 1.6.
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.6, 0.8]]).unsqueeze(1)  # 4 x 1 x 2
    d0 = math.exp(1.2) / 2 + math.exp(0.0) / 2 + math.exp(-1.2)
    d1 = math.exp(1.2) / 2 + math.exp(1.6) / 2 + math.exp(0.56)
    d2 = math.exp(0.0) / 2 + math.exp(1.6) / 2 + math.exp(1.6)
    l0 = -((1.2 - math.log(d0)) + (0.0 - math.log(d0))) / 2
    l1 = -((1.2 - math.log(d1)) + (1.6 - math.log(d1))) / 2
    l2 = -((0.0 - math.log(d2)) + (1.6 - math.log(d2))) / 2
    loss = class_averaged_supcon(features, torch.tensor([0, 0, 0, 1]), temperature=0.5)
    assert loss.item() == pytest.approx((l0 + l1 + l2 + 0.0) / 4, rel=1e-6)


def test_supcon_two_views_two_images_of_a_class_hand_computed():
    # Labels (0, 0, 1), two views: b_0 = 2, b_1 = 1. Anchors in view-major order, T = 1:
    # A0 (1, 0) y0, A1 (0, 1) y0, A2 (.6, .8) y1 | A3 (.8, .6) y0, A4 (-.6, .8) y0, A5 (.8, -.6) y1.
    # Dots: 01 0, 02 .6, 03 .8, 04 -.6, 05 .8, 12 .8, 13 .6, 14 .8, 15 -.6, 23 .96, 24 .28, 25 0,
    # 34 0, 35 .28, 45 -.96. A class-0 anchor divides every term by 1 (b_0 - 1 for its three
    # positives, b_1 for the class-1 ones); a class-1 anchor divides its positive (the other view)
    # by max(b_1 - 1, 1) = 1 and the four class-0 terms by b_0 = 2.
    e = math.exp
    d0 = e(0) + e(.6) + e(.8) + e(-.6) + e(.8)
    d1 = e(0) + e(.8) + e(.6) + e(.8) + e(-.6)
    d3 = e(.8) + e(.6) + e(.96) + e(0) + e(.28)
    d4 = e(-.6) + e(.8) + e(.28) + e(0) + e(-.96)
    d2 = e(0) + (e(.6) + e(.8) + e(.96) + e(.28)) / 2
    d5 = e(0) + (e(.8) + e(-.6) + e(.28) + e(-.96)) / 2
    per_anchor = [math.log(d0) - (0 + .8 - .6) / 3, math.log(d1) - (0 + .6 + .8) / 3, math.log(d2) - 0,
                  math.log(d3) - (.8 + .6 + 0) / 3, math.log(d4) - (-.6 + .8 + 0) / 3, math.log(d5) - 0]
    features = torch.tensor([[[1.0, 0.0], [0.8, 0.6]], [[0.0, 1.0], [-0.6, 0.8]], [[0.6, 0.8], [0.8, -0.6]]])
    loss = class_averaged_supcon(features, torch.tensor([0, 0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx(sum(per_anchor) / 6, rel=1e-6)


def test_supcon_matches_a_loop_over_anchors():
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(6, 2, 5, generator=generator), dim=2)
    labels = torch.tensor([0, 2, 0, 1, 0, 2])
    anchors = features.transpose(0, 1).reshape(12, 5).tolist()
    anchor_labels = labels.repeat(2).tolist()
    per_class = {c: labels.tolist().count(c) for c in set(labels.tolist())}
    total = 0.0
    for i in range(12):
        dots = [sum(a * b for a, b in zip(anchors[i], anchors[j])) / 0.1 for j in range(12)]
        positives = [j for j in range(12) if j != i and anchor_labels[j] == anchor_labels[i]]
        weights = [per_class[anchor_labels[j]] - (j in positives) or 1 for j in range(12)]
        log_denominator = math.log(sum(math.exp(dots[j]) / weights[j] for j in range(12) if j != i))
        total += -sum(dots[p] - log_denominator for p in positives) / max(len(positives), 1)
    assert class_averaged_supcon(features, labels, 0.1).item() == pytest.approx(total / 12, rel=1e-5)


def test_centroid_loss_hand_computed():
    # Centroids: class 0 (1, 0), (0, .5); class 1 (0, 1), (-.5, 0). s = z.mu per column (c, k):
    # A0 y0: [1, 0, 0, -.5]    -> -(1 + 0) + (0 - .5)  = -1.5
    # A1 y1: [0, .5, 1, 0]     -> -(1 + 0) + (0 + .5)  = -0.5
    # A2 y0: [.6, .4, .8, -.3] -> -(.6 + .4) + (.8 - .3) = -0.5
    # A3 y1: [.8, .3, .6, -.4] -> -(.6 - .4) + (.8 + .3) =  0.9   sum -1.6 over 4 x 2 x 2 entries
    centroids = torch.tensor([[[1.0, 0.0], [0.0, 0.5]], [[0.0, 1.0], [-0.5, 0.0]]])
    features, labels = two_view_batch()
    loss = centroid_loss(features, labels, centroids)
    assert loss.item() == pytest.approx(-1.6 / 16, rel=1e-6)
    # The reference's own expression, -mean(log(exp(s * m) / exp(s * (1 - m)))), gives the same.
    rows = [([1, 0, 0, -0.5], 0), ([0, 0.5, 1, 0], 1), ([0.6, 0.4, 0.8, -0.3], 0), ([0.8, 0.3, 0.6, -0.4], 1)]
    terms = [math.log(math.exp(s * (k // 2 == y)) / math.exp(s * (k // 2 != y)))
             for s_row, y in rows for k, s in enumerate(s_row)]
    assert loss.item() == pytest.approx(-sum(terms) / len(terms), rel=1e-6)


def test_logit_adjusted_ce_with_uniform_prior_is_ce():
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    uniform = LOSSES.build("logit_adjust", class_counts=[7, 7, 7], tau=1.0)
    assert uniform(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    # a skewed prior's value is checked by hand in test_losses.py


# ---- queues ---------------------------------------------------------------------------------------
def test_queue_wraps_around_keeping_features_with_their_labels():
    queues = ClassQueues(num_classes=3, size=4, dim=2)
    history = {0: [], 1: [], 2: []}
    # Feature = (running id, label); class 0 gets 6 > 4 entries in one push (the newest 4 must win).
    pushes = [[0, 0, 1], [1, 1, 1, 0, 2], [0, 0, 0, 0, 0, 0, 1], [2, 1]]
    next_id = 0
    for labels in pushes:
        ids = list(range(next_id, next_id + len(labels)))
        next_id += len(labels)
        queues.push(torch.tensor([[i, c] for i, c in zip(ids, labels)], dtype=torch.float), torch.tensor(labels))
        for i, c in zip(ids, labels):
            history[c].append(i)
    features, labels = queues.entries()
    assert torch.equal(features[:, 1].long(), labels)  # every feature sits in its own class's queue
    for c in range(3):
        assert features[labels == c, 0].long().tolist() == history[c][-4:]  # newest 4, oldest first
    assert queues.count.tolist() == [4, 4, 2]
    assert queues.valid_mask().sum(1).tolist() == [4, 4, 2]


# ---- k-means ---------------------------------------------------------------------------------------
def planted(classes=3, clusters=4, per_cluster=25, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = 5 * torch.randn(classes, clusters, dim, generator=generator)
    noise = 0.1 * torch.randn(classes, clusters, per_cluster, dim, generator=generator)
    points = (centres.unsqueeze(2) + noise).reshape(classes, clusters * per_cluster, dim)
    return centres, points[:, torch.randperm(clusters * per_cluster, generator=generator)]


def test_kmeans_recovers_planted_clusters_in_every_class_at_once():
    centres, points = planted()
    valid = torch.ones(points.shape[:2], dtype=torch.bool)
    valid[2, 70:] = False  # a partially filled queue: padding must not move its centroids
    points[2, 70:] = 1e3
    result = batched_kmeans(points, valid, 4, generator=torch.Generator().manual_seed(0), init="kmeans++")
    for c in range(3):
        error = torch.cdist(result.centroids[c], centres[c]).min(1).values
        assert error.max() < 0.2, (c, error)
        assert len(set(torch.cdist(centres[c], result.centroids[c]).argmin(1).tolist())) == 4
    assert (result.assignments[2, 70:] == -1).all() and result.num_points.tolist() == [100, 100, 70]
    again = batched_kmeans(points, valid, 4, generator=torch.Generator().manual_seed(0), init="kmeans++")
    assert torch.equal(result.centroids, again.centroids)  # deterministic under a seed
    random_init = batched_kmeans(points, valid, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(random_init.centroids,
                       batched_kmeans(points, valid, 4, generator=torch.Generator().manual_seed(0)).centroids)


def test_kmeans_reseeds_empty_clusters_at_the_farthest_point():
    # Four copies of (1, 1) and one (10, 1): drawing two copies as initial centroids leaves one
    # cluster empty (ties go to the first); 20 classes make that certain to happen somewhere.
    # kmeans-gpu would set it to the zero vector; the farthest point, (10, 1), is where it belongs.
    single = torch.tensor([[1.0, 1.0]] * 4 + [[10.0, 1.0]])
    points = single.expand(20, 5, 2).contiguous()
    result = batched_kmeans(points, torch.ones(20, 5, dtype=torch.bool), 2, generator=torch.Generator().manual_seed(3))
    for c in range(20):
        assert sorted(result.centroids[c].tolist()) == [[1.0, 1.0], [10.0, 1.0]]


def test_kmeans_sparse_convergence_checks_give_the_same_centroids():
    # check_every > 1 (the GPU default) reads the convergence flags every few iterations and
    # re-seeds unconditionally; frozen converged classes must keep the centroids of check_every=1,
    # including the empty-cluster case above and a class with fewer points than clusters.
    _, planted_points = planted()
    single = torch.tensor([[1.0, 1.0]] * 4 + [[10.0, 1.0]]).expand(3, 5, 2)
    cases = [(planted_points, 4), (torch.cat([single, torch.zeros(3, 95, 2)], 1), 2)]
    for points, clusters in cases:
        valid = torch.ones(points.shape[:2], dtype=torch.bool)
        valid[1, 3:] = False
        every, sparse = (batched_kmeans(points, valid, clusters, generator=torch.Generator().manual_seed(3),
                                        check_every=k) for k in (1, 8))
        assert torch.equal(every.centroids, sparse.centroids)
        assert torch.equal(every.assignments, sparse.assignments)
        assert sparse.iterations >= every.iterations and sparse.iterations % 8 == 0 or sparse.iterations == 100


def test_kmeans_with_fewer_points_than_clusters():
    points = torch.arange(30, dtype=torch.float).view(3, 5, 2)
    valid = torch.tensor([[True, True, False, False, False], [False] * 5, [True] * 5])
    result = batched_kmeans(points, valid, 5, generator=torch.Generator().manual_seed(0))
    few = result.centroids[0].tolist()  # 2 points for 5 centroids: both, repeated cyclically
    assert sorted(map(tuple, few[:2])) == [(0.0, 1.0), (2.0, 3.0)] and few[2:] == [few[0], few[1], few[0]]
    assert result.num_points.tolist() == [2, 0, 5] and (result.centroids[1] == 0).all()
    assert sorted(map(tuple, result.centroids[2].tolist())) == [tuple(p) for p in points[2].tolist()]


# ---- the method ------------------------------------------------------------------------------------
def tiny_method(**options):
    torch.manual_seed(0)
    model = build_model("resnet32", num_classes=3, head="normed", scale=1 / 0.03)
    return build_method("bccl", model, [6, 3, 1], **{"feat_dim": 8, "queue_size": 6, "num_centroids": 2, **options})


def tiny_batch(step):
    generator = torch.Generator().manual_seed(step)
    views = [torch.randn(6, 3, 8, 8, generator=generator) for _ in range(2)]
    return views, torch.tensor([0, 0, 1, 2, 0, 1])


def test_cosine_head_starts_as_bccls_and_ldams_stays_unit():
    torch.manual_seed(1)
    method = build_method("bccl", build_model("resnet32", 10, head="normed", scale=1 / 0.03), [50] * 10)
    norms = method.model.head.weight.detach().norm(dim=1)
    assert (norms <= 5 + 1e-5).all() and float(norms.mean()) > 4.0  # BCCL: clipped to 5, ~4.6
    ldam = build_model("resnet32", 10, head="normed")  # LDAM-DRW's cosine head: unit rows
    torch.testing.assert_close(ldam.head.weight.norm(dim=1), torch.ones(10))


def test_training_step_queues_centroids_and_gradients(one_thread):
    method = tiny_method(warmup_epochs=1, kmeans_every=10)
    method.train()
    out = method.training_step(*tiny_batch(0), epoch=0)  # warm-up: no centroid loss
    assert set(out["parts"]) == {"loss/ce", "loss/scl"} and out["logits"].shape == (6, 3)
    out["loss"].backward()
    assert method.projector[0].weight.grad is not None and method.model.head.weight.grad is not None
    assert method.queues.count.tolist() == [6, 4, 2]  # both views of every image were queued
    out = method.training_step(*tiny_batch(1), epoch=1)  # first epoch after warm-up: re-clustered
    assert "loss/centroid" in out["parts"] and torch.isfinite(out["loss"])
    assert int(method.kmeans_runs) == 1 and (method.centroids.norm(dim=2) > 0).all()
    before = method.centroids.clone()
    method.training_step(*tiny_batch(2), epoch=2)  # 2 % 10 != 0: the centroids stay
    assert int(method.kmeans_runs) == 1 and torch.equal(method.centroids, before)
    method.training_step(*tiny_batch(3), epoch=10)  # every step of epoch 10 re-clusters
    method.training_step(*tiny_batch(4), epoch=10)
    assert int(method.kmeans_runs) == 3


def test_total_loss_weighs_its_parts_and_the_classifier_learns_from_view_one(one_thread):
    # loss = alpha * SCL + beta * CE + ceta * centroid (the reference's weighting), with weights
    # chosen apart from each other and from 1 so a swapped or dropped term shows.
    method = tiny_method(warmup_epochs=0, alpha=0.5, beta=2.0, ceta=0.3)
    method.eval()  # BatchNorm on running statistics, so view 1 alone gives the step's logits
    method.training_step(*tiny_batch(0), epoch=0)  # fills the queues the centroids come from
    views, targets = tiny_batch(1)
    out = method.training_step(views, targets, epoch=0)
    parts = {name.split("/")[1]: float(value) for name, value in out["parts"].items()}
    assert set(parts) == {"ce", "scl", "centroid"} and min(parts.values()) > 0
    assert float(out["loss"].detach()) == pytest.approx(0.5 * parts["scl"] + 2.0 * parts["ce"] + 0.3 * parts["centroid"])
    with torch.no_grad():
        view_one, view_two = method.model(views[0]), method.model(views[1])
    torch.testing.assert_close(out["logits"].detach(), view_one)
    # BCCL's CE is logit-adjusted by the class prior (counts 6:3:1, tau 1), not plain CE.
    adjusted = view_one + torch.log(torch.tensor([0.6, 0.3, 0.1]))
    assert parts["ce"] == pytest.approx(float(F.cross_entropy(adjusted, targets)), rel=1e-5)
    assert parts["ce"] != pytest.approx(float(F.cross_entropy(view_one, targets)), rel=1e-3)
    assert parts["ce"] != pytest.approx(float(F.cross_entropy(view_two + torch.log(torch.tensor([0.6, 0.3, 0.1])),
                                                              targets)), rel=1e-3)


def test_epoch_refresh_mode_clusters_once_per_epoch(one_thread):
    method = tiny_method(warmup_epochs=0, kmeans_refresh="epoch")
    method.train()
    method.training_step(*tiny_batch(0), epoch=0)
    method.on_epoch_start(10)
    for step in range(2):
        method.training_step(*tiny_batch(step + 1), epoch=10)
    assert int(method.kmeans_runs) == 1


def test_checkpoint_round_trip_restores_queues_and_centroids(tmp_path, one_thread):
    from methods import rebuild

    method = tiny_method(warmup_epochs=0)
    method.train()
    for step in range(3):
        method.training_step(*tiny_batch(step), epoch=0)
    path = str(tmp_path / "last.pth")
    model_kwargs = {"arch": "resnet32", "num_classes": 3, "head": "normed", "scale": 1 / 0.03}
    save_atomic(build_payload(method_name="bccl", method_kwargs=method.init_kwargs, model_kwargs=model_kwargs,
                              dataset={"train_counts": [6, 3, 1]}, config={}, state_dict=method.state_dict(),
                              epoch=1), path)
    restored = rebuild(load_checkpoint(path))  # strict load, as test.py does
    assert isinstance(restored, BCCL)
    for name in ("queues.features", "queues.ptr", "queues.count", "centroids", "kmeans_runs"):
        assert torch.equal(restored.state_dict()[name], method.state_dict()[name]), name
    assert int(restored.kmeans_runs) == 3 and restored.queues.count.tolist() == [6, 6, 6]


# ---- command line and views -------------------------------------------------------------------------
def test_paper_command_gives_the_bccl_recipe():
    config, label = main_script.build_config(parse(*PAPER_COMMAND))
    optim = config.optim
    assert config.method == "bccl" and label == "bccl" and config.drop_last
    assert (optim.lr, optim.weight_decay, optim.warmup_epochs, optim.cosine) == (0.15, 5e-4, 10, True)
    assert optim.epochs == 200
    assert config.head == "normed" and config.head_scale == pytest.approx(1 / 0.03)
    assert config.train_aug == ("autoaug", "simclr") and config.run.seed == 42 and config.batch_size == 128
    options = config.method_options
    assert (options["temperature"], options["feat_dim"]) == (0.1, 128)
    assert (options["queue_size"], options["num_centroids"], options["warmup_epochs"]) == (100, 5, 10)
    # BCCL's own spellings of the large benchmarks (myparser.py: imagenet, inat) name them.
    imagenet, _ = main_script.build_config(parse("--dataset", "imagenet", "--temp", "0.07", "--feat_dim", "2048"))
    assert imagenet.dataset == "imagenet_lt" and imagenet.arch == "resnext50"
    assert imagenet.train_aug == ("simclr", "simclr") and imagenet.method_options["feat_dim"] == 2048
    assert main_script.build_config(parse("--dataset", "inat"))[0].dataset == "inat2018"
    with pytest.raises(SystemExit):
        parse("--dataset", "imagenet1k")


@pytest.mark.parametrize("views,recipes", [("sim-sim", ("autoaug", "simclr")), ("sim-rand", ("randaug", "simclr")),
                                           ("rand-rand", ("randaug", "randaug"))])
def test_every_view_pair_builds_and_runs(views, recipes):
    uses_randaug = "rand" in views
    config, _ = main_script.build_config(parse("--cl_views", views, *(["--randaug_n", "3"] if uses_randaug else [])))
    assert config.train_aug == recipes
    assert config.aug_options == ({"randaug_n": 3, "randaug_m": 10} if uses_randaug else {})
    transform = build_views(list(config.train_aug), "cifar", 32, **config.aug_options)
    outputs = transform(Image.new("RGB", (32, 32), (120, 40, 200)))
    assert len(outputs) == 2 and all(o.shape == (3, 32, 32) and o.dtype == torch.uint8 for o in outputs)


@pytest.mark.parametrize("argv,fragment", [
    (("--cl_views", "sim-rand", "--randaug", "False"), "--randaug"),
    (("--randaug_m", "5"), "--randaug_n/--randaug_m"),
    (("--use_norm", "False", "--head_scale", "10"), "--head_scale"),
])
def test_contradictory_flags_are_config_errors(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        main_script.build_config(parse(*argv))


# ---- end to end ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_paper_command_smoke_run_then_test_script(tmp_path, capsys):
    run = str(tmp_path / "run")
    extra = ["--epochs", "2", "--limit_batches", "3", "--dataset", "cifar10_sample", "--workers", "0",
             "--out_dir", run, "--progress", "False", "-b", "32", "--eval_interval", "2"]
    result = subprocess.run([sys.executable, "main.py", *PAPER_COMMAND, *extra], cwd=ROOT, env=SUBPROCESS_ENV,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.load(open(os.path.join(run, "results.json")))
    assert results["method"] == "bccl" and results["last"]["epoch"] == 2
    assert 0.0 <= results["last"]["top1"] <= 100.0 and math.isfinite(results["last"]["nll"])
    summary_path = str(tmp_path / "eval.json")
    code, _, err = run_entry(test_script, "test.py", ["--path", run, "--workers", "0", "--json", summary_path], capsys)
    assert code == 0, err[-2000:]
    summary = json.load(open(summary_path))
    assert summary["epoch"] == 2 and summary["top1"] == pytest.approx(results["last"]["top1"])


def test_resume_continues_queues_and_centroids_exactly(cifar10_root, tmp_path, one_thread):
    def config(out_dir, *extra):
        argv = ["--dataset", "cifar10", "--data_root", cifar10_root.root, "--imb_factor", "0.1", "--download",
                "False", "--epochs", "2", "--warmup_epochs", "1", "-b", "16", "--limit_batches", "2",
                "--workers", "0", "--progress", "False", "--queue_size", "8", "--out_dir", out_dir, *extra]
        return main_script.build_config(parse(*argv))[0]

    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    run_training(config(straight), "bccl")
    run_training(config(interrupted, "--epochs", "1"), "bccl")
    run_training(config(interrupted, "--resume", "auto"), "bccl")
    a = load_checkpoint(os.path.join(straight, "last.pth"))["state_dict"]
    b = load_checkpoint(os.path.join(interrupted, "last.pth"))["state_dict"]
    assert int(a["kmeans_runs"]) == 2  # epoch 1 (the first after warm-up) re-clustered at both steps
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


# ---- DDP: gathered features give the single-process loss, gradient and queue input -------------------
# Each rank is a plain `python -c` process importing only what the BCCL step uses across ranks
# (spawning workers from this module would import the whole toolkit twice more).
DDP_RANK = """
import os, sys
import torch
import torch.distributed as dist
from losses.supcon import class_averaged_supcon
from utils.dist import gather_no_grad, gather_with_grad

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
features, labels = torch.load(sys.argv[1])
share = features.shape[0] // world
local = features[rank * share:(rank + 1) * share].clone().requires_grad_(True)
gathered = gather_with_grad(local)  # as BCCL.training_step gathers z ...
all_labels = gather_no_grad(labels[rank * share:(rank + 1) * share])  # ... and the labels
loss = class_averaged_supcon(gathered, all_labels, 0.1)
loss.backward()
# DDP averages gradients over ranks: for this input that is the all-gathered gradient / world.
grad = gather_no_grad(local.grad) / world
torch.save({"loss": loss.item(), "grad": grad, "pushed": (gathered.detach(), all_labels)}, f"{sys.argv[2]}.{rank}")
dist.destroy_process_group()
"""


def run_two_gloo_ranks(script, inputs, out):
    """``python -c script inputs out`` as ranks 0 and 1 of a gloo group on a free local port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [subprocess.Popen([sys.executable, "-c", script, inputs, out], cwd=ROOT, stderr=subprocess.PIPE,
                              env={**SUBPROCESS_ENV, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": str(port)}) for rank in range(2)]
    for process in ranks:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()[-2000:]


DDP_METHOD_RANK = """
import sys
import torch
import torch.distributed as dist
from methods import build_method
from models import build_model

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
views, targets = torch.load(sys.argv[1])
torch.manual_seed(0)  # tiny_method's weights, on every rank
model = build_model("resnet32", num_classes=3, head="normed", scale=1 / 0.03)
method = build_method("bccl", model, [6, 3, 1], feat_dim=8, queue_size=6, num_centroids=2, warmup_epochs=1)
method.eval()  # BatchNorm on running statistics: an image's embedding does not depend on its batch
share = targets.shape[0] // world
mine = slice(rank * share, (rank + 1) * share)
out = method.training_step([view[mine] for view in views], targets[mine], epoch=0)
torch.save({"scl": float(out["parts"]["loss/scl"]), "queues": method.queues.state_dict()}, f"{sys.argv[2]}.{rank}")
dist.destroy_process_group()
"""


def test_bccl_step_under_ddp_contrasts_and_queues_the_whole_global_batch(tmp_path, one_thread):
    # BCCL.training_step itself on two gloo ranks, each with half the batch: the contrastive loss
    # and the class queues must be those of one process holding the whole batch.
    views, targets = tiny_batch(0)
    inputs, out = str(tmp_path / "inputs.pt"), str(tmp_path / "rank")
    torch.save((views, targets), inputs)
    run_two_gloo_ranks(DDP_METHOD_RANK, inputs, out)
    whole = tiny_method(warmup_epochs=1).eval()
    scl = float(whole.training_step(views, targets, epoch=0)["parts"]["loss/scl"])
    half = tiny_method(warmup_epochs=1).eval()
    half_scl = float(half.training_step([view[:3] for view in views], targets[:3], epoch=0)["parts"]["loss/scl"])
    assert half_scl != pytest.approx(scl, rel=1e-3)  # so a rank contrasting its own half would show
    for rank in range(2):
        result = torch.load(f"{out}.{rank}")
        assert result["scl"] == pytest.approx(scl, rel=1e-5)
        for name, value in whole.queues.state_dict().items():
            torch.testing.assert_close(result["queues"][name], value, rtol=1e-5, atol=1e-6)


def test_gathered_supcon_matches_the_whole_batch_loss_and_gradient(tmp_path):
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(8, 2, 4, generator=generator), dim=2)  # 8 images x 2 views
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 0, 2])
    inputs, out = str(tmp_path / "inputs.pt"), str(tmp_path / "rank")
    torch.save((features, labels), inputs)
    run_two_gloo_ranks(DDP_RANK, inputs, out)
    features.requires_grad_(True)
    loss = class_averaged_supcon(features, labels, 0.1)
    loss.backward()
    for rank in range(2):
        result = torch.load(f"{out}.{rank}")
        assert result["loss"] == pytest.approx(loss.item(), rel=1e-6)
        torch.testing.assert_close(result["grad"], features.grad, rtol=1e-5, atol=1e-7)
        # Every rank pushes the whole global batch, so every rank's queues stay identical.
        assert torch.equal(result["pushed"][0], features.detach()) and torch.equal(result["pushed"][1], labels)
