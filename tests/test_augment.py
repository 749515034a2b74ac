"""PIL augmentation recipes: output contract, crop/flip/cutout semantics, views, errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from datasets.augment import (
    STYLES,
    TRANSFORMS,
    Cutout,
    MultiView,
    build_transform,
    build_views,
    cut_window,
)
from datasets.augment.pil import blur_kernel_size
from datasets.base import ImageDataset, ImageSource

# (recipe, style) pairs the papers do not define; building them must fail loudly.
UNDEFINED = {("autoaug", "imagenet")}
# Input sides per style: CIFAR images arrive at their training size, ImageNet-style ones are
# larger and not square, and are cropped to a small size to keep the test fast.
INPUT_HW = {"cifar": (32, 32), "imagenet": (90, 120)}
IMAGE_SIZE = {"cifar": 32, "imagenet": 48}


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


@pytest.fixture(autouse=True)
def _seed():
    # torchvision's random transforms draw from these global generators.
    torch.manual_seed(0)
    random.seed(0)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("recipe", TRANSFORMS.names())
def test_every_recipe_returns_uint8_image(recipe, style):
    if (recipe, style) in UNDEFINED:
        with pytest.raises(ValueError, match="cifar"):
            build_transform(recipe, style, IMAGE_SIZE[style])
        return
    transform = build_transform(recipe, style, IMAGE_SIZE[style])
    size = IMAGE_SIZE[style]
    for seed in range(5):  # several draws reach different random branches
        out = transform(random_image(*INPUT_HW[style], seed=seed))
        assert out.dtype == torch.uint8
        assert out.shape == (3, size, size)


def test_cifar_test_recipe_is_identity():
    image = random_image(32, 32)
    out = build_transform("test", "cifar", 32)(image)
    assert torch.equal(out, as_tensor(image))


@pytest.mark.parametrize("image_size, resize", [(224, 256), (112, 128), (48, 54)])
def test_imagenet_test_recipe_keeps_crop_ratio(image_size, resize):
    transform = build_transform("test", "imagenet", image_size)
    assert transform.transforms[0].size == resize
    image = random_image(300, 400)
    out = transform(image)
    assert out.shape == (3, image_size, image_size)
    assert torch.equal(out, transform(image))  # no randomness at test time


def test_standard_cifar_is_padded_crop_then_flip():
    image = random_image(32, 32, seed=1)
    padded = torch.nn.functional.pad(as_tensor(image), (4, 4, 4, 4))  # zeros on every side
    transform = build_transform("standard", "cifar", 32)
    seen_offsets, seen_flips = set(), set()
    for _ in range(200):
        out = transform(image)
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.equal(out, _crop(padded, top, left, flip))
        ]
        # The random image makes every crop distinct, so exactly one explanation exists.
        assert len(matches) == 1
        top, left, flip = matches[0]
        seen_offsets.add((top, left))
        seen_flips.add(flip)
    assert seen_flips == {False, True}
    assert len(seen_offsets) > 40  # offsets range over the 9 x 9 grid


def _crop(padded: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
    window = padded[:, top : top + 32, left : left + 32]
    return torch.flip(window, dims=[2]) if flip else window


def test_cut_window_zeroes_16px_square():
    image = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    out = cut_window(image, center_y=10, center_x=20, size=16)
    expected = image.clone()
    expected[:, 2:18, 12:28] = 0
    assert torch.equal(out, expected)
    assert int((out == 0).sum()) == 3 * 16 * 16
    assert int((image == 0).sum()) == 0  # the input is left untouched


@pytest.mark.parametrize(
    "center, rows, cols",
    [((0, 0), (0, 8), (0, 8)), ((31, 5), (23, 32), (0, 13)), ((3, 30), (0, 11), (22, 32))],
)
def test_cut_window_clips_at_borders(center, rows, cols):
    out = cut_window(torch.ones(3, 32, 32, dtype=torch.uint8), *center, size=16)
    expected = torch.ones(3, 32, 32, dtype=torch.uint8)
    expected[:, rows[0] : rows[1], cols[0] : cols[1]] = 0
    assert torch.equal(out, expected)


def test_cutout_draws_centre_from_its_generator():
    image = torch.full((3, 32, 32), 7, dtype=torch.uint8)
    out = Cutout(16, generator=torch.Generator().manual_seed(3))(image)
    replay = torch.Generator().manual_seed(3)
    center_y = int(torch.randint(32, (), generator=replay))
    center_x = int(torch.randint(32, (), generator=replay))
    assert torch.equal(out, cut_window(image, center_y, center_x, 16))
    again = Cutout(16, generator=torch.Generator().manual_seed(3))(image)
    assert torch.equal(out, again)


def test_cutout_recipe_is_standard_plus_one_hole():
    image = Image.fromarray(np.full((32, 32, 3), 255, dtype=np.uint8))  # white: holes show
    standard = build_transform("standard", "cifar", 32)
    cutout = build_transform("cutout", "cifar", 32)
    for seed in range(20):
        # Cutout draws after the crop and flip, so the same seed gives the same crop in both.
        torch.manual_seed(seed)
        plain = standard(image)
        torch.manual_seed(seed)
        holed = cutout(image)
        changed = (holed != plain).any(dim=0)
        rows, cols = torch.nonzero(changed, as_tuple=True)
        # A clipped window keeps at least 8 x 8 pixels and the padding is at most 4 px wide, so
        # at least 4 x 4 white pixels turn black.
        assert len(rows) >= 4 * 4
        assert (holed[:, changed] == 0).all()
        assert int(rows.max() - rows.min()) < 16 and int(cols.max() - cols.min()) < 16


def test_blur_kernel_is_odd_and_about_a_tenth():
    assert blur_kernel_size(224) == 23
    assert blur_kernel_size(32) == 3
    assert all(blur_kernel_size(s) % 2 == 1 for s in range(8, 300))


def test_options_reach_their_recipe():
    no_jitter = build_transform("standard", "imagenet", 48, color_jitter=False)
    assert not any("ColorJitter" in type(op).__name__ for op in no_jitter.transforms)
    randaug = build_transform("randaug", "imagenet", 48, randaug_n=3, randaug_m=7)
    op = next(op for op in randaug.transforms if type(op).__name__ == "RandAugment")
    assert (op.num_ops, op.magnitude, op.num_magnitude_bins) == (3, 7, 11)
    # LCSL's sim_aug: jitter without hue, always applied, and blur; BCCL's SimCLR view: hue 0.1,
    # p = 0.8, no blur. An option a recipe does not declare is refused.
    lcsl = [type(op).__name__ for op in build_transform("sim_aug", "imagenet", 48).transforms]
    assert lcsl == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale", "RandomApply", "RandomHorizontalFlip",
                    "PILToTensor"]
    jitter = build_transform("sim_aug", "imagenet", 48).transforms[1]
    assert jitter.hue is None and jitter.brightness == (0.6, 1.4)
    simclr = build_transform("simclr", "cifar", 32).transforms
    assert [type(op).__name__ for op in simclr][2:4] == ["RandomApply", "RandomGrayscale"]
    assert simclr[2].p == 0.8 and simclr[2].transforms[0].hue == (-0.1, 0.1)
    assert "GaussianBlur" not in repr(simclr)
    with pytest.raises(TypeError, match="takes no option blur"):
        build_transform("simclr", "cifar", 32, blur=True)


@pytest.mark.parametrize("style, size, kernel", [("cifar", 32, 3), ("imagenet", 224, 23)])
def test_moco_v2_is_mocos_aug_plus(style, size, kernel):
    # MoCo v2's augmentation (Chen et al. 2020; the reference's aug_plus): crop scale 0.2-1,
    # jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale 0.2, blur sigma 0.1-2 with p 0.5, flip.
    ops = build_transform("moco_v2", style, size).transforms
    assert [type(op).__name__ for op in ops] == ["RandomResizedCrop", "RandomApply", "RandomGrayscale",
                                                 "RandomApply", "RandomHorizontalFlip", "PILToTensor"]
    assert ops[0].size == (size, size) and ops[0].scale == (0.2, 1.0)
    jitter = ops[1].transforms[0]
    assert ops[1].p == 0.8 and (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == (
        (0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
    assert ops[2].p == 0.2
    blur = ops[3].transforms[0]
    assert ops[3].p == 0.5 and blur.sigma == (0.1, 2.0) and blur.kernel_size == (kernel, kernel)
    assert ops[4].p == 0.5


def test_multiview_returns_tuple_in_order():
    image = random_image(32, 32)
    views = MultiView([build_transform("test", "cifar", 32), build_transform("autoaug", "cifar", 32)])
    out = views(image)
    assert isinstance(out, tuple) and len(out) == 2
    assert torch.equal(out[0], as_tensor(image))


def test_build_views_single_and_several():
    single = build_views(["standard"], "cifar", 32)
    assert not isinstance(single, MultiView)
    # randaug_m goes to the randaug view only; simclr would reject it on its own.
    pair = build_views(["randaug", "simclr"], "cifar", 32, randaug_m=5)
    assert isinstance(pair, MultiView) and len(pair) == 2
    randaug = [op for op in pair.transforms[0].transforms if isinstance(op, T.RandAugment)]
    assert len(randaug) == 1 and (randaug[0].num_ops, randaug[0].magnitude) == (2, 5)


def test_multiview_batches_through_dataloader():
    rng = np.random.default_rng(0)
    source = ImageSource(
        targets=np.arange(6) % 3, array=rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    )
    dataset = ImageDataset(source, build_views(["autoaug", "simclr"], "cifar", 32))
    views, targets, indices = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    # default_collate turns each tuple position into a batch (as a list, for old compatibility).
    assert len(views) == 2
    for batch in views:
        assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 32, 32)
    assert targets.tolist() == [0, 1, 2, 0]
    assert indices.tolist() == [0, 1, 2, 3]


def test_unknown_names_raise_with_choices():
    with pytest.raises(KeyError, match="autoaug"):
        build_transform("autoagment", "cifar", 32)
    with pytest.raises(ValueError, match="imagenet"):
        build_transform("standard", "svhn", 32)
    with pytest.raises(TypeError, match="color_jitter"):
        build_transform("standard", "cifar", 32, colour_jitter=False)
    with pytest.raises(TypeError, match="randaug_m"):
        build_views(["autoaug", "simclr"], "cifar", 32, randaug_m=5)
    with pytest.raises(KeyError, match="simclr"):
        build_views(["autoaug", "simcrl"], "cifar", 32)
    with pytest.raises(ValueError):
        build_views("autoaug", "cifar", 32)  # a bare string is not a list of recipes
    with pytest.raises(ValueError, match="randaug_m"):
        build_transform("randaug", "cifar", 32, randaug_m=30)
