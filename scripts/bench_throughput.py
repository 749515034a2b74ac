"""Training throughput: the papers' data pipeline against the toolkit's fast path, in one process.

    python scripts/bench_throughput.py --device cpu --method ce --seconds 60
    python scripts/bench_throughput.py --device cuda --method bccl --seconds 60

Both pipelines train the same ResNet-32 with SGD on the same images (the bundled CIFAR-10 sample,
5,000 images at imbalance 1, or ``--synthetic`` random images) with the same method step:

* papers: the PIL recipe in a ``DataLoader`` (``--workers`` processes, persistent, so worker
  start-up is not charged), ToTensor + Normalize per image, fp32, NCHW;
* fast: ``DeviceLoader`` (data on the device, batched tensor augmentation), channels_last, and
  ``--amp auto``: bf16 autocast on GPUs and on CPUs with native bf16 (AVX512-BF16 / AMX), fp16
  with loss scaling on GPUs without bf16, fp32 on other CPUs (emulated bf16 is several times
  slower than fp32 there).

Each pipeline runs ``--seconds`` in total, split into ``--rounds`` alternating slices so that load
from other processes falls on both alike. The last line is ``speedup X.XX`` (fast / papers).
Methods: ``ce`` (ERM, crop + flip), ``bccl`` (two views: AutoAugment + SimCLR), ``lcsl`` (mixup +
flip-averaged teacher, crop + flip), each through its registered ``training_step``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, Sequence, Tuple

import numpy as np
import torch

# Runnable as ``python scripts/bench_throughput.py`` from the repo root: make the packages importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DataOptions, ImageDataset, ImageSource, build_dataset  # noqa: E402
from datasets.augment import build_views  # noqa: E402
from datasets.augment.tensor import build_tensor_views  # noqa: E402
from datasets.cifar_lt import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from datasets.device_loader import DeviceLoader  # noqa: E402
from methods import METHODS, build_method  # noqa: E402
from models import build_model  # noqa: E402
from utils.engine import DeviceInputs, autocast_context, make_scaler, resolve_amp  # noqa: E402

# method -> (registered method, its options, CIFAR augmentation recipe per view)
METHOD_SETUPS: Dict[str, Tuple[str, Dict[str, Any], Tuple[str, ...]]] = {
    "ce": ("erm", {"loss": "ce"}, ("standard",)),
    "bccl": ("bccl", {}, ("autoaug", "simclr")),  # BCCL's CIFAR sim-sim views (ALGORITHMS.md 2.6)
    "lcsl": ("lcsl", {}, ("standard",)),  # LCSL's README command trains with crop + flip (1.4)
}
CIFAR_LT_R100_IMAGES = 12406  # training images of CIFAR-10-LT at imbalance ratio 100


class FloatNormalize:
    """The papers' ``ToTensor`` + ``Normalize`` after a uint8 recipe: float [0, 1], then standardise."""

    def __init__(self, recipe: Callable, mean: Sequence[float], std: Sequence[float]):
        self.recipe = recipe
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def _one(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float().div_(255.0) - self.mean) / self.std

    def __call__(self, image):
        out = self.recipe(image)
        return tuple(self._one(v) for v in out) if isinstance(out, tuple) else self._one(out)


def load_images(synthetic: bool) -> ImageSource:
    if synthetic:
        rng = np.random.default_rng(0)
        return ImageSource(rng.integers(0, 10, 5000), array=rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8))
    return build_dataset("cifar10_sample", DataOptions(imb_factor=1.0)).train


def endless(make: Callable[[], Iterator]) -> Iterator:
    """Restarts an epoch iterator whenever it runs out."""
    while True:
        yield from make()


def build_method_for(name: str, device: torch.device):
    registered, options, _ = METHOD_SETUPS[name]
    if registered not in METHODS:
        raise SystemExit(f"method '{registered}' is not registered in methods.METHODS "
                         f"(have: {', '.join(METHODS.names())}); cannot benchmark --method {name}")
    method = build_method(registered, build_model("resnet32", 10), [500] * 10, **options)
    return method.to(device)


