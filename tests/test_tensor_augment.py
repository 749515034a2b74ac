"""Batched tensor recipes: the same catalogue as the PIL path, op semantics equal to torchvision's
on fixed parameters, parameter distributions equal to torchvision's, and per-recipe image
statistics equal to the PIL recipes' over many draws."""
from __future__ import annotations

import inspect
import math
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as F1
from torchvision.transforms.v2 import functional as TF

from datasets.augment import TRANSFORMS, build_transform, cut_window
from datasets.augment import tensor_ops as ops
from datasets.augment import tensor_policy
from datasets.augment.tensor import (TENSOR_TRANSFORMS, BatchViews, build_tensor_transform,
                                     build_tensor_views)
from datasets.augment.tensor_steps import ColorJitter, coin, resized_crop_boxes, uniform
from datasets.sample import SAMPLE_DIR

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
IMAGE_SIZE = {"cifar": 32, "imagenet": 48}
INPUT_HW = {"cifar": (32, 32), "imagenet": (60, 80)}


def random_batch(n: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=generator)


def natural_batch(n: int) -> torch.Tensor:
    """The first ``n`` images of the bundled CIFAR-10 sample: real colours, edges and histograms."""
    with open(os.path.join(SAMPLE_DIR, "train.txt"), encoding="utf-8") as handle:
        paths = [line.split()[0] for line in handle if line.strip()][:n]
    arrays = [np.asarray(Image.open(os.path.join(SAMPLE_DIR, p)).convert("RGB")) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.int() - b.int()).abs().max())


# ---- catalogue ---------------------------------------------------------------------------------
def test_same_recipes_and_options_as_pil():
    assert TENSOR_TRANSFORMS.names() == TRANSFORMS.names()
    for name in TRANSFORMS.names():
        pil = inspect.signature(TRANSFORMS.get(name)).parameters
        tensor = inspect.signature(TENSOR_TRANSFORMS.get(name)).parameters
        assert [(p.name, p.kind, p.default) for p in pil.values()] == \
               [(p.name, p.kind, p.default) for p in tensor.values()], name


def test_errors_match_the_pil_path():
    with pytest.raises(ValueError, match="cifar"):
        build_tensor_transform("autoaug", "imagenet", 48)
    with pytest.raises(ValueError, match="style"):
        build_tensor_transform("standard", "tiny", 32)
    with pytest.raises(TypeError, match="randaug_n"):
        build_tensor_transform("standard", "cifar", 32, randaug_n=1)
    with pytest.raises(TypeError, match="nonsense"):
        build_tensor_views(["autoaug", "simclr"], "cifar", 32, nonsense=1)
    with pytest.raises(KeyError, match="standard"):
        build_tensor_transform("standrad", "cifar", 32)
    with pytest.raises(ValueError, match="randaug_m"):
        build_tensor_transform("randaug", "cifar", 32, randaug_m=11)


def test_views_share_options_by_declaration():
    views = build_tensor_views(["autoaug", "randaug"], "cifar", 32, cutout_size=8, randaug_n=1)
    assert isinstance(views, BatchViews) and len(views) == 2
    out = views(random_batch(4), torch.Generator().manual_seed(0))
    assert isinstance(out, tuple) and all(v.shape == (4, 3, 32, 32) for v in out)


