"""Semi-/self-supervised pieces (Yang & Xu, NeurIPS 2020): rotation batches, pseudo-label files and
D_U selection, pre-trained loading, the MoCo queue, cRT, SVHN-LT, and the pipelines end to end."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import types
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main as main_script
from conftest import run_entry, write_cifar
from datasets import DATASETS, DataOptions, DatasetError, ImageSource, LongTailData
from datasets import semi
from datasets.longtail import class_counts
from methods import build_method
from methods.rotation import rotate_images, rotation_labels
from models import build_model
from utils.checkpoint import CheckpointError, build_payload, save_atomic
from utils.cli import run_guarded
from utils.config import ConfigError
from utils.pretrained import load_pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = [20, 10, 5]


class ListLogger:
    def __init__(self, run_dir=None):
        self.run_dir, self.messages = run_dir, []

    def info(self, message):
        self.messages.append(message)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: on a shared CPU, intra-op threads only add synchronisation (often 10x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def erm(arch="resnet32", counts=COUNTS):
    return build_method("erm", build_model(arch, len(counts)), counts)


# ---- rotation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3, 8, 33])
def test_rotation_labels_are_a_shuffled_balanced_list(batch):
    labels = rotation_labels(batch, torch.Generator().manual_seed(batch))
    counts = torch.bincount(labels, minlength=4)
    assert labels.shape == (batch,) and counts.sum() == batch
    assert counts.max() - counts.min() <= 1 if batch >= 4 else counts.max() <= 1


def test_rotation_labels_are_shuffled_by_the_generator():
    in_order = torch.arange(4).repeat(9)[:33]
    orders = [rotation_labels(33, torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert not torch.equal(orders[0], in_order) and not torch.equal(orders[0], orders[1])
    torch.testing.assert_close(rotation_labels(33, torch.Generator().manual_seed(1)), orders[0])  # seeded


def test_rotate_images_matches_rot90_image_by_image():
    images, labels = torch.randn(7, 3, 5, 5), torch.tensor([0, 1, 2, 3, 3, 1, 0])
    rotated = rotate_images(images, labels)
    for i in range(7):
        torch.testing.assert_close(rotated[i], torch.rot90(images[i], int(labels[i]), [1, 2]))
    square = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).expand(1, 1, 2, 2)
    # A quarter turn counter-clockwise moves the top-right pixel to the top-left.
    assert rotate_images(square, torch.tensor([1]))[0, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]


def test_rotation_step_feeds_rotated_images_with_their_labels():
    method = build_method("rotation", build_model("resnet32", 3), COUNTS)
    images, targets = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    seen = []
    method.model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    torch.manual_seed(5)
    expected = rotation_labels(8)
    torch.manual_seed(5)
    out = method.training_step(images, targets, epoch=0)
    torch.testing.assert_close(seen[0], rotate_images(images, expected))
    torch.testing.assert_close(out["parts"]["loss/rotation"], torch.nn.functional.cross_entropy(out["logits"], expected))
    assert out["logits"].shape == (8, 4) and torch.isfinite(out["loss"])
    method.eval()
    assert method.predict(images).shape == (8, 3)
    record = method.on_epoch_end(0, {})
    assert 0.0 <= record["method/rotation_top1"] <= 100.0 and method.on_epoch_end(1, {}) == {}


def test_rotation_losses_and_accuracies_of_hand_computed_logits(monkeypatch):
    # Rotation labels (0, 1, 0, 2); the network's rotation logits rows (2,0,0,0), 0, 0, (0,0,3,0):
    #   CE ln(e^2 + 3) - 2 = 0.340757, ln 4 = 1.386294, ln 4, ln(e^3 + 3) - 3 = 0.139208 -> 0.813137;
    #   argmax (0, 0, 0, 2) against (0, 1, 0, 2): 75 %.
    # Probe logits (3 classes), targets (0, 1, 2, 0): only the upright images 0 and 2 count,
    #   CE ln 3 = 1.098612 and ln 4 - ln 2 = 0.693147 -> 0.895880 (rows 1 and 3 would change it).
    import methods.rotation as rotation

    method = build_method("rotation", build_model("resnet32", 3), COUNTS)
    rotation_logits = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 3.0, 0]])
    probe_logits = torch.tensor([[0.0, 0, 0], [5.0, 0, 0], [0, 0, math.log(2)], [9.0, 0, 0]])
    monkeypatch.setattr(rotation, "rotation_labels", lambda batch, generator=None: torch.tensor([0, 1, 0, 2]))
    object.__setattr__(method, "_joint", lambda images: (rotation_logits, probe_logits))
    out = method.training_step(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), epoch=0)
    parts = {name: float(value) for name, value in out["parts"].items()}
    assert parts["loss/rotation"] == pytest.approx(0.813137, abs=1e-6)
    assert parts["loss/probe"] == pytest.approx(0.895880, abs=1e-6)
    assert parts["acc/rotation"] == 75.0 and float(out["loss"]) == pytest.approx(0.813137 + 0.895880, abs=1e-5)
    # Evaluation turns image i by i % 4 quarter turns; a head answering (0, 1, 0, 3) scores 3 of 4.
    evaluated = torch.tensor([[9.0, 0, 0, 0]] * 4 + [[9.0, 0, 0, 0], [0, 9.0, 0, 0], [9.0, 0, 0, 0], [0, 0, 0, 9.0]])
    object.__setattr__(method, "_joint", lambda images: (evaluated, torch.zeros(images.shape[0], 3)))
    method.predict(torch.zeros(4, 3, 8, 8))
    assert method.on_epoch_end(0, {"test": {}})["method/rotation_top1"] == 75.0


# ---- pseudo-label files and D_U ----------------------------------------------------------------------
def pool_of(labels, start=0):
    """Images whose first pixel stores their position, so selections can be read back."""
    images = np.zeros((len(labels), 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(start, start + len(labels))
    return semi.Pool("synthetic", images=images, reference_labels=np.asarray(labels))


def test_rotation_head_is_kaiming_normal_on_resnet32():
    """The reference builds the rotation network as ResNet-32 with 4 outputs, whose
    ``_weights_init`` gives the linear layer Kaiming-normal weights: std sqrt(2 / 64) = 0.177, where
    nn.Linear's default (uniform +-1/8) has std 0.072."""
    torch.manual_seed(0)
    method = build_method("rotation", build_model("resnet32", 10), [50] * 10)
    weight = method.rotation_head.weight.detach()
    assert weight.shape == (4, 64)
    assert abs(float(weight.std()) - (2 / 64) ** 0.5) < 0.03
    assert float(weight.abs().max()) > 1 / 8  # outside nn.Linear's default uniform range