class Pipeline:
    """One way of training: a batch source, an input preparation, a precision and a layout."""

    def __init__(self, label: str, method_name: str, batches: Iterator, prepare: Callable, device: torch.device,
                 amp: str, channels_last: bool, lr: float = 0.1):
        self.label, self.batches, self.prepare, self.device, self.amp = label, batches, prepare, device, amp
        self.method = build_method_for(method_name, device)
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.method.train()
        self.method.on_epoch_start(0)
        self.optimizer = torch.optim.SGD(self.method.optim_parameters(), lr=lr, momentum=0.9, weight_decay=2e-4)
        self.scaler = make_scaler(device, amp)
        self.images = 0
        self.seconds = 0.0

    def step(self) -> int:
        images, targets, indices = self.prepare(next(self.batches))
        with autocast_context(self.device, self.amp):
            out = self.method.training_step(images, targets, 0, indices)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return targets.shape[0]

    def run_for(self, seconds: float, count: bool = True) -> None:
        start = time.perf_counter()
        images = 0
        while time.perf_counter() - start < seconds:
            images += self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if count:
            self.images += images
            self.seconds += time.perf_counter() - start

    @property
    def rate(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def papers_pipeline(args, source: ImageSource, device: torch.device) -> Pipeline:
    recipes = METHOD_SETUPS[args.method][2]
    transform = FloatNormalize(build_views(list(recipes), "cifar", 32), CIFAR_MEAN, CIFAR_STD)
    loader = torch.utils.data.DataLoader(
        ImageDataset(source, transform), batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)

    def prepare(batch):
        views, targets, indices = batch
        move = lambda v: v.to(device, non_blocking=True)  # noqa: E731
        views = tuple(move(v) for v in views) if isinstance(views, (list, tuple)) else move(views)
        return views, move(targets), indices

    return Pipeline("papers", args.method, endless(lambda: iter(loader)), prepare, device, "none", False)


def fast_pipeline(args, source: ImageSource, device: torch.device) -> Pipeline:
    recipes = METHOD_SETUPS[args.method][2]
    transform = build_tensor_views(list(recipes), "cifar", 32)
    loader = DeviceLoader(source, transform, args.batch_size, device=device, seed=0, drop_last=True)
    inputs = DeviceInputs(CIFAR_MEAN, CIFAR_STD, device, channels_last=True)
    epochs = iter(range(10 ** 9))

    def next_epoch():
        loader.set_epoch(next(epochs))
        return iter(loader)

    amp = resolve_amp(args.amp, device)
    pipeline = Pipeline("fast", args.method, endless(next_epoch), inputs, device, amp, True)
    if args.compile:
        pipeline.method.wrap(torch.compile, lambda net: net)
    return pipeline


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--method", default="ce", choices=sorted(METHOD_SETUPS))
    parser.add_argument("--seconds", type=float, default=30.0, help="timed seconds per pipeline")
    parser.add_argument("--rounds", type=int, default=3, help="alternating slices per pipeline")
    parser.add_argument("--batch_size", "-b", type=int, default=128)
    parser.add_argument("--workers", "-j", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the papers' pipeline (default: min(4, CPUs))")
    parser.add_argument("--warmup_steps", type=int, default=3, help="untimed steps per pipeline first")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of the CIFAR-10 sample")
    parser.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                        help="precision of the fast path (the papers' pipeline is always fp32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both pipelines (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's network")
    return parser


def main(args: argparse.Namespace) -> float:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu")
    if args.seconds <= 0 or args.rounds < 1:
        raise SystemExit("--seconds must be positive and --rounds at least 1")
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = load_images(args.synthetic)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; method {args.method}; batch {args.batch_size}; {len(source)} images; "
          f"papers' DataLoader workers: {args.workers}; {args.seconds:g} s per pipeline in {args.rounds} slices")
    pipelines = [papers_pipeline(args, source, device), fast_pipeline(args, source, device)]
    for pipeline in pipelines:
        for _ in range(args.warmup_steps):
            pipeline.step()
    for _ in range(args.rounds):
        for pipeline in pipelines:
            pipeline.run_for(args.seconds / args.rounds)
    for pipeline in pipelines:
        epoch = CIFAR_LT_R100_IMAGES / pipeline.rate
        precision = "fp32" if pipeline.amp == "none" else pipeline.amp
        layout = "NCHW" if pipeline.label == "papers" else "channels_last" + (", compiled" if args.compile else "")
        print(f"{pipeline.label:6s} ({precision}, {layout}): "
              f"{pipeline.rate:8.1f} images/s, {pipeline.images} images in {pipeline.seconds:.1f} s; "
              f"CIFAR-10-LT r100 epoch {epoch:.1f} s, 200 epochs {200 * epoch / 60:.1f} min")
    speedup = pipelines[1].rate / pipelines[0].rate
    print(f"speedup {speedup:.2f}")
    return speedup


if __name__ == "__main__":
    main(get_args_parser().parse_args())