# autoaug is CIFAR-only, as in the papers (its error is checked above).
DEFINED = [(recipe, style) for recipe in TENSOR_TRANSFORMS.names() for style in ("cifar", "imagenet")
           if (recipe, style) != ("autoaug", "imagenet")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("recipe,style", DEFINED)
def test_recipe_contract(recipe, style, device):
    transform = build_tensor_transform(recipe, style, IMAGE_SIZE[style])
    images = random_batch(16, *INPUT_HW[style]).to(device)
    before = images.clone()
    first = transform(images, torch.Generator().manual_seed(3))
    size = IMAGE_SIZE[style]
    assert first.dtype == torch.uint8 and first.shape == (16, 3, size, size)
    assert first.device == images.device
    assert torch.equal(images, before), "a recipe must not modify its input batch"
    assert torch.equal(first, transform(images, torch.Generator().manual_seed(3)))
    if recipe != "test":
        assert not torch.equal(first, transform(images, torch.Generator().manual_seed(4)))


# ---- op semantics on fixed parameters ------------------------------------------------------------
def test_crop_flip_equals_pad_crop_flip():
    images = random_batch(6)
    tops, lefts = torch.tensor([0, 8, 3, 4, 8, 1]), torch.tensor([0, 8, 5, 0, 2, 7])
    flips = torch.tensor([False, True, False, True, True, False])
    out = ops.crop_flip(images, tops, lefts, flips, 32, padding=4)
    for i in range(6):
        expected = F1.crop(F1.pad(images[i], 4), int(tops[i]), int(lefts[i]), 32, 32)
        expected = F1.hflip(expected) if flips[i] else expected
        assert torch.equal(out[i], expected)


def test_cutout_equals_cut_window_at_given_centres():
    images = random_batch(5)
    ys, xs = torch.tensor([0, 31, 16, 3, 30]), torch.tensor([0, 31, 16, 28, 2])
    out = ops.cutout(images, ys, xs, 16)
    for i in range(5):
        assert torch.equal(out[i], cut_window(images[i], int(ys[i]), int(xs[i]), 16))


@pytest.mark.parametrize("hw,size", [((32, 32), 32), ((60, 80), 24)])  # up- and down-scaling
def test_resized_crop_equals_torchvision(hw, size):
    images = random_batch(6, *hw)
    height, width = hw
    boxes = torch.tensor([[0, 0, height, width], [3, 4, 10, 20], [5, 0, 27, 13], [0, 1, 31, 31],
                          [10, 10, 5, 5], [2, 2, height - 2, width - 3]])
    flips = torch.tensor([False, True, False, True, False, True])
    out = ops.resized_crop(images, boxes, size, flips)
    for i in range(6):
        expected = TF.resized_crop(images[i], *boxes[i].tolist(), [size, size], antialias=True)
        assert max_diff(out[i], TF.hflip(expected) if flips[i] else expected) <= 1


def test_resize_center_crop_equals_torchvision():
    images = random_batch(3, 60, 80)
    expected = TF.center_crop(TF.resize(images, 54, antialias=True), 48)
    assert max_diff(ops.resize_center_crop(images, 54, 48), expected) <= 1


def test_grayscale_posterize_solarize_invert_are_exact():
    images = random_batch(6)
    assert torch.equal(ops.grayscale(images), TF.rgb_to_grayscale(images, num_output_channels=3))
    bits, thresholds = [1, 2, 4, 5, 7, 8], [0.0, 50.0, 128.0, 170.0, 226.66667, 255.0]
    out = ops.posterize(images, torch.tensor(bits))
    assert all(torch.equal(out[i], TF.posterize(images[i], b)) for i, b in enumerate(bits))
    out = ops.solarize(images, torch.tensor(thresholds))
    assert all(torch.equal(out[i], TF.solarize(images[i], t)) for i, t in enumerate(thresholds))
    assert torch.equal(tensor_policy.apply_op(images, "Invert", torch.zeros(6), "nearest", None), TF.invert(images))


@pytest.mark.parametrize("name,factors", [
    ("brightness", [0.0, 0.6, 1.0, 1.4, 1.9, 0.1]), ("contrast", [0.0, 0.6, 1.0, 1.4, 1.9, 0.1]),
    ("saturation", [0.0, 0.6, 1.0, 1.4, 1.9, 0.1]), ("sharpness", [0.0, 0.6, 1.0, 1.4, 1.9, 0.1]),
    ("hue", [-0.5, -0.1, 0.0, 0.05, 0.3, 0.5]),
])
def test_colour_ops_equal_torchvision_within_rounding(name, factors):
    images = natural_batch(6)
    mine = getattr(ops, f"adjust_{name}")(images, torch.tensor(factors))
    reference = getattr(TF, f"adjust_{name}")
    for i, factor in enumerate(factors):
        assert max_diff(mine[i], reference(images[i], factor)) <= 1, (name, factor)


def test_gaussian_blur_equals_torchvision():
    images, sigmas = natural_batch(4), [0.1, 0.7, 1.3, 2.0]
    out = ops.gaussian_blur(images, torch.tensor(sigmas), 5)
    for i, sigma in enumerate(sigmas):
        assert max_diff(out[i], TF.gaussian_blur(images[i], [5, 5], [sigma, sigma])) <= 1


@pytest.mark.parametrize("interpolation,fill", [("nearest", (128, 128, 128)), ("bilinear", None),
                                                ("bilinear", (124, 116, 104))])
@pytest.mark.parametrize("name", ["ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"])
def test_geometric_ops_equal_torchvision(name, interpolation, fill):
    """The calls torchvision's AutoAugment makes (its ``_apply_op``), one image at a time."""
    images = natural_batch(6)
    magnitudes = {"ShearX": [0.3, -0.2, 0.1, 0.0, 0.05, -0.3], "Rotate": [30, -30, 10, -3.3, 0, 6.7],
                  "TranslateX": [14.5, -14.5, 3.2, -3.9, 0, 9]}
    values = magnitudes.get(name, magnitudes["ShearX" if "Shear" in name else "TranslateX"])
    mode = F1.InterpolationMode(interpolation)
    fill_list = None if fill is None else [float(f) for f in fill]
    out = tensor_policy.apply_op(images, name, torch.tensor(values), interpolation, fill)
    for i, m in enumerate(values):
        common = dict(interpolation=mode, fill=fill_list)
        if name == "Rotate":
            expected = F1.rotate(images[i], m, **common)
        elif name.startswith("Shear"):
            shear = [math.degrees(math.atan(m)), 0.0] if name == "ShearX" else [0.0, math.degrees(math.atan(m))]
            expected = F1.affine(images[i], 0.0, [0, 0], 1.0, shear, center=[0, 0], **common)
        else:
            shift = [int(m), 0] if name == "TranslateX" else [0, int(m)]
            expected = F1.affine(images[i], 0.0, shift, 1.0, [0.0, 0.0], **common)
        assert torch.equal(out[i], expected), (name, m)


def test_augmentation_space_equals_torchvision():
    # torchvision keeps its tables in a private method; if it changes, the PIL and tensor paths
    # would drift apart, so this test names the difference.
    for policy_class, bins in ((T.AutoAugment, 10), (T.RandAugment, 11)):
        theirs = policy_class()._augmentation_space(bins, (32, 40))
        ours = tensor_policy.augmentation_space(bins, 32, 40)
        for name, (magnitudes, _) in theirs.items():
            expected = magnitudes.double() if magnitudes.ndim else torch.zeros(bins, dtype=torch.float64)
            assert torch.equal(ours[name], expected), name
            assert (name in tensor_policy.SIGNED) == theirs[name][1], name
    assert tuple(T.RandAugment()._augmentation_space(11, (32, 32))) == tensor_policy.RANDAUG_OPS


def test_paper_autoaugment_space_differs_from_torchvision_in_rotate_and_solarize_only():
    from datasets.augment.pil import PaperAutoAugment

    theirs = T.AutoAugment()._augmentation_space(10, (32, 32))
    papers = PaperAutoAugment()._augmentation_space(10, (32, 32))
    tensor = tensor_policy.augmentation_space(10, 32, 32, solarize_start=tensor_policy.PAPER_SOLARIZE_START)
    for name, (magnitudes, signed) in papers.items():
        if name not in ("Rotate", "Solarize"):
            assert torch.equal(magnitudes, theirs[name][0]) and signed == theirs[name][1], name
        expected = magnitudes.double() if magnitudes.ndim else torch.zeros(10, dtype=torch.float64)
        assert torch.allclose(tensor[name], expected), name
    assert papers["Rotate"][1] is False and theirs["Rotate"][1] is True
    # The CIFAR10Policy class: np.linspace(256, 0, 10), i.e. 256 * (1 - k / 9).
    assert torch.allclose(papers["Solarize"][0].double(), torch.tensor([256 * (1 - k / 9) for k in range(10)],
                                                                        dtype=torch.float64))


def _forced_sub_policy(monkeypatch, transform, index, coins, signs):
    """Makes ``transform`` (torchvision's AutoAugment class) draw sub-policy ``index``, the
    application coins ``coins`` (a stage runs when its coin <= its probability) and ``signs``
    (0 = torchvision negates a signed op)."""
    monkeypatch.setattr(type(transform), "get_params",
                        staticmethod(lambda n: (index, torch.tensor(coins), torch.tensor(signs))))


def test_paper_autoaugment_rotates_by_positive_angles_only(monkeypatch):
    from datasets.augment.pil import PaperAutoAugment

    policy = PaperAutoAugment(T.AutoAugmentPolicy.CIFAR10, fill=[128, 128, 128])
    index = policy.policies.index((("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)))
    _forced_sub_policy(monkeypatch, policy, index, [0.0, 0.0], [0, 1])
    image = Image.fromarray(natural_batch(1)[0].permute(1, 2, 0).numpy())
    out = policy(image)
    angle = 30 * 2 / 9  # linspace(0, 30, 10)[2] = 6.67 degrees, counter-clockwise as PIL's rotate
    shift = int(150 / 331 * 32 * 9 / 9)
    rotated = F1.rotate(image, angle, fill=[128, 128, 128])
    expected = F1.affine(rotated, 0.0, [shift, 0], 1.0, [0.0, 0.0], fill=[128, 128, 128])
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    assert not np.array_equal(np.asarray(out), np.asarray(
        F1.affine(F1.rotate(image, -angle, fill=[128, 128, 128]), 0.0, [shift, 0], 1.0, [0.0, 0.0],
                  fill=[128, 128, 128])))


def test_paper_autoaugment_solarize_thresholds(monkeypatch):
    """Sub-policy (Solarize 0.5 bin 2, Invert 0.0): the papers' threshold 199.1 inverts the grey
    levels 200..255 and keeps 199, where torchvision's 198.3 inverts 199 too."""
    from datasets.augment.pil import PaperAutoAugment

    levels = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, -1, -1)
    image = Image.fromarray(levels.permute(1, 2, 0).numpy())
    policy = PaperAutoAugment(T.AutoAugmentPolicy.CIFAR10)
    index = policy.policies.index((("Solarize", 0.5, 2), ("Invert", 0.0, None)))
    _forced_sub_policy(monkeypatch, policy, index, [0.1, 0.9], [1, 1])  # Solarize on, Invert off
    out = torch.from_numpy(np.asarray(policy(image))[..., 0].copy()).flatten().int()
    expected = torch.where(torch.arange(256) >= 200, 255 - torch.arange(256), torch.arange(256)).int()
    assert torch.equal(out, expected)
    batch = levels.unsqueeze(0).contiguous()
    papers_bin = tensor_policy.augmentation_space(10, 16, 16, tensor_policy.PAPER_SOLARIZE_START)["Solarize"][2]
    tensor_out = tensor_policy.apply_op(batch, "Solarize", torch.tensor([papers_bin]), "nearest", None)
    assert torch.equal(tensor_out[0, 0].flatten().int(), expected)
    bin0 = tensor_policy.augmentation_space(10, 16, 16, tensor_policy.PAPER_SOLARIZE_START)["Solarize"][0]
    assert torch.equal(tensor_policy.apply_op(batch, "Solarize", torch.tensor([bin0]), "nearest", None), batch)


def test_batch_autoaugment_draws_the_papers_magnitudes(monkeypatch):
    seen = {}
    real = tensor_policy.apply_op

    def recording(images, name, magnitudes, interpolation, fill):
        seen.setdefault(name, []).append(magnitudes)
        return real(images, name, magnitudes, interpolation, fill)

    monkeypatch.setattr(tensor_policy, "apply_op", recording)
    tensor_policy.BatchAutoAugment(fill=(128, 128, 128))(random_batch(2000), torch.Generator().manual_seed(3))
    rotations = torch.cat(seen["Rotate"])
    assert (rotations > 0).all() and rotations.numel() > 50  # bins 2, 8, 9: never negative
    thresholds = set(torch.cat(seen["Solarize"]).double().round(decimals=3).tolist())
    assert thresholds <= {round(256 * (1 - k / 9), 3) for k in range(10)} and len(thresholds) >= 3
    shears = torch.cat(seen["ShearY"])
    assert (shears < 0).any() and (shears > 0).any()  # the other geometric ops keep their sign


def test_color_jitter_runs_each_sample_in_its_drawn_order():
    """Redraws the parameters from a copy of the generator and applies torchvision's ops per image."""
    images = natural_batch(12)
    jitter = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
    out = jitter(images, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    applied = coin(12, 0.8, replay)
    order = torch.rand(12, 4, generator=replay).argsort(dim=1)
    factors = [uniform(12, -x, x, replay) + (0.0 if k == 3 else 1.0) for k, x in enumerate((0.4, 0.4, 0.4, 0.1))]
    functions = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(12):
        expected = images[i]
        if applied[i]:
            for k in order[i].tolist():
                expected = functions[k](expected, float(factors[k][i]))
        # Four truncations, each within one level, which later factors (up to 1.4) amplify; another
        # order of the same ops moves pixels by 0.3 to 3.5 levels on average on these images.
        difference = (out[i].int() - expected.int()).abs()
        assert difference.max() <= 4 and difference.double().mean() < 0.15


# ---- parameter distributions ------------------------------------------------------------------
def test_resized_crop_boxes_follow_torchvision_distribution():
    n = 4000
    ours = resized_crop_boxes(n, 32, 40, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)).double()
    torch.manual_seed(0)
    theirs = torch.tensor([T.RandomResizedCrop.get_params(torch.zeros(3, 32, 40), [0.08, 1.0], [3 / 4, 4 / 3])
                           for _ in range(n)], dtype=torch.float64)
    for column in range(4):  # top, left, height, width
        a, b = ours[:, column], theirs[:, column]
        assert abs(a.mean() - b.mean()) < 4 * math.sqrt((a.var() + b.var()) / n), column
    assert ((ours[:, 2] <= 32) & (ours[:, 0] + ours[:, 2] <= 32) & (ours[:, 1] + ours[:, 3] <= 40)).all()


def _count_ops(monkeypatch, transform, n):
    counts = {}
    real = tensor_policy.apply_op

    def counting(images, name, magnitudes, interpolation, fill):
        counts[name] = counts.get(name, 0) + images.shape[0]
        return real(images, name, magnitudes, interpolation, fill)

    monkeypatch.setattr(tensor_policy, "apply_op", counting)
    transform(random_batch(n), torch.Generator().manual_seed(1))
    return counts


def test_autoaugment_applies_each_op_at_its_policy_rate(monkeypatch):
    n = 4000
    policy = T.AutoAugment(T.AutoAugmentPolicy.CIFAR10).policies
    expected = {}
    for sub in policy:
        for name, p, _ in sub:
            expected[name] = expected.get(name, 0.0) + n * p / len(policy)
    counts = _count_ops(monkeypatch, tensor_policy.BatchAutoAugment(fill=(128, 128, 128)), n)
    for name, mean in expected.items():
        assert abs(counts.get(name, 0) - mean) < 4 * math.sqrt(mean) + 1, name


def test_randaugment_draws_ops_uniformly(monkeypatch):
    n = 3000
    counts = _count_ops(monkeypatch, tensor_policy.BatchRandAugment(2, 10, 11), n)
    mean = 2 * n / len(tensor_policy.RANDAUG_OPS)
    for name in tensor_policy.RANDAUG_OPS[1:]:  # Identity is skipped, not applied
        assert abs(counts[name] - mean) < 4 * math.sqrt(mean), name


# ---- statistics against the PIL recipes -------------------------------------------------------
def image_features(batch: torch.Tensor) -> torch.Tensor:
    """Per image: mean, pixel std, share of black pixels, share of white pixels, grey image or
    not, mean colourfulness (max - min over channels), mean left-right asymmetry."""
    x = batch.double()
    channel_spread = x.amax(dim=1) - x.amin(dim=1)
    return torch.stack([
        x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), (batch == 0).double().mean(dim=(1, 2, 3)),
        (batch == 255).double().mean(dim=(1, 2, 3)), (channel_spread == 0).all(dim=(1, 2)).double(),
        channel_spread.mean(dim=(1, 2)), (x[..., :16] - x[..., 16:].flip(-1)).mean(dim=(1, 2, 3)),
    ], dim=1)


@pytest.mark.parametrize("recipe,options",
                         [(name, {}) for name in TENSOR_TRANSFORMS.names()])
def test_tensor_and_pil_recipes_agree_statistically(recipe, options):
    repeats = 6
    images = natural_batch(64).repeat(repeats, 1, 1, 1)  # 384 draws
    tensor_out = build_tensor_transform(recipe, "cifar", 32, **options)(images, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    random.seed(0)
    pil = build_transform(recipe, "cifar", 32, **options)
    pil_out = torch.stack([pil(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in images])
    a, b = image_features(tensor_out), image_features(pil_out)
    n = len(images)
    tolerance = 4 * torch.sqrt((a.var(dim=0) + b.var(dim=0)) / n) + 0.5 / 255 * torch.tensor(
        [255.0, 255.0, 1, 1, 1, 255.0, 255.0], dtype=torch.float64)
    difference = (a.mean(dim=0) - b.mean(dim=0)).abs()
    names = ["mean", "std", "black", "white", "grey images", "colourfulness", "asymmetry"]
    bad = [f"{names[k]}: tensor {a[:, k].mean():.4f} vs PIL {b[:, k].mean():.4f}"
           for k in range(len(names)) if difference[k] > tolerance[k]]
    assert not bad, bad