def test_pseudo_label_file_round_trip_threshold_and_overwrite(tmp_path):
    pool, path = pool_of([0, 1, 2, 1]), str(tmp_path / "p.npz")
    pseudo, conf = np.array([0, 2, 2, 1]), np.array([0.9, 0.4, 0.8, 0.99])
    semi.save_pseudo_labels(path, pool, pseudo, conf, num_classes=3, dataset="toy", prediction_model="ckpt.pth")
    entry = semi.load_pseudo_labels(path)
    assert entry["pseudo_labels"].tolist() == [0, 2, 2, 1] and entry["reference_labels"].tolist() == [0, 1, 2, 1]
    np.testing.assert_allclose(entry["confidences"], conf, rtol=1e-6)
    np.testing.assert_array_equal(entry["images"], pool.images)
    assert (entry["prediction_model"], entry["num_classes"], entry["pool_size"]) == ("ckpt.pth", 3, 4)
    with pytest.raises(DatasetError, match="--force"):
        semi.save_pseudo_labels(path, pool, pseudo, conf, num_classes=3, dataset="toy", prediction_model="x")
    semi.save_pseudo_labels(path, pool, pseudo, conf, num_classes=3, dataset="toy", prediction_model="x",
                            threshold=0.8, force=True)
    entry = semi.load_pseudo_labels(path)
    assert entry["pseudo_labels"].tolist() == [0, 2, 1] and entry["images"][:, 0, 0, 0].tolist() == [0, 2, 3]
    assert entry["threshold"] == 0.8 and entry["pool_size"] == 4
    (tmp_path / "bad.npz").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="bad.npz"):
        semi.load_pseudo_labels(str(tmp_path / "bad.npz"))


def test_unlabeled_sizes_by_hand_and_the_papers_numbers():
    # |D_L| = 14, x2 = 28; floor(28 / 3) = 9; 9 * 0.25^(c/2) -> 9, 4, 2 (sum 15); * 28/15 -> 16, 7, 3.
    assert semi.unlabeled_targets_by_rank([8, 4, 2], 0.25, 2) == [16, 7, 3]
    # The head of D_U follows the head of D_L (SVHN-LT's head is digit 1).
    assert semi.unlabeled_targets_by_rank([2, 8, 4], 0.25, 2) == [3, 16, 7]
    labeled = class_counts(5000, 10, "exp", 0.02)  # CIFAR-10-LT rho = 50, |D_L| = 13,996
    assert semi.unlabeled_targets_by_rank(labeled, 0.02, 5) == [24999, 16186, 10477, 6784, 4390, 2843, 1839,
                                                                 1189, 771, 496]
    assert semi.unlabeled_targets_by_rank(labeled, 1.0, 5) == [6998] * 10


def toy_data(counts=(8, 4, 2)):
    targets = np.repeat(np.arange(len(counts)), counts)
    array = np.full((len(targets), 4, 4, 3), 255, dtype=np.uint8)
    return LongTailData("toy", len(counts), ImageSource(targets, array=array), ImageSource(targets, array=array),
                        list(counts), (0.5,) * 3, (0.5,) * 3, 4, train_indices=np.arange(len(targets)))


