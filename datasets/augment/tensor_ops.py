"""Image ops on whole batches, with one parameter per sample.

Every op takes uint8 images (N, C, H, W) on any device and per-sample parameters as (N,) tensors
(on the CPU or that device; they are moved with non-blocking copies, so the host never waits
for the GPU), and returns new uint8 images; none of them modifies
its input or draws random numbers (``tensor_steps.py`` draws the parameters). Each op reproduces
the arithmetic of ``torchvision.transforms.v2.functional`` on a single image with the same
parameters, including where torchvision rounds and where it truncates, so a batch equals a loop
of torchvision calls to within one grey level (``tests/test_tensor_augment.py`` checks each op).

Geometry is done by gathering (crops, flips), by separable per-sample resampling taps (resized
crops: a few weighted row picks per axis, anti-aliased like PIL), and by ``grid_sample`` with
per-sample affine matrices (shear, translate, rotate).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R 601-2 luma weights as torchvision applies them to tensors.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """(N,) values as float32 (N, 1, 1, 1) on ``like``'s device, ready to broadcast over images."""
    return values.to(device=like.device, dtype=torch.float32, non_blocking=True).view(-1, 1, 1, 1)


def truncate_to_uint8(images: Tensor) -> Tensor:
    """Clamps to [0, 255] and drops the fraction, as torchvision's and PIL's colour blends do."""
    return images.clamp_(0.0, 255.0).to(torch.uint8)


def round_to_uint8(images: Tensor) -> Tensor:
    """Rounds to the nearest grey level, as torchvision's resampling and filtering do."""
    return images.round_().clamp_(0.0, 255.0).to(torch.uint8)


# ---- geometry ----------------------------------------------------------------------------------
def crop_flip(images: Tensor, tops: Tensor, lefts: Tensor, flips: Tensor, size: int,
              padding: int = 0) -> Tensor:
    """``RandomCrop(size, padding)`` then ``RandomHorizontalFlip`` as a single gather.

    ``tops`` / ``lefts`` index the zero-padded image (0 .. H + 2 * padding - size), as
    torchvision's ``crop(pad(image), top, left, size, size)``; ``flips`` (bool) mirrors the crop.
    """
    n, c = images.shape[:2]
    padded = F.pad(images, (padding,) * 4) if padding else images
    width = padded.shape[-1]
    steps = torch.arange(size, device=images.device)
    rows = tops.to(images.device, non_blocking=True).view(n, 1) + steps  # (N, size)
    # A mirrored crop reads its columns right to left.
    mirror = flips.to(images.device, non_blocking=True).view(n, 1)
    cols = torch.where(mirror, steps.flip(0), steps) + lefts.to(images.device, non_blocking=True).view(n, 1)
    flat = (rows.view(n, size, 1) * width + cols.view(n, 1, size)).view(n, 1, size * size)
    out = padded.flatten(2).gather(2, flat.expand(n, c, size * size))
    return out.view(n, c, size, size)


def cutout(images: Tensor, centers_y: Tensor, centers_x: Tensor, size: int) -> Tensor:
    """Zeroes a ``size`` x ``size`` square per image, clipped at the border.

    The square spans ``[c - size // 2, c + size // 2)`` on each axis, exactly as
    ``datasets.augment.ops.cut_window`` does for one image.
    """
    height, width = images.shape[-2:]
    half = size // 2
    device = images.device
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    cy = centers_y.to(device, non_blocking=True).view(-1, 1, 1)
    cx = centers_x.to(device, non_blocking=True).view(-1, 1, 1)
    hole = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)  # (N, H, W)
    return images.masked_fill(hole.unsqueeze(1), 0)


def resize_taps(starts: Tensor, lengths: Tensor, in_size: int, out_size: int) -> Tuple[Tensor, Tensor]:
    """Bilinear taps resampling ``[start, start + length)`` of an axis to ``out_size`` samples.

    Returns (N, out_size, K) input indices and weights, K = the widest filter's footprint. The
    triangle filter is widened by the scale factor when shrinking (anti-aliasing) and pixels
    outside the window get no weight; this is the rule of PIL's ``resize`` and of
    ``F.interpolate(..., mode='bilinear', antialias=True)``, which torchvision's ``resized_crop``
    uses, written per sample so that every image may have its own window. Upscaling, as for
    CIFAR crops, needs only K = 3 taps (two of them non-zero), far cheaper than a dense matrix.
    """
    starts = starts.to(torch.float64).view(-1, 1, 1)
    lengths = lengths.to(torch.float64).view(-1, 1, 1)
    scale = lengths / out_size  # input pixels per output pixel
    support = scale.clamp(min=1.0)
    taps = int(math.ceil(2 * float(support.max()))) + 1
    centers = (torch.arange(out_size, dtype=torch.float64, device=starts.device).view(1, -1, 1) + 0.5) * scale
    local = (centers - support + 0.5).floor().clamp(min=0) + torch.arange(taps, device=starts.device)
    weights = (1.0 - (local + 0.5 - centers).abs() / support).clamp(min=0.0) * (local < lengths)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    index = (starts + local).clamp(max=in_size - 1).long()  # clamped taps carry zero weight
    return index, weights.to(torch.float32)


