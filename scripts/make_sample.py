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


class SampleError(Exception):
    """Bad input, reported as one line (exit 2) before OUT is touched."""


def read_lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readlines()
    except FileNotFoundError:
        raise SampleError(f"{path} does not exist (SRC must hold train.txt, test.txt and classes.txt)") from None
    except UnicodeDecodeError:
        raise SampleError(f"{path} is not UTF-8 text") from None
    except OSError as error:
        raise SampleError(f"cannot read {path}: {error.strerror or error}") from None


def read_list(path: str, num_classes: int) -> List[Tuple[str, int]]:
    """``relative/path label`` lines of a split file, in file order."""
    entries = []
    for line_number, line in enumerate(read_lines(path), start=1):
        fields = line.strip().rsplit(None, 1)
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) >= num_classes:
            raise SampleError(f"{path}:{line_number}: expected 'relative/path label' with a label below "
                              f"{num_classes}, got {line.strip()!r}")
        entries.append((fields[0], int(fields[1])))
    return entries


def first_per_class(entries: List[Tuple[str, int]], per_class: int, num_classes: int,
                    path: str) -> List[Tuple[str, int]]:
    """The first ``per_class`` entries of every label, keeping the original order."""
    taken: Dict[int, int] = {}
    kept = []
    for relative, label in entries:
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            kept.append((relative, label))
    short = {label: taken.get(label, 0) for label in range(num_classes) if taken.get(label, 0) < per_class}
    if short:
        raise SampleError(f"{path}: classes with fewer than {per_class} images (label: count): {short}")
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


def plan_sample(src: str, train_per_class: int, test_per_class: int) -> Tuple[List[str], Dict[str, list]]:
    """The class names and each split's chosen entries; every listed file must exist."""
    classes = [line.strip() for line in read_lines(os.path.join(src, "classes.txt")) if line.strip()]
    if not classes:
        raise SampleError(f"{os.path.join(src, 'classes.txt')} names no class")
    splits = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        path = os.path.join(src, f"{split}.txt")
        splits[split] = first_per_class(read_list(path, len(classes)), per_class, len(classes), path)
        missing = [relative for relative, _ in splits[split] if not os.path.isfile(os.path.join(src, relative))]
        if missing:
            raise SampleError(f"{path} lists {len(missing)} file(s) missing under {src}, e.g. {missing[0]}")
    return classes, splits


def write_sample(src: str, out: str, classes: List[str], splits: Dict[str, list], train_per_class: int,
                 test_per_class: int) -> None:
    for split, entries in splits.items():
        copy_split(src, out, split, entries, classes)
        per_class = train_per_class if split == "train" else test_per_class
        print(f"{split}: {len(entries)} images ({per_class} per class)", file=sys.stderr)
    with open(os.path.join(out, "classes.txt"), "w", encoding="utf-8") as handle:
        handle.writelines(f"{name}\n" for name in classes)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(README.format(train=train_per_class, test=test_per_class))


def main(argv: List[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="make_sample.py", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="CIFAR-10 JPEG folder with train.txt, test.txt and classes.txt")
    parser.add_argument("out", help="folder to create, e.g. sample_data/cifar10_sample")
    parser.add_argument("--train_per_class", type=POSITIVE_INT, default=500)
    parser.add_argument("--test_per_class", type=POSITIVE_INT, default=100)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it already exists (once the new sample is complete)")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    # The new sample is built beside OUT and moved into place only once it is complete, so a bad
    # SRC, a missing image or a full disk leaves OUT (and an earlier sample in it) as it was.
    building = f"{out}.building-{os.getpid()}"
    try:
        if os.path.exists(out) and not args.overwrite:
            raise SampleError(f"{args.out} exists; pass --overwrite to rebuild it")
        if os.path.islink(out):
            raise SampleError(f"{args.out} is a symbolic link: give the folder it points to")
        if os.path.exists(out) and not os.path.isdir(out):
            raise SampleError(f"{args.out} is a file, not a sample folder: choose another OUT")
        source = os.path.realpath(args.src)
        if os.path.commonpath([source, os.path.realpath(out)]) in (source, os.path.realpath(out)):
            raise SampleError(f"{args.out} and SRC {args.src} lie one inside the other: write the sample elsewhere")
        classes, splits = plan_sample(args.src, args.train_per_class, args.test_per_class)
        os.makedirs(building)
        write_sample(args.src, building, classes, splits, args.train_per_class, args.test_per_class)
        if os.path.exists(out):
            replaced = f"{out}.replaced-{os.getpid()}"
            os.rename(out, replaced)
            try:
                os.rename(building, out)
            except OSError:
                os.rename(replaced, out)  # the earlier sample goes back where it was
                raise
            shutil.rmtree(replaced)
        else:
            os.rename(building, out)
    except SampleError as error:
        print(f"make_sample.py: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"make_sample.py: error: cannot write {args.out}: {error.strerror or error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
