"""Training throughput: the papers' data pipeline against the toolkit's fast path, in one process.

    python scripts/bench_throughput.py --device cpu --method ce --seconds 60
    python scripts/bench_throughput.py --device cuda --method ce bccl lcsl --seconds 20 --json bench.json

Both pipelines train the same ResNet-32 with SGD on the same images (the bundled CIFAR-10 sample,
5,000 images at imbalance 1, or ``--synthetic`` random images) with the same method step:

* papers: the PIL recipe in a ``DataLoader`` (``--workers`` processes, persistent, so worker
  start-up is not charged), ToTensor + Normalize per image, fp32, NCHW;
* fast: ``DeviceLoader`` (data on the device, batched tensor augmentation), channels_last, and
  ``--amp auto``: bf16 autocast on GPUs and on CPUs with native bf16 (AVX512-BF16 / AMX), fp16
  with loss scaling on GPUs without bf16, fp32 on other CPUs (emulated bf16 is several times
  slower than fp32 there).

Each method is timed in the state it trains in for most of a run, entered before the clock
starts: ``lcsl`` with a trained teacher (the student is copied into it, as after LCSL's first
evaluation), so every step includes the teacher's flip-averaged forward; ``bccl`` with full
class queues, in a plain epoch past the warm-up (centroid loss, no k-means) and in a k-means
refresh epoch (the queues re-clustered at every step, as the reference does). Each phase runs
``--seconds`` per pipeline, split into ``--rounds`` alternating slices so that load from other
processes falls on both alike, and prints ``speedup X.XX`` (fast / papers) for that phase; a
method with several phases ends with the speedup over its 200-epoch schedule. Methods: ``ce``
(ERM, crop + flip), ``bccl`` (two views: AutoAugment + SimCLR, cosine classifier), ``lcsl``
(mixup + flip-averaged teacher, crop + flip), each through its registered ``training_step``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

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
from utils.config import AMP_CHOICES, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, OneLineErrorParser  # noqa: E402
from utils.engine import DeviceInputs, autocast_context, make_scaler, resolve_amp  # noqa: E402

class Setup(NamedTuple):
    """How the benchmark builds one method: as its entry script trains it on CIFAR."""

    registered: str  # name in methods.METHODS
    options: Dict[str, Any]  # the method's own options
    recipes: Tuple[str, ...]  # CIFAR augmentation recipe per view
    head: str = "linear"  # classifier head (HEADS name)
    head_scale: Optional[float] = None  # cosine-head logit scale


class Phase(NamedTuple):
    """One steady state of a method: the epoch index its step is called with, and what it runs."""

    label: str  # short name (JSON key)
    epoch: int  # 0-based epoch passed to on_epoch_start / training_step
    what: str


METHOD_SETUPS: Dict[str, Setup] = {
    "ce": Setup("erm", {"loss": "ce"}, ("standard",)),
    # BCCL's CIFAR sim-sim views and its cosine classifier (logits = cos / 0.03), main.py's defaults.
    "bccl": Setup("bccl", {}, ("autoaug", "simclr"), head="normed", head_scale=1 / 0.03),
    "lcsl": Setup("lcsl", {}, ("standard",)),  # LCSL's README command trains with crop + flip
}
# BCCL's defaults: warm-up 10 epochs, re-clustering at epoch 10 and every 10th epoch after it.
PHASES: Dict[str, Tuple[Phase, ...]] = {
    "ce": (Phase("train", 0, "every epoch"),),
    "lcsl": (Phase("teacher", 1, "every step also runs the teacher on the image and its mirror"),),
    "bccl": (Phase("plain", 11, "centroid loss, no k-means"),
             Phase("refresh", 10, "k-means refresh epoch: the class queues re-clustered at every step")),
}
SCHEDULE_EPOCHS = 200
CIFAR_LT_R100_IMAGES = 12406  # training images of CIFAR-10-LT at imbalance ratio 100


def phase_epochs(name: str, method) -> Dict[str, int]:
    """Epochs of a 200-epoch run spent in each phase. BCCL's warm-up epochs (no centroid loss)
    count as plain ones, and LCSL's first epoch (no teacher yet) as one with the teacher."""
    if name == "bccl":
        refresh = sum(bool(method.is_refresh_epoch(epoch)) for epoch in range(SCHEDULE_EPOCHS))
        return {"plain": SCHEDULE_EPOCHS - refresh, "refresh": refresh}
    return {PHASES[name][0].label: SCHEDULE_EPOCHS}


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
    setup = METHOD_SETUPS[name]
    if setup.registered not in METHODS:
        raise SystemExit(f"method '{setup.registered}' is not registered in methods.METHODS "
                         f"(have: {', '.join(METHODS.names())}); cannot benchmark --method {name}")
    model = build_model("resnet32", 10, head=setup.head, scale=setup.head_scale)
    return build_method(setup.registered, model, [500] * 10, **setup.options).to(device)