def test_a_pool_that_adds_no_image_is_refused_with_its_reason(tmp_path):
    path = str(tmp_path / "p.npz")
    semi.save_pseudo_labels(path, pool_of(np.array([0, 1, 2])), np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]),
                            num_classes=3, dataset="toy", prediction_model="m")
    with pytest.raises(DatasetError, match=r"adds no image to D_U: --unlabel_size_factor 0.01 asks for no image"):
        semi.add_pseudo_labeled(toy_data(), path, 1.0, 0.01, log=lambda _: None)
    empty = str(tmp_path / "empty.npz")
    semi.save_pseudo_labels(empty, pool_of(np.array([0, 1, 2])), np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]),
                            num_classes=3, dataset="toy", prediction_model="m", threshold=0.9)
    with pytest.raises(DatasetError, match=r"the file holds no image \(did its --threshold keep none\?\)"):
        semi.add_pseudo_labeled(toy_data(), empty, 1.0, 1, log=lambda _: None)


def test_add_pseudo_labeled_selects_by_reference_and_trains_on_pseudo_labels(tmp_path):
    reference = np.array([0] * 5 + [1] * 10 + [2] * 3)  # class 0 can give 5 of the 16 wanted
    pool, path = pool_of(reference), str(tmp_path / "p.npz")
    pseudo = (reference + 1) % 3
    semi.save_pseudo_labels(path, pool, pseudo, np.ones(18), num_classes=3, dataset="toy", prediction_model="m")
    messages = []
    data = semi.add_pseudo_labeled(toy_data(), path, imb_factor_unlabel=0.25, size_factor=2, seed=0,
                                   log=messages.append)
    chosen = data.train.array[14:, 0, 0, 0].astype(int)
    assert np.bincount(reference[chosen], minlength=3).tolist() == [5, 7, 3]
    assert data.train.targets[14:].tolist() == pseudo[chosen].tolist()
    assert data.train_counts == [8 + 3, 4 + 5, 2 + 7]  # pseudo labels are counted, as the reference does
    assert data.train_indices[14:].tolist() == [-1] * 15 and "0 (5 of 16)" in messages[0]
    again = semi.add_pseudo_labeled(toy_data(), path, 0.25, 2, seed=0, log=messages.append)
    np.testing.assert_array_equal(again.train.array, data.train.array)  # seeded


def test_a_pool_list_in_another_encoding_names_its_line(tmp_path):
    (tmp_path / "pool.txt").write_bytes("a.png 0\ncaf\u00e9.png 1\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"pool.txt:2: byte 0xe9 at column 4 is not UTF-8"):
        semi.image_list_pool(str(tmp_path / "pool.txt"))


def test_folder_and_list_pools_join_file_and_memory_training_sets(tmp_path):
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"{i}.png")
    (tmp_path / "pool.txt").write_text("".join(f"{i}.png {i % 3}\n" for i in range(4)))
    folder, listed = semi.image_folder_pool(str(tmp_path)), semi.image_list_pool(str(tmp_path / "pool.txt"))
    assert len(folder) == 4 and folder.reference_labels is None and listed.reference_labels.tolist() == [0, 1, 2, 0]
    assert semi.decode_pool(listed, 4).images[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    with pytest.raises(DatasetError, match="8x8"):
        semi.decode_pool(listed, 8)
    path = str(tmp_path / "p.npz")
    semi.save_pseudo_labels(path, listed, np.array([2, 2, 1, 0]), np.ones(4), num_classes=3, dataset="toy",
                            prediction_model="m")
    in_memory = semi.add_pseudo_labeled(toy_data(), path, 1.0, 1, log=lambda _: None)
    assert in_memory.train.array.shape == (18, 4, 4, 3) and in_memory.train_counts == [9, 5, 4]
    data = toy_data()
    data.train = ImageSource(data.train.targets, paths=[f"/images/{i}.png" for i in range(14)])
    on_disk = semi.add_pseudo_labeled(data, path, 1.0, 1, log=lambda _: None)
    assert sorted(on_disk.train.paths[14:]) == listed.paths and on_disk.train.paths[:14] == data.train.paths


def test_leftover_pool_of_another_subset_is_refused(tmp_path):
    pool = pool_of([1, 2])
    pool.labeled_indices = np.array([5, 6, 7])
    path = str(tmp_path / "p.npz")
    semi.save_pseudo_labels(path, pool, np.array([1, 2]), np.ones(2), num_classes=3, dataset="toy",
                            prediction_model="m")
    with pytest.raises(DatasetError, match="another long-tailed subset"):
        semi.add_pseudo_labeled(toy_data(), path, 0.25, 2, log=lambda _: None)


def test_leftover_pool_made_without_this_runs_validation_split_is_refused(tmp_path):
    # The validation split comes from the same leftovers: a pool cut without it holds those images.
    without_val = DATASETS.build("cifar10_sample", DataOptions(imb_factor=0.1))
    with_val = DATASETS.build("cifar10_sample", DataOptions(imb_factor=0.1, val_per_class=5))
    pool = semi.leftover_pool(without_val)
    path = str(tmp_path / "p.npz")
    labels = np.zeros(len(pool), dtype=np.int64)
    semi.save_pseudo_labels(path, pool, labels, np.ones(len(pool)), num_classes=10, dataset=without_val.name,
                            prediction_model="m")
    with pytest.raises(DatasetError, match="validation split"):
        semi.add_pseudo_labeled(with_val, path, 0.1, 1, log=lambda _: None)


def test_leftover_pool_made_with_other_validation_images_is_refused(tmp_path):
    # --lt_selection first keeps the labelled subset whatever --lt_seed says, but the validation
    # split is drawn with that seed: a pool of one seed holds the other seed's validation images.
    options = dict(imb_factor=0.1, val_per_class=5, lt_selection="first")
    base = DATASETS.build("cifar10_sample", DataOptions(lt_seed=0, **options))
    other = DATASETS.build("cifar10_sample", DataOptions(lt_seed=1, **options))
    assert np.array_equal(base.train_indices, other.train_indices) and len(base.val) == len(other.val)
    pool = semi.leftover_pool(base)
    assert set(pool.validation_indices) == set(base.val_indices)
    path = str(tmp_path / "p.npz")
    labels = pool.reference_labels.copy()
    semi.save_pseudo_labels(path, pool, labels, np.ones(len(pool)), num_classes=10, dataset=base.name,
                            prediction_model="m")
    with pytest.raises(DatasetError, match=rf"other validation images than this run's \(the same {len(base.val)} "
                                           r"in number; another --lt_seed\?\)"):
        semi.add_pseudo_labeled(other, path, 0.1, 1, log=lambda _: None)
    # The run whose split the pool excluded takes it, and none of its validation images joins D_U.
    added = semi.add_pseudo_labeled(base, path, 0.1, 1, log=lambda _: None)
    assert len(added.train) > len(base.train)
    assert not set(np.asarray(semi.load_pseudo_labels(path)["validation_indices"])) - set(base.val_indices)
    # A file of an earlier version records the split's size only: refused when there is a split.
    pool.validation_indices = None
    semi.save_pseudo_labels(path, pool, labels, np.ones(len(pool)), num_classes=10, dataset=base.name,
                            prediction_model="m", force=True)
    with pytest.raises(DatasetError, match="does not record which images its run's validation split held"):
        semi.add_pseudo_labeled(base, path, 0.1, 1, log=lambda _: None)


# ---- pre-trained loading -----------------------------------------------------------------------------
def backbone_weights(seed=1):
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in build_model("resnet32", 3).backbone.state_dict().items()}


def prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


@pytest.mark.parametrize("case", ["plain_fc", "module", "orig_mod", "moco", "ltkit", "run_folder"])
def test_pretrained_load_strips_every_wrapper(tmp_path, case):
    weights = backbone_weights()
    path = str(tmp_path / "w.pth")
    if case == "plain_fc":
        torch.save({**weights, "fc.weight": torch.randn(4, 64), "fc.bias": torch.randn(4)}, path)
    elif case == "module":  # the paper's DataParallel checkpoint: docs/semi_self.md#loading-pre-trained-weights
        torch.save({"state_dict": prefixed({**weights, "linear.weight": torch.randn(4, 64)}, "module.")}, path)
    elif case == "orig_mod":
        torch.save(prefixed(weights, "_orig_mod."), path)
    elif case == "moco":
        state = {**prefixed(weights, "module.encoder_q."), **prefixed(backbone_weights(2), "module.encoder_k."),
                 "module.encoder_q.fc.0.weight": torch.randn(64, 64), "module.queue": torch.randn(128, 16)}
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        source = build_method("rotation", build_model("resnet32", 3), COUNTS)
        source.model.backbone.load_state_dict(weights)
        path = str(tmp_path / "run" / "last.pth")
        save_atomic(build_payload(method_name="rotation", method_kwargs={}, model_kwargs={}, dataset={}, config={},
                                  state_dict=source.state_dict(), epoch=1), path)
        path = os.path.dirname(path) if case == "run_folder" else path
    method, logger = erm(), ListLogger(str(tmp_path / "new_run"))
    head_before = {k: v.clone() for k, v in method.model.head.state_dict().items()}
    stats = load_pretrained(method, path, logger)
    assert all(torch.equal(v, weights[k]) for k, v in method.model.backbone.state_dict().items())
    assert all(torch.equal(v, head_before[k]) for k, v in method.model.head.state_dict().items())
    assert stats["loaded"] == len(weights) == 186 and "loaded 186 tensors" in logger.messages[0]


@pytest.mark.parametrize("change,message", [
    (lambda w: {"encoder." + k: v for k, v in w.items()}, "none of its"),
    (lambda w: {**w, "conv1.weight": torch.randn(8, 3, 3, 3)}, "shape"),
    (lambda w: {k: v for k, v in w.items() if k != "layer3.4.bn2.weight"}, "not in it"),
    (lambda w: {**w, "layer9.weight": torch.randn(3)}, "neither backbone"),
])
def test_pretrained_load_refuses_partial_or_foreign_weights(tmp_path, change, message):
    path = str(tmp_path / "w.pth")
    torch.save(change(backbone_weights()), path)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(erm(), path, ListLogger())


