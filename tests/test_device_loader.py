"""DeviceLoader: the batches of the PIL path's samplers, the right images and targets, and
augmentations reproducible per (seed, epoch)."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from datasets.augment import build_views
from datasets.augment.tensor import build_tensor_transform, build_tensor_views
from datasets.base import ImageSource
from datasets.device_loader import DeviceLoader, augmentation_seed
from datasets.loaders import build_train_loader
from datasets.samplers import build_sampler
from utils.engine import DeviceInputs

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def labelled_source(n: int = 50, num_classes: int = 5) -> ImageSource:
    """Image i is filled with (i, i // 256, label): its position and class are readable from pixels."""
    targets = np.arange(n) % num_classes
    array = np.zeros((n, 8, 8, 3), dtype=np.uint8)
    array[..., 0] = (np.arange(n) % 256).reshape(-1, 1, 1)
    array[..., 1] = (np.arange(n) // 256).reshape(-1, 1, 1)
    array[..., 2] = targets.reshape(-1, 1, 1)
    return ImageSource(targets, array=array)


def identity():
    return build_tensor_transform("test", "cifar", 8)


def collect(loader):
    return [(views, targets, indices) for views, targets, indices in loader]


@pytest.mark.parametrize("device", DEVICES)
def test_batches_hold_the_images_and_targets_their_indices_name(device):
    source = labelled_source()
    loader = DeviceLoader(source, identity(), batch_size=16, device=device, seed=3)
    batches = collect(loader)
    assert [len(t) for _, t, _ in batches] == [16, 16, 16, 2] and len(loader) == 4
    for views, targets, indices in batches:
        assert views.dtype == torch.uint8 and views.shape[1:] == (3, 8, 8)
        assert views.device.type == device and targets.device.type == device and indices.device.type == "cpu"
        assert torch.equal(views[:, 0, 0, 0].cpu().long(), indices % 256)
        assert torch.equal(targets.cpu(), torch.from_numpy(source.targets)[indices])


def test_order_is_the_pil_paths_shuffle_for_every_epoch():
    source = labelled_source()
    loader = DeviceLoader(source, identity(), batch_size=16, seed=7)
    reference = build_train_loader(source, build_views(["test"], "cifar", 8), 16, seed=7)
    for epoch in (0, 1, 5):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        ours = [indices for _, _, indices in loader]
        theirs = [indices for _, _, indices in reference]
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs)) and len(ours) == len(theirs)
        order = torch.cat(ours)
        assert torch.equal(order, torch.as_tensor(list(iter(reference.sampler))))
        assert sorted(order.tolist()) == list(range(len(source)))
    loader.set_epoch(0)
    first = torch.cat([i for _, _, i in loader])
    loader.set_epoch(1)
    assert not torch.equal(first, torch.cat([i for _, _, i in loader]))


def test_a_given_sampler_decides_the_positions():
    source = labelled_source()
    sampler = build_sampler("class_balanced", source.targets, 5, seed=2)
    loader = DeviceLoader(source, identity(), batch_size=10, sampler=sampler, seed=2, drop_last=True)
    loader.set_epoch(4)
    sampler_copy = build_sampler("class_balanced", source.targets, 5, seed=2)
    sampler_copy.set_epoch(4)
    expected = torch.as_tensor(list(iter(sampler_copy)))
    assert torch.equal(torch.cat([i for _, _, i in loader]), expected[: len(loader) * 10])


def test_ranks_split_the_epoch():
    source = labelled_source(n=51)
    shards = [torch.cat([i for _, _, i in DeviceLoader(source, identity(), 8, seed=1, rank=r, world_size=2)])
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 26  # padded by wrapping, as ShuffleSampler does
    assert set(torch.cat(shards).tolist()) == set(range(51))


def test_drop_last_and_length():
    loader = DeviceLoader(labelled_source(), identity(), batch_size=16, drop_last=True)
    assert len(loader) == 3 and [len(t) for _, t, _ in loader] == [16, 16, 16]


def test_augmentation_is_reproducible_per_seed_and_epoch():
    source = ImageSource(np.zeros(40, dtype=np.int64),
                         array=np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    recipe = build_tensor_views(["autoaug", "simclr"], "cifar", 32)

    def epoch_views(seed, epoch):
        loader = DeviceLoader(source, recipe, batch_size=16, seed=seed)
        loader.set_epoch(epoch)
        return [views for views, _, _ in loader]

    first = epoch_views(0, 2)
    assert all(isinstance(v, tuple) and len(v) == 2 for v in first)
    again = epoch_views(0, 2)  # a resumed run rebuilds the loader and calls set_epoch(2)
    assert all(torch.equal(a, b) for va, vb in zip(first, again) for a, b in zip(va, vb))
    for other in (epoch_views(0, 3), epoch_views(1, 2)):
        assert not torch.equal(first[0][0], other[0][0])


def test_seeds_differ_across_seed_epoch_and_rank():
    seeds = {augmentation_seed(s, e, r) for s in range(4) for e in range(50) for r in range(4)}
    assert len(seeds) == 4 * 50 * 4


def test_augmentation_thread_cap_is_restored():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the suite runs on one thread, where a cap of 1 would change nothing
    try:
        loader = DeviceLoader(labelled_source(), build_tensor_transform("standard", "cifar", 8), batch_size=16)
        for _ in loader:
            assert torch.get_num_threads() == 2  # capped only while the transform runs
        assert loader.cpu_aug_threads == 1
    finally:
        torch.set_num_threads(before)


def test_engine_normalises_device_batches():
    source = labelled_source()
    loader = DeviceLoader(source, identity(), batch_size=16)
    inputs = DeviceInputs((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    images, targets, _ = inputs(next(iter(loader)))
    assert images.dtype == torch.float32 and images.shape == (16, 3, 8, 8)
    assert targets.dtype == torch.int64


def test_file_based_sources_are_refused(tmp_path):
    source = ImageSource(np.zeros(1, dtype=np.int64), paths=[str(tmp_path / "a.png")])
    with pytest.raises(ValueError, match="aug_backend pil"):
        DeviceLoader(source, identity(), batch_size=4)


def test_throughput_benchmark_runs_both_pipelines(capsys):
    """scripts/bench_throughput.py end to end, for a fraction of a second per pipeline."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bench_throughput.py")
    spec = importlib.util.spec_from_file_location("bench_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.get_args_parser().parse_args(["--seconds", "0.4", "--rounds", "1", "--batch_size", "8",
                                               "--workers", "0", "--warmup_steps", "1", "--synthetic"])
    speedup = bench.main(args)
    lines = capsys.readouterr().out.strip().splitlines()
    assert speedup > 0 and lines[-1] == f"speedup {speedup:.2f}"
    assert any(line.startswith("papers") for line in lines) and any(line.startswith("fast") for line in lines)


def test_throughput_benchmark_flags_are_checked_as_typed(capsys):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bench_throughput.py")
    spec = importlib.util.spec_from_file_location("bench_throughput", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for argv, fragment in ((["--seconds", "nan"], "--seconds"), (["--seconds", "0"], "--seconds"),
                           (["--rounds", "0"], "--rounds"), (["-b", "-1"], "-b"), (["--threads", "0"], "--threads")):
        with pytest.raises(SystemExit) as stop:
            bench.get_args_parser().parse_args(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and fragment in err and err.count("\n") == 1, err