def _resample_rows(lines: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """Resamples (N, L, R) along L: out[n, i] = sum_k weights[n, i, k] * lines[n, index[n, i, k]].

    Whole rows of length R are picked with ``index_select``, far faster than an element-wise
    ``gather`` because each pick is one contiguous copy.
    """
    n, length, rest = lines.shape
    out_size, taps = index.shape[1:]
    flat = lines.reshape(n * length, rest)
    rows = index + (torch.arange(n, device=index.device) * length).view(n, 1, 1)
    out = None
    for k in range(taps):
        term = flat.index_select(0, rows[:, :, k].reshape(-1)).mul_(weights[:, :, k].reshape(-1, 1))
        out = term if out is None else out.add_(term)
    return out.view(n, out_size, rest)


def resample(images: Tensor, rows: Tuple[Tensor, Tensor], cols: Tuple[Tensor, Tensor]) -> Tensor:
    """Applies per-sample row and column taps (from ``resize_taps``) and rounds to uint8."""
    n, c, height, width = images.shape
    device = images.device
    row_index, row_weights = (t.to(device, non_blocking=True) for t in rows)
    col_index, col_weights = (t.to(device, non_blocking=True) for t in cols)
    out_h, out_w = row_index.shape[1], col_index.shape[1]
    # Rows first on (N, H, C * W), then columns on (N, W, C * out_h): each pass resamples the
    # middle axis of a contiguous layout.
    lines = images.permute(0, 2, 1, 3).to(torch.float32).reshape(n, height, c * width)
    lines = _resample_rows(lines, row_index, row_weights).view(n, out_h, c, width)
    lines = lines.permute(0, 3, 2, 1).reshape(n, width, c * out_h)
    lines = _resample_rows(lines, col_index, col_weights).view(n, out_w, c, out_h)
    return round_to_uint8(lines.permute(0, 2, 3, 1).contiguous())


def resized_crop(images: Tensor, boxes: Tensor, size: int, flips: Optional[Tensor] = None) -> Tensor:
    """Crops ``boxes`` (N, 4) = (top, left, height, width) and resizes each to ``size`` x ``size``.

    Equals ``torchvision.transforms.v2.functional.resized_crop(image, *box, [size, size],
    antialias=True)`` per image, to within one grey level; ``flips`` (bool, (N,)) mirrors the
    result by reversing the column taps, which costs nothing.
    """
    height, width = images.shape[-2:]
    rows = resize_taps(boxes[:, 0], boxes[:, 2], height, size)
    col_index, col_weights = resize_taps(boxes[:, 1], boxes[:, 3], width, size)
    if flips is not None:
        mirror = flips.to(col_index.device).view(-1, 1, 1)
        col_index = torch.where(mirror, col_index.flip(1), col_index)
        col_weights = torch.where(mirror, col_weights.flip(1), col_weights)
    return resample(images, rows, (col_index, col_weights))


def resize_center_crop(images: Tensor, resize: int, size: int) -> Tensor:
    """``Resize(resize)`` (shorter side) then ``CenterCrop(size)``, the ImageNet evaluation view."""
    n, _, height, width = images.shape
    short, long = min(height, width), max(height, width)
    new_long = int(resize * long / short)
    new_h, new_w = (resize, new_long) if height <= width else (new_long, resize)
    if size > min(new_h, new_w):
        raise ValueError(f"cannot centre-crop {size} px from a {new_h}x{new_w} resized image")
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    zero = torch.zeros(1)
    # The crop keeps some output rows / columns of the full resize, so slice its taps.
    rows = [t[:, top:top + size].expand(n, -1, -1)
            for t in resize_taps(zero, torch.full_like(zero, height), height, new_h)]
    cols = [t[:, left:left + size].expand(n, -1, -1)
            for t in resize_taps(zero, torch.full_like(zero, width), width, new_w)]
    return resample(images, tuple(rows), tuple(cols))


def affine(images: Tensor, matrices: Tensor, interpolation: str = "nearest",
           fill: Optional[Sequence[float]] = None) -> Tensor:
    """Warps each image by its inverse affine matrix (N, 2, 3), in pixel units about the centre.

    An output pixel at centre-relative position (x, y) reads the input at ``matrix @ (x, y, 1)``,
    the convention of torchvision's ``_get_inverse_affine_matrix`` for tensors. Pixels that map
    outside the image take ``fill`` (zeros when ``None``), blended through a sampled mask as
    torchvision does.
    """
    n, c, height, width = images.shape
    device = images.device
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5 - height / 2
    base = torch.stack([xs.view(1, -1).expand(height, -1), ys.view(-1, 1).expand(-1, width),
                        torch.ones(height, width, device=device)], dim=-1)  # (H, W, 3)
    source = torch.matmul(base.view(1, -1, 3), matrices.to(device, torch.float32, non_blocking=True).transpose(1, 2))
    # Normalised coordinates for grid_sample with align_corners=False: pixel edges at +-1.
    grid = (source / torch.tensor([width / 2, height / 2]).to(device, non_blocking=True)).view(n, height, width, 2)
    pixels = images.to(torch.float32)
    if fill is not None:
        pixels = torch.cat([pixels, torch.ones(n, 1, height, width, device=device)], dim=1)
    out = F.grid_sample(pixels, grid, mode=interpolation, padding_mode="zeros", align_corners=False)
    if fill is not None:
        out, mask = out[:, :c], out[:, c:]
        fill_value = torch.tensor(list(fill), dtype=torch.float32).to(device, non_blocking=True).view(1, c, 1, 1)
        if interpolation == "nearest":
            out = torch.where(mask < 0.5, fill_value, out)
        else:
            out = out * mask + (1.0 - mask) * fill_value
    return round_to_uint8(out)


def shear_matrices(shears: Tensor, axis: str, height: int, width: int) -> Tensor:
    """Inverse matrices of AutoAugment's ShearX / ShearY by ``shears`` (tan of the angle).

    The shear is about the top-left corner (torchvision passes ``center=[0, 0]``), which in
    centre-relative units adds ``shear * size / 2`` to the offset.
    """
    m = torch.zeros(len(shears), 2, 3, device=shears.device)
    m[:, 0, 0] = 1.0
    m[:, 1, 1] = 1.0
    if axis == "x":
        m[:, 0, 1] = shears
        m[:, 0, 2] = shears * (height / 2)
    else:
        m[:, 1, 0] = shears
        m[:, 1, 2] = shears * (width / 2)
    return m


def translate_matrices(shifts: Tensor, axis: str) -> Tensor:
    """Inverse matrices of a translation by ``shifts`` pixels (truncated to integers, as torchvision)."""
    m = torch.zeros(len(shifts), 2, 3, device=shifts.device)
    m[:, 0, 0] = 1.0
    m[:, 1, 1] = 1.0
    m[:, 0 if axis == "x" else 1, 2] = -shifts.trunc()
    return m


def rotation_matrices(degrees: Tensor) -> Tensor:
    """Inverse matrices of a counter-clockwise rotation by ``degrees`` about the image centre."""
    radians = degrees * (math.pi / 180.0)
    cos, sin = radians.cos(), radians.sin()
    m = torch.zeros(len(degrees), 2, 3, device=degrees.device)
    m[:, 0, 0], m[:, 0, 1] = cos, -sin
    m[:, 1, 0], m[:, 1, 1] = sin, cos
    return m


# ---- colour ------------------------------------------------------------------------------------
def luma(images: Tensor) -> Tensor:
    """Float (N, 1, H, W) grey levels of RGB images (not rounded)."""
    r, g, b = images.to(torch.float32).unbind(dim=1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def grayscale(images: Tensor) -> Tensor:
    """Three identical grey channels, truncated like torchvision's ``rgb_to_grayscale``."""
    return luma(images).to(torch.uint8).expand_as(images).contiguous()


def blend_float(pixels: Tensor, other: Tensor, factors: Tensor) -> Tensor:
    """``factor * pixels + (1 - factor) * other`` on float pixels, clamped to [0, 255] and
    truncated to whole grey levels, as torchvision's and PIL's colour blends do; a factor of 1
    returns integer-valued ``pixels`` unchanged."""
    f = per_sample(factors, pixels)
    return (pixels * f + other * (1.0 - f)).clamp_(0.0, 255.0).trunc_()


def blend(images: Tensor, other: Tensor, factors: Tensor) -> Tensor:
    """``blend_float`` on uint8 images, returning uint8."""
    return blend_float(images.to(torch.float32), other, factors).to(torch.uint8)


def adjust_brightness(images: Tensor, factors: Tensor) -> Tensor:
    """Scales every pixel by ``factor`` (0 gives black, 1 the image)."""
    return blend(images, torch.zeros((), device=images.device), factors)


def adjust_saturation(images: Tensor, factors: Tensor) -> Tensor:
    """Blends with the (floored) grey image: 0 gives grey, 1 the image, 2 doubles saturation."""
    return blend(images, luma(images).floor_(), factors)


def adjust_contrast(images: Tensor, factors: Tensor) -> Tensor:
    """Blends with the image's mean (floored) grey level: 0 gives a flat grey image."""
    mean = luma(images).floor_().mean(dim=(1, 2, 3), keepdim=True)
    return blend(images, mean, factors)


def adjust_sharpness(images: Tensor, factors: Tensor) -> Tensor:
    """Blends with a 3x3 smoothed image (centre weight 5/13) inside a one-pixel border.

    Border pixels are left as they are, as PIL's ``ImageEnhance.Sharpness`` does.
    """
    n, c, height, width = images.shape
    if height <= 2 or width <= 2:
        return images.clone()
    kernel = torch.ones(3, 3, device=images.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    pixels = images.to(torch.float32)
    smooth = F.conv2d(pixels, kernel, groups=c).round_()  # (N, C, H - 2, W - 2)
    f = per_sample(factors, images)
    out = pixels.clone()
    inner = out[..., 1:-1, 1:-1]
    inner.copy_(inner * f + smooth * (1.0 - f))
    return truncate_to_uint8(out)


def adjust_hue(images: Tensor, shifts: Tensor) -> Tensor:
    """``hue_float`` on uint8 images, returning uint8."""
    return hue_float(images.to(torch.float32), shifts).to(torch.uint8)


def hue_float(pixels: Tensor, shifts: Tensor) -> Tensor:
    """Rotates the hue of float RGB pixels (0..255) by ``shift`` turns (in [-0.5, 0.5]) in HSV
    space, keeping saturation and value; the result is truncated to whole grey levels.

    A hue rotation keeps each pixel's maximum M and minimum m, so the new channels follow from
    the hue alone: channel k is ``M - (M - m) * clamp(min(t, 4 - t), 0, 1)`` with
    ``t = (n_k + 6 * hue) mod 6`` and n = (5, 3, 1) for (R, G, B). This is the HSV -> RGB formula
    without the divisions by 255 and by V, about four times cheaper than a round trip through
    H, S, V planes, and equal to torchvision's ``adjust_hue`` up to float rounding.
    """
    x = pixels
    r, g, b = x.unbind(dim=1)
    top = x.amax(dim=1)
    spread = top - x.amin(dim=1)
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    # Hue in sixths of a turn, from whichever channel holds the maximum (red wins ties, then green).
    is_r = top == r
    is_g = (top == g) & ~is_r
    rise = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    start = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    sixths = start + rise / safe + 6.0 * shifts.to(x.device, torch.float32, non_blocking=True).view(-1, 1, 1)
    offsets = torch.tensor([5.0, 3.0, 1.0]).to(x.device, non_blocking=True).view(1, 3, 1, 1)
    t = torch.remainder(offsets + sixths.unsqueeze(1), 6.0)
    out = top.unsqueeze(1) - spread.unsqueeze(1) * torch.minimum(t, 4.0 - t).clamp_(0.0, 1.0)
    # torchvision converts its [0, 1] result by scaling with 256 - 1e-3 and truncating.
    return out.mul_((256.0 - 1e-3) / 255.0).trunc_()


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keeps the ``bits`` (1..8) most significant bits of every channel."""
    masks = (255 - (2 ** (8 - bits.to(torch.int64)) - 1)).to(torch.uint8)
    return images & masks.to(images.device, non_blocking=True).view(-1, 1, 1, 1)


def solarize(images: Tensor, thresholds: Tensor) -> Tensor:
    """Inverts the pixels at or above ``threshold`` (a grey level, 0..255)."""
    above = images.to(torch.float32) >= per_sample(thresholds, images)
    return torch.where(above, 255 - images, images)


def gaussian_blur(images: Tensor, sigmas: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` per image and reflect padding at the border.

    Each pass is a sum of ``kernel_size`` shifted copies weighted per image; a grouped
    convolution with one group per image plane is much slower on CPUs for such small kernels.
    """
    n, c, height, width = images.shape
    offsets = torch.arange(kernel_size, device=images.device, dtype=torch.float32) - (kernel_size - 1) / 2
    sigma = sigmas.to(images.device, torch.float32, non_blocking=True).view(-1, 1)
    kernel = torch.softmax(-0.5 * (offsets.view(1, -1) / sigma) ** 2, dim=1)  # (N, k), sums to 1
    half = kernel_size // 2
    padded = F.pad(images.to(torch.float32), (half, half, half, half), mode="reflect")
    rows = sum(kernel[:, j].view(n, 1, 1, 1) * padded[:, :, j:j + height, :] for j in range(kernel_size))
    out = sum(kernel[:, j].view(n, 1, 1, 1) * rows[:, :, :, j:j + width] for j in range(kernel_size))
    return round_to_uint8(out)