def test_pretrained_load_refuses_an_unfinished_run_folder_but_takes_its_file(tmp_path):
    weights = backbone_weights()
    source = build_method("rotation", build_model("resnet32", 3), COUNTS)
    source.model.backbone.load_state_dict(weights)
    run = tmp_path / "rotation_run"

    def save(epoch):
        save_atomic(build_payload(method_name="rotation", method_kwargs={}, model_kwargs={}, dataset={},
                                  config={"optim": {"epochs": 200}}, state_dict=source.state_dict(), epoch=epoch),
                    str(run / "last.pth"))

    save(170)
    with pytest.raises(CheckpointError, match="stopped after epoch 170 of 200; finish it first"):
        load_pretrained(erm(), str(run), ListLogger())
    method, logger = erm(), ListLogger()
    load_pretrained(method, str(run / "last.pth"), logger)  # a file: the user chose that epoch
    assert all(torch.equal(v, weights[k]) for k, v in method.model.backbone.state_dict().items())
    assert "from epoch 170 of its run's 200" in logger.messages[-1]
    save(200)
    logger = ListLogger()
    load_pretrained(erm(), str(run), logger)
    assert len(logger.messages) == 1 and "loaded 186 tensors" in logger.messages[0]


def test_pretrained_load_refuses_its_own_run_folder(tmp_path):
    torch.save(backbone_weights(), str(tmp_path / "last.pth"))
    with pytest.raises(CheckpointError, match="own folder"):
        load_pretrained(erm(), str(tmp_path), ListLogger(str(tmp_path)))


# ---- MoCo --------------------------------------------------------------------------------------------
def moco(**options):
    return build_method("moco", build_model("resnet32", 3), COUNTS, **{"dim": 4, "queue_size": 8, **options})


def test_infonce_of_a_hand_computed_case():
    # q = (1, 0), its key (0.6, 0.8), queued keys (0, 1) and (-1, 0), T = 0.2: logits
    # (0.6, 0, -1) / 0.2 = (3, 0, -5), loss -log(e^3 / (e^3 + e^0 + e^-5)) = ln(1 + e^-3 + e^-8).
    from methods.moco import infonce

    loss, logits = infonce(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]]),
                           torch.tensor([[0.0, 1.0], [-1.0, 0.0]]), temperature=0.2)
    torch.testing.assert_close(logits, torch.tensor([[3.0, 0.0, -5.0]]))
    assert float(loss) == pytest.approx(0.048907, abs=1e-6)


def test_moco_queue_wraps_around():
    method = moco()
    start = method.queue.clone()
    batches = [torch.randn(3, 4) for _ in range(3)]
    method.enqueue(batches[0])
    torch.testing.assert_close(method.queue[:3], batches[0])
    torch.testing.assert_close(method.queue[3:], start[3:])
    assert int(method.queue_ptr) == 3
    method.enqueue(batches[1])
    method.enqueue(batches[2])  # rows 6, 7 and then 0
    torch.testing.assert_close(method.queue[3:6], batches[1])
    torch.testing.assert_close(method.queue[[6, 7, 0]], batches[2])
    torch.testing.assert_close(method.queue[1:3], batches[0][1:])
    assert int(method.queue_ptr) == 1
    with pytest.raises(ValueError, match="--moco_k"):
        method.enqueue(torch.randn(9, 4))


def test_moco_key_encoder_is_a_buffer_only_momentum_copy():
    method = moco(momentum=0.5)
    assert not list(method.key_encoder.parameters())
    assert {id(p) for p in method.optim_parameters()}.isdisjoint({id(b) for b in method.key_encoder.buffers()})
    query = method.model.backbone.conv1.weight
    key = method.key_encoder.backbone.conv1.weight
    torch.testing.assert_close(key, query)
    with torch.no_grad():
        query.add_(1.0)
    method.momentum_update()
    torch.testing.assert_close(key, query - 0.5)


def test_moco_step_and_shuffled_keys_keep_their_order():
    method = moco(queue_size=16, bn_splits=2)
    views, targets = (torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)), torch.randint(0, 3, (8,))
    out = method.training_step(views, targets, epoch=0)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and int(method.queue_ptr) == 8
    assert method.key_encoder.backbone.conv1.weight.grad is None
    method.eval()  # batch statistics off: shuffled and plain encodings must agree row by row
    torch.testing.assert_close(method.encode_keys(views[1]), method.key_encoder(views[1]))


def test_moco_step_contrasts_its_query_with_its_key_and_the_queue_before_the_push():
    # The step's loss against InfoNCE written out: -q.k+/T + log(e^(q.k+/T) + sum_j e^(q.n_j/T))
    # with the negatives n_j the queue as it was before this batch's keys were pushed.
    torch.manual_seed(0)
    method = moco(queue_size=16, temperature=0.5).eval()  # running BN statistics: encodings per image
    queue_before = method.queue.clone()
    views, targets = (torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)), torch.randint(0, 3, (8,))
    out = method.training_step(views, targets, epoch=0)
    with torch.no_grad():
        q, probe_logits = method.network(views[0])
        k = method.encode_keys(views[1])
    torch.testing.assert_close(method.queue[:8], k)  # this batch's keys, pushed after the loss
    torch.testing.assert_close(method.queue[8:], queue_before[8:])
    torch.testing.assert_close(q.norm(dim=1), torch.ones(8))
    positive = (q * k).sum(dim=1) / 0.5
    every = torch.cat([positive[:, None], q @ queue_before.t() / 0.5], dim=1)
    expected = float((torch.logsumexp(every, dim=1) - positive).mean())
    assert float(out["parts"]["loss/infonce"]) == pytest.approx(expected, rel=1e-5)
    probe = float(F.cross_entropy(probe_logits, targets))
    assert float(out["loss"].detach()) == pytest.approx(expected + probe, rel=1e-5)


