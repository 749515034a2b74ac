"""Builds the bundled CIFAR-10 sample from a CIFAR-10 JPEG folder.

    python scripts/make_sample.py PATH/cifar10-jpeg sample_data/cifar10_sample

SRC must hold ``train.txt`` / ``test.txt`` (``relative/path label`` lines) and ``classes.txt``.
The sample is BALANCED, so any long-tail recipe can be cut from it later: the first
``--train_per_class`` training images of each class in train.txt order and the first
``--test_per_class`` test images of each class. Files are copied byte for byte (no re-encoding,
so the pixels equal the source's) to ``{train,test}/<class>/NNNN.jpg``; the written train.txt
keeps the source order.
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Dict, List, Tuple

# Runnable as ``python scripts/make_sample.py`` from anywhere: make the packages importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.config import POSITIVE_INT, OneLineErrorParser  # noqa: E402  (torch-free)

README = """# CIFAR-10 sample

A balanced slice of CIFAR-10 (Krizhevsky, 2009) for running the CIFAR code paths offline:
the first {train} training images of each class in the original training order and the first
{test} test images of each class, as JPEG files (a lossy re-encoding of the original pixels).
`train.txt` / `test.txt` hold `relative/path label` lines, `classes.txt` the class names in label
order. Load it with `--dataset cifar10_sample`; it is rebuilt by `scripts/make_sample.py`.
"""


def read_list(path: str) -> List[Tuple[str, int]]:
    """``relative/path label`` lines of a split file, in file order."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.strip().rsplit(None, 1)
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].isdigit():
                raise SystemExit(f"{path}:{line_number}: expected 'relative/path label', got {line.strip()!r}")
            entries.append((fields[0], int(fields[1])))
    return entries


def first_per_class(entries: List[Tuple[str, int]], per_class: int) -> List[Tuple[str, int]]:
    """The first ``per_class`` entries of every label, keeping the original order."""
    taken: Dict[int, int] = {}
    kept = []
    for relative, label in entries:
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            kept.append((relative, label))
    short = {label: n for label, n in taken.items() if n < per_class}
    if short:
        raise SystemExit(f"classes with fewer than {per_class} images: {short}")
    return kept


def copy_split(src: str, out: str, split: str, entries: List[Tuple[str, int]], classes: List[str]) -> None:
    """Copies the chosen files to ``split/<class>/NNNN.jpg`` and writes ``split.txt``."""
    numbers: Dict[int, int] = {}
    lines = []
    for relative, label in entries:
        number = numbers.get(label, 0)
        numbers[label] = number + 1
        target = f"{split}/{classes[label]}/{number:04d}.jpg"
        os.makedirs(os.path.join(out, os.path.dirname(target)), exist_ok=True)
        shutil.copyfile(os.path.join(src, relative), os.path.join(out, target))
        lines.append(f"{target} {label}\n")
    with open(os.path.join(out, f"{split}.txt"), "w", encoding="utf-8") as handle:
        handle.writelines(lines)


def main(argv: List[str] | None = None) -> None:
    parser = OneLineErrorParser(prog="make_sample.py", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="CIFAR-10 JPEG folder with train.txt, test.txt and classes.txt")
    parser.add_argument("out", help="folder to create, e.g. sample_data/cifar10_sample")
    parser.add_argument("--train_per_class", type=POSITIVE_INT, default=500)
    parser.add_argument("--test_per_class", type=POSITIVE_INT, default=100)
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already exists")
    args = parser.parse_args(argv)

    if os.path.exists(args.out):
        if not args.overwrite:
            raise SystemExit(f"{args.out} exists; pass --overwrite to rebuild it")
        shutil.rmtree(args.out)
    with open(os.path.join(args.src, "classes.txt"), encoding="utf-8") as handle:
        classes = [line.strip() for line in handle if line.strip()]
    os.makedirs(args.out)
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        entries = first_per_class(read_list(os.path.join(args.src, f"{split}.txt")), per_class)
        copy_split(args.src, args.out, split, entries, classes)
        print(f"{split}: {len(entries)} images ({per_class} per class)", file=sys.stderr)
    with open(os.path.join(args.out, "classes.txt"), "w", encoding="utf-8") as handle:
        handle.writelines(f"{name}\n" for name in classes)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(README.format(train=args.train_per_class, test=args.test_per_class))


if __name__ == "__main__":
    main()