class Pipeline:
    """One way of training: a batch source, an input preparation, a precision and a layout."""

    def __init__(self, label: str, method_name: str, batches: Iterator, prepare: Callable, device: torch.device,
                 amp: str, channels_last: bool, lr: float = 0.1):
        self.label, self.batches, self.prepare, self.device, self.amp = label, batches, prepare, device, amp
        self.method_name = method_name
        self.method = build_method_for(method_name, device)
        if channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.method.train()
        self.epoch = 0
        self.method.on_epoch_start(0)
        self.optimizer = torch.optim.SGD(self.method.optim_parameters(), lr=lr, momentum=0.9, weight_decay=2e-4,
                                         fused=True if device.type == "cuda" else None)
        self.scaler = make_scaler(device, amp)
        self.images = 0
        self.seconds = 0.0

    def step(self) -> int:
        images, targets, indices = self.prepare(next(self.batches))
        with autocast_context(self.device, self.amp):
            out = self.method.training_step(images, targets, self.epoch, indices)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return targets.shape[0]

    def enter_steady_state(self, batch_size: int, fill_steps: Optional[int] = None) -> str:
        """Brings the method to the state it trains in after its first epochs; returns a note."""
        method = self.method
        if self.method_name == "lcsl":
            # As after LCSL's first evaluation: any score beats the initial -inf, so the student
            # becomes the teacher and labels every later batch.
            method.on_epoch_end(0, {method.options.select_on: {"mean_per_class": 0.0}})
            return "the student copied into the teacher, as after the first evaluation"
        if self.method_name == "bccl":
            # Full class queues, as after the first epoch: untimed steps until every class has
            # queue_size entries (at most twice the steps that would fill them with balanced
            # batches, or fill_steps), then centroids from them.
            queues = method.queues
            needed = math.ceil(queues.features.shape[0] * queues.size / (method.num_views * batch_size))
            limit = 2 * needed if fill_steps is None else fill_steps
            steps = 0
            while steps < limit and int(queues.count.min()) < queues.size:
                self.step()
                steps += 1
            method.refresh_centroids()
            filled = float(queues.count.float().mean()) / queues.size
            return f"class queues {100 * filled:.0f}% full after {steps} untimed steps"
        return ""

    def state(self) -> Dict[str, Any]:
        """What shows the timed steps ran in the intended state (checked by the tests)."""
        method = self.method
        if self.method_name == "lcsl":
            # Teacher labels given since the phase's epoch start: one per image once it is active.
            return {"teacher_epoch": int(method.teacher_epoch), "teacher_labels": int(method.teacher_labels.sum())}
        if self.method_name == "bccl":
            return {"kmeans_runs": int(method.kmeans_runs),
                    "queue_fill": float(method.queues.count.float().mean()) / method.queues.size}
        return {}

    def enter(self, phase: Phase, warmup_steps: int) -> None:
        """Starts the phase's epoch and runs untimed steps in it (compilation, cuDNN autotuning)."""
        self.epoch = phase.epoch
        self.method.on_epoch_start(phase.epoch)
        for _ in range(warmup_steps):
            self.step()
        self.images, self.seconds = 0, 0.0

    def run_for(self, seconds: float) -> None:
        start = time.perf_counter()
        images = 0
        while time.perf_counter() - start < seconds:
            images += self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.images += images
        self.seconds += time.perf_counter() - start

    @property
    def rate(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def papers_pipeline(args, method: str, source: ImageSource, device: torch.device) -> Pipeline:
    recipes = METHOD_SETUPS[method].recipes
    transform = FloatNormalize(build_views(list(recipes), "cifar", 32), CIFAR_MEAN, CIFAR_STD)
    loader = torch.utils.data.DataLoader(
        ImageDataset(source, transform), batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)

    def prepare(batch):
        views, targets, indices = batch
        move = lambda v: v.to(device, non_blocking=True)  # noqa: E731
        views = tuple(move(v) for v in views) if isinstance(views, (list, tuple)) else move(views)
        return views, move(targets), indices

    return Pipeline("papers", method, endless(lambda: iter(loader)), prepare, device, "none", False)


def fast_pipeline(args, method: str, source: ImageSource, device: torch.device, mode: Optional[str]) -> Pipeline:
    recipes = METHOD_SETUPS[method].recipes
    transform = build_tensor_views(list(recipes), "cifar", 32)
    loader = DeviceLoader(source, transform, args.batch_size, device=device, seed=0, drop_last=True)
    inputs = DeviceInputs(CIFAR_MEAN, CIFAR_STD, device, channels_last=True)
    epochs = iter(range(10 ** 9))

    def next_epoch():
        loader.set_epoch(next(epochs))
        return iter(loader)

    amp = resolve_amp(args.amp, device)
    pipeline = Pipeline("fast", method, endless(next_epoch), inputs, device, amp, True)
    if mode is not None:
        pipeline.method.wrap(lambda net: torch.compile(net, mode=mode), lambda net: net)
    return pipeline


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="bench_throughput.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--method", nargs="+", default=["ce"], choices=sorted(METHOD_SETUPS),
                        help="one or more methods, timed one after the other")
    parser.add_argument("--seconds", type=POSITIVE, default=30.0, help="timed seconds per pipeline and phase")
    parser.add_argument("--rounds", type=POSITIVE_INT, default=3, help="alternating slices per pipeline")
    parser.add_argument("--batch_size", "-b", type=POSITIVE_INT, default=128)
    parser.add_argument("--workers", "-j", type=NON_NEGATIVE_INT, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the papers' pipeline (default: min(4, CPUs))")
    parser.add_argument("--warmup_steps", type=NON_NEGATIVE_INT, default=3,
                        help="untimed steps per pipeline and phase first")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of the CIFAR-10 sample")
    parser.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                        help="precision of the fast path (the papers' pipeline is always fp32)")
    parser.add_argument("--threads", type=POSITIVE_INT, default=None,
                        help="torch threads for both pipelines (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast path's network")
    parser.add_argument("--compile_mode", default=None, choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile mode of the fast path (implies --compile); reduce-overhead captures "
                             "the network's forward and backward in CUDA graphs (on CUDA only)")
    parser.add_argument("--queue_fill_steps", type=NON_NEGATIVE_INT, default=None,
                        help="bccl: untimed steps at most that fill the class queues before timing "
                             "(default: until full, at most twice the steps balanced batches need)")
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    return parser