# ---- cRT ---------------------------------------------------------------------------------------------
def test_crt_defaults_follow_each_datasets_cls_crt_config():
    # cls_crt.yaml: ImageNet-LT 10 epochs at wd 5e-4 with colour jitter; iNaturalist 30 epochs at
    # wd 1e-4 without it; both batch 512, lr 0.2, cosine. Flags given win.
    def config(*extra):
        args = main_script.get_args_parser().parse_args(["--method", "crt", "--pretrained_model", "stage1.pth",
                                                         *extra])
        return main_script.build_config(args)[0]

    imagenet, inat = config("--dataset", "imagenet_lt"), config("--dataset", "inat2018")
    assert (imagenet.optim.epochs, imagenet.optim.weight_decay, imagenet.aug_options) == (10, 5e-4, {})
    assert (inat.optim.epochs, inat.optim.weight_decay, inat.aug_options) == (30, 1e-4, {"color_jitter": False})
    assert (inat.optim.lr, inat.batch_size, inat.optim.cosine) == (0.2, 512, True)
    given = config("--dataset", "inat2018", "--epochs", "5", "--color_jitter", "True")
    assert (given.optim.epochs, given.aug_options) == (5, {"color_jitter": True})
    # A recipe without colour jitter gets no such option (it would be refused as not applying).
    assert config("--dataset", "inat2018", "--aug", "randaug").aug_options == {}


def test_crt_trains_the_head_alone():
    method = build_method("crt", build_model("resnet32", 3), COUNTS)
    assert {id(p) for p in method.optim_parameters()} == {id(p) for p in method.model.head.parameters()}
    method.train()
    assert not method.model.backbone.training and method.model.head.training
    out = method.training_step(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), epoch=0)
    out["loss"].backward()
    assert all(p.grad is None for p in method.model.backbone.parameters())


@pytest.mark.parametrize("update_bn", [False, True])
def test_crt_refreshes_backbone_batchnorm_statistics_only_when_asked(update_bn):
    # Default: a fixed representation (BN on its running statistics); --crt_update_bn True: the
    # reference's train-mode backbone, whose statistics follow the new batches (still no gradient).
    torch.manual_seed(0)
    method = build_method("crt", build_model("resnet32", 3), COUNTS, update_bn=update_bn)
    method.train()
    assert method.model.backbone.training == update_bn
    before = method.model.backbone.bn1.running_mean.clone()
    out = method.training_step(torch.randn(4, 3, 8, 8) + 3.0, torch.tensor([0, 1, 2, 0]), epoch=0)
    out["loss"].backward()
    assert all(p.grad is None for p in method.model.backbone.parameters())
    moved = not torch.equal(method.model.backbone.bn1.running_mean, before)
    assert moved == update_bn


# ---- SVHN-LT -----------------------------------------------------------------------------------------
def write_svhn(root, split, per_digit, seed=0):
    from scipy import io as sio

    rng = np.random.default_rng(seed)
    digits = rng.permutation(np.repeat(np.arange(10), per_digit))
    pixels = rng.integers(0, 256, size=(32, 32, 3, len(digits)), dtype=np.uint8)
    os.makedirs(root, exist_ok=True)
    sio.savemat(os.path.join(root, f"{split}_32x32.mat"), {"X": pixels, "y": np.where(digits == 0, 10, digits)[:, None]})
    return digits


def test_svhn_lt_counts_digit_zero_last_and_reference_selection(tmp_path):
    import datasets.svhn_lt as svhn

    profile = class_counts(1000, 10, "exp", 0.01)
    per_digit = [profile[(d - 1) % 10] + 2 for d in range(10)]
    digits = write_svhn(str(tmp_path), "train", per_digit)
    write_svhn(str(tmp_path), "test", [3] * 10)
    data = DATASETS.build("svhn", DataOptions(data_root=str(tmp_path), imb_factor=0.01, download=False))
    assert data.train_counts[1] == 1000 and data.train_counts[0] == 10 and sum(data.train_counts) == 2478
    rng, expected = np.random.RandomState(0), []
    for digit in [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]:  # the reference's class order
        idx = np.where(digits == digit)[0]
        rng.shuffle(idx)
        expected.append(idx[:profile[(digit - 1) % 10]])
    np.testing.assert_array_equal(data.train_indices, np.concatenate(expected))
    assert len(data.unlabeled) == 20 and data.test.array.shape == (30, 32, 32, 3)
    assert svhn.read_svhn_split(str(tmp_path), "test").targets.max() == 9


