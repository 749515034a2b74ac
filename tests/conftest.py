"""Shared fixtures: tiny synthetic CIFAR pickle folders and list-file datasets in tmp_path.

The pickles use the official layout and keys (N x 3072 channel-planar uint8 rows), and each
image carries its own position in the training file in its first two red pixels, so a test can
check that a subset holds exactly the images its indices name.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

# One OpenMP thread for the tests, the entry scripts they start and the DDP ranks they spawn (all
# read this variable when torch loads, which happens after this file): the tensors here are tiny and
# the test machines have two shared cores, where a second thread only waits for the first and
# oversubscribed ranks run several times slower. A value set by the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class SyntheticCifar:
    """What a fixture wrote, for the tests to compare against."""

    root: str  # the data_root (the pickle folder sits below it)
    train_rows: np.ndarray  # uint8, N x 3072, in file order
    train_labels: np.ndarray
    test_labels: np.ndarray
    class_names: List[str]


def _rows(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    positions = np.arange(len(labels))
    # Red plane, pixels (0, 0) and (0, 1): the image's position in its file, little-endian.
    rows[:, 0] = positions % 256
    rows[:, 1] = positions // 256
    return rows


def _dump(path: str, entry: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


def write_cifar(
    root: str, num_classes: int, train_per_class: int, test_per_class: int, seed: int = 0
) -> SyntheticCifar:
    """Writes ``cifar-10-batches-py`` (C = 10) or ``cifar-100-python`` (C = 100) below ``root``.

    Training labels are shuffled, as in the real files, so selection order matters.
    """
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.repeat(np.arange(num_classes), train_per_class))
    test_labels = np.repeat(np.arange(num_classes), test_per_class)
    train_rows, test_rows = _rows(train_labels, rng), _rows(test_labels, rng)
    names = [f"class_{c:02d}" for c in range(num_classes)]
    if num_classes == 10:
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder, exist_ok=True)
        for i, (rows, labels) in enumerate(zip(np.array_split(train_rows, 5), np.array_split(train_labels, 5)), 1):
            _dump(os.path.join(folder, f"data_batch_{i}"), {"data": rows, "labels": labels.tolist()})
        _dump(os.path.join(folder, "test_batch"), {"data": test_rows, "labels": test_labels.tolist()})
        _dump(os.path.join(folder, "batches.meta"), {"label_names": names, "num_vis": 3072})
    else:
        folder = os.path.join(root, "cifar-100-python")
        os.makedirs(folder, exist_ok=True)
        for name, rows, labels in (("train", train_rows, train_labels), ("test", test_rows, test_labels)):
            entry = {
                "data": rows,
                "fine_labels": labels.tolist(),
                "coarse_labels": (labels // 5).tolist(),
                "filenames": [f"{name}_{i}.png" for i in range(len(labels))],
            }
            _dump(os.path.join(folder, name), entry)
        _dump(os.path.join(folder, "meta"), {"fine_label_names": names, "coarse_label_names": names[::5]})
    return SyntheticCifar(root, train_rows, train_labels, test_labels, names)


def run_ranks(worker, *args, world_size: int = 2) -> None:
    """Runs ``worker(rank, world_size, port, *args)`` in ``world_size`` processes (a DDP group on a
    free local port) and waits for all of them; an exception in a rank fails the caller.

    The ranks are spawned, not forked: a fork copies the test process's threads' locks (torch's
    pools, tensorboardX writers of earlier tests) in whatever state they are, and a forked rank
    could then wait forever on a lock no thread will release.
    """
    import socket

    import torch.multiprocessing

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.multiprocessing.start_processes(worker, args=(world_size, port, *args), nprocs=world_size, join=True,
                                          start_method="spawn")


def run_entry(module, prog: str, argv: List[str], capsys) -> tuple:
    """An entry script's own path (its parser, then ``main`` under ``run_guarded``, as its
    ``__main__`` block does) inside the test process, which has the toolkit imported already:
    returns (exit code, stdout, stderr). Each entry script keeps a real-process test elsewhere."""
    from utils.cli import run_guarded

    args = module.get_args_parser().parse_args(list(argv))
    capsys.readouterr()
    code = run_guarded(prog, lambda: module.main(args))
    printed = capsys.readouterr()
    return code, printed.out, printed.err


@pytest.fixture
def cifar10_root(tmp_path) -> SyntheticCifar:
    """CIFAR-10 layout, 40 training and 4 test images per class."""
    return write_cifar(str(tmp_path / "data"), 10, 40, 4)


@pytest.fixture
def cifar100_root(tmp_path) -> SyntheticCifar:
    """CIFAR-100 layout, 12 training and 2 test images per class."""
    return write_cifar(str(tmp_path / "data"), 100, 12, 2, seed=1)


@dataclass
class SyntheticLists:
    """A folder of images and a folder of split files named as upstream."""

    data_root: str
    split_dir: str
    train_counts: List[int]


def write_image_lists(tmp_path, prefix: str, splits: List[str], train_counts: List[int] = (5, 3, 1)) -> SyntheticLists:
    """Small PNGs under ``data_root/<split>/<class>/`` and ``<prefix>_<split>.txt`` lists."""
    data_root, split_dir = tmp_path / "images", tmp_path / "splits"
    split_dir.mkdir(parents=True, exist_ok=True)
    for split in splits:
        counts = list(train_counts) if split == "train" else [2] * len(train_counts)
        lines = []
        for label, count in enumerate(counts):
            folder = data_root / split / f"c{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (8, 6), (label * 40, i * 20, 7)).save(folder / f"{i}.png")
                lines.append(f"{split}/c{label}/{i}.png {label}\n")
        (split_dir / f"{prefix}_{split}.txt").write_text("".join(lines))
    return SyntheticLists(str(data_root), str(split_dir), list(train_counts))


@pytest.fixture
def imagenet_lt_lists(tmp_path) -> SyntheticLists:
    return write_image_lists(tmp_path, "ImageNet_LT", ["train", "val", "test"])


class QuietLogger:
    """The run logger's interface, writing nothing (engine tests that drive `fit` directly)."""

    def info(self, *args, **kwargs):
        pass

    def scalars(self, *args):
        pass

    def per_class(self, *args):
        pass

    def forget_per_class_after(self, *args):
        pass


class FlatBackbone(torch.nn.Module):
    """A batch-independent backbone (no BatchNorm), so per-rank and global batches give the same
    gradient: what the DDP-against-one-process tests compare."""

    out_dim = 8

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, 8)

    def forward(self, x):
        return torch.relu(self.layer(x.flatten(1)))