def compile_mode(args: argparse.Namespace, device: torch.device) -> Optional[str]:
    """The torch.compile mode of the fast path, or None when it runs eagerly."""
    if args.compile_mode is None:
        return "default" if args.compile else None
    if args.compile_mode == "reduce-overhead" and device.type != "cuda":
        # CUDA graphs exist on CUDA only; inductor would silently compile as 'default' here.
        print("note: --compile_mode reduce-overhead captures CUDA graphs, which the CPU has not: "
              "compiling with mode 'default'")
        return "default"
    return args.compile_mode


def describe(pipeline: Pipeline, mode: Optional[str]) -> str:
    precision = "fp32" if pipeline.amp == "none" else pipeline.amp
    compiled = "" if mode is None else ", compiled" + ("" if mode == "default" else f" ({mode})")
    layout = "NCHW" if pipeline.label == "papers" else "channels_last" + compiled
    return f"{pipeline.label} ({precision}, {layout})"


def bench_method(args, name: str, source: ImageSource, device: torch.device, mode: Optional[str]) -> Dict[str, Any]:
    """Times one method's phases in both pipelines (`mode`: the fast path's torch.compile mode);
    prints and returns the numbers."""
    pipelines = [papers_pipeline(args, name, source, device), fast_pipeline(args, name, source, device, mode)]
    print(f"== {name}")
    for pipeline in pipelines:
        note = pipeline.enter_steady_state(args.batch_size, args.queue_fill_steps)
        if note:
            print(f"   {pipeline.label}: {note}")
    result: Dict[str, Any] = {"phases": {}}
    for phase in PHASES[name]:
        for pipeline in pipelines:
            pipeline.enter(phase, args.warmup_steps)
        for _ in range(args.rounds):
            for pipeline in pipelines:
                pipeline.run_for(args.seconds / args.rounds)
        several = len(PHASES[name]) > 1
        if several:
            print(f"-- {phase.label} (epoch {phase.epoch + 1}: {phase.what})")
        numbers: Dict[str, Any] = {"epoch": phase.epoch + 1}
        for pipeline in pipelines:
            epoch = CIFAR_LT_R100_IMAGES / pipeline.rate
            print(f"{describe(pipeline, mode):40s} {pipeline.rate:8.1f} images/s, {pipeline.images} images "
                  f"in {pipeline.seconds:.1f} s; CIFAR-10-LT r100 epoch {epoch:.1f} s")
            numbers[pipeline.label] = {"images_per_s": pipeline.rate, "epoch_s": epoch, "images": pipeline.images,
                                       "state": pipeline.state()}
        numbers["speedup"] = pipelines[1].rate / pipelines[0].rate
        if several:
            print(f"{phase.label} speedup {numbers['speedup']:.2f}")
        result["phases"][phase.label] = numbers
    epochs = phase_epochs(name, pipelines[0].method)
    totals = {label: sum(result["phases"][phase][label]["epoch_s"] * count for phase, count in epochs.items())
              for label in ("papers", "fast")}
    result["schedule_epochs"] = epochs
    result["run_200_epochs_s"] = totals
    result["speedup"] = totals["papers"] / totals["fast"]
    schedule = f" ({', '.join(f'{count} {phase}' for phase, count in epochs.items())})" if several else ""
    print(f"{SCHEDULE_EPOCHS} epochs of CIFAR-10-LT r100{schedule}, training only: "
          f"papers {totals['papers'] / 60:.1f} min, fast {totals['fast'] / 60:.1f} min")
    print(f"speedup {result['speedup']:.2f}")
    return result


def main(args: argparse.Namespace) -> float:
    """Benchmarks every --method; returns the speedup of the last one over its schedule."""
    if args.device == "cuda" and not torch.cuda.is_available():
        get_args_parser().error("--device cuda: no CUDA device is visible; use --device cpu")
    methods = list(dict.fromkeys([args.method] if isinstance(args.method, str) else args.method))
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = load_images(args.synthetic)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; methods {', '.join(methods)}; batch {args.batch_size}; {len(source)} images; "
          f"papers' DataLoader workers: {args.workers}; {args.seconds:g} s per pipeline and phase in "
          f"{args.rounds} slices")
    mode = compile_mode(args, device)
    results = {method: bench_method(args, method, source, device, mode) for method in methods}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"device": name, "batch_size": args.batch_size, "seconds": args.seconds,
                       "amp": resolve_amp(args.amp, device), "compile_mode": mode, "methods": results},
                      stream, indent=2)
    return results[methods[-1]]["speedup"]


if __name__ == "__main__":
    main(get_args_parser().parse_args())