def test_svhn_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    from datasets.svhn_lt import read_svhn_split

    with pytest.raises(DatasetError, match="download is off"):
        read_svhn_split(str(tmp_path), "extra", download=False)
    calls = []

    def offline(url, root, filename=None, md5=None):
        calls.append((url, filename, md5))
        os.makedirs(root, exist_ok=True)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DatasetError, match="cannot download"):
        read_svhn_split(str(tmp_path), "extra", download=True)
    with pytest.raises(DatasetError, match="cannot download"):  # the folder it made goes with it
        read_svhn_split(str(tmp_path / "svhn"), "extra", download=True)
    assert not os.path.exists(tmp_path / "svhn") and os.path.isdir(tmp_path)
    assert calls[0][0].endswith("extra_32x32.mat") and len(calls[0][2]) == 32
    monkeypatch.setattr(tv_utils, "download_url", lambda url, root, filename=None, md5=None:
                        write_svhn(root, "extra", [2] * 10))
    pool = semi.svhn_extra_pool(str(tmp_path), download=True)
    assert len(pool) == 20 and np.bincount(pool.reference_labels).tolist() == [2] * 10


def test_a_cut_or_empty_svhn_file_is_one_line_that_says_to_fetch_it_again(tmp_path):
    from datasets.svhn_lt import read_svhn_split

    write_svhn(str(tmp_path), "test", [1] * 10)
    path = tmp_path / "test_32x32.mat"
    whole = path.read_bytes()
    for cut in (b"", whole[:100], whole[:len(whole) // 2]):  # scipy: MatReadError, IndexError, OSError
        path.write_bytes(cut)
        with pytest.raises(DatasetError, match=r"cannot read .*test_32x32.mat .*incomplete or damaged; delete it "
                                               r"and run again with --download True"):
            read_svhn_split(str(tmp_path), "test", download=False)


# ---- end to end --------------------------------------------------------------------------------------
def train(capsys, *argv):
    """main.py's own path in this process (real main.py processes run in test_engine and others);
    returns what the run printed."""
    code, out, err = run_entry(main_script, "main.py", argv, capsys)
    assert code == 0, out[-2000:] + err[-2000:]
    return out + err


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Tiny synthetic CIFAR-10 and the flags every run below shares."""
    root = tmp_path_factory.mktemp("semi_self")
    write_cifar(str(root / "data"), 10, 40, 4)
    common = ["--dataset", "cifar10", "--data_root", str(root / "data"), "--download", "False", "--imb_factor",
              "0.1", "--epochs", "1", "--limit_batches", "2", "-b", "32", "--workers", "0", "--progress", "False"]
    return root, common


def gen_script():
    spec = importlib.util.spec_from_file_location("gen_pseudolabels", os.path.join(REPO, "scripts", "gen_pseudolabels.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rotation_then_ce_then_pseudo_labels_then_semi_supervised(smoke, capsys):
    root, common = smoke
    train(capsys, "--method", "rotation", *common, "--out_dir", str(root / "rot"))
    log = train(capsys, "--method", "ce", *common, "--pretrained_model", str(root / "rot"), "--out_dir", str(root / "ce"))
    assert "pretrained: loaded 186 tensors" in log
    out = str(root / "pseudo.npz")
    script = gen_script()
    code, _, err = run_entry(script, "gen_pseudolabels.py", ["--path", str(root / "ce"), "--pool", "leftover",
                                                             "--out", out, "--workers", "0"], capsys)
    assert code == 0, err[-2000:]
    assert len(semi.load_pseudo_labels(out)["pseudo_labels"]) == 400 - 159  # the images the LT cut left out
    with pytest.raises(SystemExit) as stop:  # an existing --out: refused while the flags are read
        script.get_args_parser().parse_args(["--path", str(root / "ce"), "--out", out, "--pool", "leftover"])
    assert stop.value.code == 2 and "pass --force to replace it" in capsys.readouterr().err
    for argv, fragment in ((["--path", str(root / "nope"), "--out", str(root / "new.npz")], "not found"),
                           (["--path", str(root / "rot"), "--out", str(root / "new.npz")], "pre-training run")):
        args = script.get_args_parser().parse_args([*argv, "--pool", "leftover", "--workers", "0"])
        assert run_guarded("gen_pseudolabels.py", lambda: script.main(args)) == 2
        error = capsys.readouterr().err
        assert fragment in error and error.strip().count("\n") == 0
    # A base run that did not finish (here: its results.json gone) is refused as a folder; its
    # last.pth named as a file labels the pool on purpose.
    shutil.copytree(str(root / "ce"), str(root / "ce_cut"), ignore=shutil.ignore_patterns("results.json", ".run.lock"))
    args = script.get_args_parser().parse_args(["--path", str(root / "ce_cut"), "--out", str(root / "cut.npz"),
                                                "--pool", "leftover", "--workers", "0"])
    assert run_guarded("gen_pseudolabels.py", lambda: script.main(args)) == 2
    error = capsys.readouterr().err
    assert error.strip().count("\n") == 0 and "that run has not finished its 1 epochs" in error
    assert f"pass the file {root / 'ce_cut' / 'last.pth'} to label with it on purpose" in error
    assert not os.path.exists(root / "cut.npz")
    args = script.get_args_parser().parse_args(["--path", str(root / "ce_cut" / "last.pth"), "--out",
                                                str(root / "cut.npz"), "--pool", "leftover", "--workers", "0"])
    assert run_guarded("gen_pseudolabels.py", lambda: script.main(args)) == 0 and os.path.isfile(root / "cut.npz")
    capsys.readouterr()
    # The script's real command line once (its own sys.path set-up included): a refusal, which
    # stops before the toolkit's models are imported.
    result = subprocess.run([sys.executable, "scripts/gen_pseudolabels.py", "--path", str(root / "nope"), "--out",
                             str(root / "new.npz"), "--pool", "leftover"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "not found" in result.stderr and result.stderr.count("\n") == 1
    log = train(capsys, "--method", "ce", *common, "--unlabeled", out, "--out_dir", str(root / "semi"))
    assert "pseudo-labelled D_U" in log and "short in classes 0 (0 of" in log  # no head-class leftovers
    with open(root / "semi" / "log.txt") as stream:  # the run's own record of it, not only the console
        assert "short in classes 0 (0 of" in stream.read()
    # rho_U defaults to 100 whatever rho is (--imb_factor 0.1 here), as in the reference's
    # train_semi.py, and the run's config records the value it used.
    result = json.load(open(root / "semi" / "results.json"))
    assert (result["label"], result["imb_factor"], result["imb_factor_unlabel"]) == ("ce_semi", 0.1, 0.01)
    assert json.load(open(root / "semi" / "config.json"))["imb_factor_unlabel"] == 0.01
    # What D_U was drawn from and how many images it added, for the tables.
    assert result["unlabeled_pool"] == "leftover" == semi.pool_kind(out)
    assert result["unlabeled_images"] == sum(result["train_counts"]) - sum(result["labeled_counts"]) > 0


def test_moco_then_crt(smoke, capsys):
    root, common = smoke
    train(capsys, "--method", "moco", *common, "--moco_k", "64", "--out_dir", str(root / "moco"))
    log = train(capsys, "--method", "crt", *common, "--pretrained_model", str(root / "moco"), "--out_dir",
                str(root / "crt"))
    assert "pretrained: loaded 186 tensors" in log
    # cRT on a MoCo backbone is an SSP row; its results carry the label the tables group by.
    assert json.load(open(root / "crt" / "results.json"))["label"] == "crt_ssp"
    assert os.path.isfile(root / "crt" / "last.pth")
    argv = ["--method", "crt", "--out_dir", str(root / "moco"), "--pretrained_model", str(root / "moco" / "last.pth")]
    with pytest.raises(ConfigError, match="must not overwrite"):
        main_script.build_config(main_script.get_args_parser().parse_args(argv))
    with pytest.raises(ConfigError, match="--pretrained_model"):
        main_script.build_config(main_script.get_args_parser().parse_args(["--method", "crt"]))


@pytest.mark.parametrize("payload,expected", [
    ({"method": "rotation", "config": {"pretrained_model": None}}, "ce_ssp"),
    ({"method": "moco", "config": {}}, "ce_ssp"),
    ({"method": "erm", "config": {"pretrained_model": None}}, "ce"),  # cRT / fine-tuning on a supervised run
    ({"method": "erm", "config": {"pretrained_model": "PARENT"}}, "ce_ssp"),  # cRT on a CE+SSP run
    ({"method": "erm", "config": {"pretrained_model": "SUPERVISED"}}, "ce"),  # fine-tuned twice, never SSP
    ({"method": "erm", "config": {"pretrained_model": "MOVED"}}, "ce_ssp"),  # unreadable: the old rule
    (None, "ce_ssp"),  # a foreign file: the papers' MoCo / stage checkpoints
])
def test_run_label_marks_only_self_supervised_starts(tmp_path, payload, expected):
    from utils.checkpoint import FORMAT_NAME
    from utils.run import run_label

    parents = {"PARENT": {"method": "erm", "config": {"pretrained_model": str(tmp_path / "rotation.pth")}},
               "SUPERVISED": {"method": "erm", "config": {"pretrained_model": None}}}
    torch.save({"format": FORMAT_NAME, "method": "rotation", "config": {}}, tmp_path / "rotation.pth")
    for name, parent in parents.items():
        torch.save({"format": FORMAT_NAME, **parent}, tmp_path / f"{name}.pth")
    if payload is not None and payload["config"].get("pretrained_model") in ("PARENT", "SUPERVISED", "MOVED"):
        payload = {**payload, "config": {"pretrained_model": str(tmp_path / f"{payload['config']['pretrained_model']}.pth")}}
    path = str(tmp_path / "start.pth")
    torch.save({"state_dict": {}} if payload is None else {"format": FORMAT_NAME, **payload}, path)
    config = types.SimpleNamespace(pretrained_model=path, unlabeled=None)
    assert run_label(config, "ce") == expected
    assert run_label(types.SimpleNamespace(pretrained_model=None, unlabeled="d_u.npz"), "ce") == "ce_semi"
