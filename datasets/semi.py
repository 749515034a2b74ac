"""Pseudo-labelled extra data for the semi-supervised setting of Yang & Xu, "Rethinking the Value
of Labels for Improving Class-Imbalanced Learning" (NeurIPS 2020), Sec. 3 and docs/semi_self.md#pseudo-labels.

Three steps: a classifier trained on the labelled long-tailed set D_L labels an unlabelled *pool*
(``scripts/gen_pseudolabels.py`` writes a pseudo-label file); ``add_pseudo_labeled`` then draws
from that file a subset D_U with the paper's per-class sizes and appends it, with its pseudo
labels, to the training set.

Pools (each a ``Pool``): ``leftover_pool`` (the training images the long-tailed cut left out;
offline, but on CIFAR reverse-imbalanced and empty for the head class), ``ti_pickle_pool`` (the
paper's ``ti_80M_selected.pickle``), ``svhn_extra_pool`` (SVHN's ``extra`` split) and
``image_folder_pool`` / ``image_list_pool`` (any images).

Pseudo-label file: a NumPy ``.npz`` archive, written atomically and read with
``allow_pickle=False``, so it cannot carry code. Arrays (absent when None)::

    pseudo_labels     int64 (N,)      argmax of the classifier (what training uses)
    confidences       float32 (N,)    max softmax probability of that prediction
    reference_labels  int64 (N,)      labels known for the pool (true CIFAR / SVHN labels, or
                                      the TI selection's ``extrapolated_targets``); used ONLY to
                                      choose which images enter D_U, as the paper does
    images            uint8 (N, H, W, 3)   pixels (in-memory pools) ...
    paths             str (N,)             ... or absolute image paths
    labeled_indices   int64           leftover pools: the labelled subset the pool excludes
    validation_indices int64          leftover pools: the validation split the pool excludes
    meta              str ()          JSON: format "ltkit-pseudo-labels", version 2, num_classes,
                                      dataset, pool, pool_kind, validation_size, prediction_model,
                                      threshold (None: all kept, the paper), pool_size

Version 1 files were pickles; they are refused (regenerate them). The paper's
``ti_80M_selected.pickle`` pool is read with the restricted ``ArrayUnpickler`` of CIFAR's pickles.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .base import DatasetError, ImageSource, LongTailData
from .cifar_lt import UnsafePickleError, read_array_pickle
from .list_dataset import text_lines
from .longtail import unlabeled_class_counts

FORMAT_NAME = "ltkit-pseudo-labels"
FORMAT_VERSION = 2  # 1: a pickle (refused, as pickles can carry code)
# Optional arrays of the archive, absent when the pool has none.
OPTIONAL_ARRAYS = ("reference_labels", "images", "paths", "labeled_indices", "validation_indices")
# Pool kinds, as pseudo-label files and results.json record them; the papers drew D_U from the
# first two (80M-TinyImages for CIFAR, SVHN extra for SVHN), the others are this toolkit's.
PAPER_POOLS = ("tinyimages", "svhn_extra")
POOL_KINDS = PAPER_POOLS + ("leftover", "images")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff")


@dataclass
class Pool:
    """Unlabelled images to pseudo-label: pixels or paths, with reference labels when known."""

    name: str  # what the pool is, recorded in the pseudo-label file
    kind: str = "images"  # one of POOL_KINDS: tables tell the papers' pools from the others
    images: Optional[np.ndarray] = None  # uint8 (N, H, W, 3)
    paths: Optional[List[str]] = None  # absolute image paths
    reference_labels: Optional[np.ndarray] = None  # int64 (N,), selection only
    labeled_indices: Optional[np.ndarray] = None  # leftover pools: the labelled subset they exclude
    validation_size: int = 0  # leftover pools: images of the validation split they also exclude
    validation_indices: Optional[np.ndarray] = None  # ... and which (positions in the training file)

    def __post_init__(self):
        if (self.images is None) == (self.paths is None):
            raise ValueError("a Pool holds either images or paths, not both")
        if self.reference_labels is not None:
            self.reference_labels = np.asarray(self.reference_labels, dtype=np.int64)
            if len(self.reference_labels) != len(self):
                raise DatasetError(f"pool {self.name}: {len(self)} images but {len(self.reference_labels)} labels")

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.paths)

    def source(self) -> ImageSource:
        """The pool as an ImageSource for the evaluation loaders (targets: reference labels or 0)."""
        targets = self.reference_labels if self.reference_labels is not None else np.zeros(len(self), np.int64)
        return ImageSource(targets, array=self.images, paths=self.paths)


# ---- pools ----------------------------------------------------------------------------------------
def leftover_pool(data: LongTailData) -> Pool:
    """The training images the long-tailed cut (and the validation split) left out, true labels kept.

    On CIFAR-10 at rho = 100 that is 0, 2003, 3204, ... images per class (docs/data.md#leftover-pool): the
    pool is reverse-imbalanced and holds no head-class image, so a head-heavy D_U cannot be drawn.
    """
    if data.unlabeled is None or not len(data.unlabeled):
        raise DatasetError(f"{data.name}: the long-tailed cut left no training image out (is --imb_factor 1?), "
                           "so there is no leftover pool")
    validation_size = 0 if data.val is None else len(data.val)
    validation_indices = np.zeros(0, np.int64) if data.val_indices is None else np.asarray(data.val_indices)
    if not data.unlabeled.in_memory:
        return Pool(f"leftover of {data.name}", kind="leftover", paths=list(data.unlabeled.paths),
                    reference_labels=data.unlabeled.targets, labeled_indices=data.train_indices,
                    validation_size=validation_size, validation_indices=validation_indices)
    return Pool(f"leftover of {data.name}", kind="leftover", images=data.unlabeled.array,
                reference_labels=data.unlabeled.targets, labeled_indices=data.train_indices,
                validation_size=validation_size, validation_indices=validation_indices)


def ti_pickle_pool(path: str) -> Pool:
    """The paper's 80M-TinyImages selection: a pickle with ``data`` (N, 32, 32, 3) uint8 and
    ``extrapolated_targets`` (the selection model's labels, used as reference labels)."""
    try:
        entry = read_array_pickle(path, encoding="latin1")  # as CIFAR: Python 2 strings, if any
    except UnsafePickleError as error:
        raise DatasetError(f"--pool {path}: refused to unpickle '{error}' (the ti_80M_selected.pickle format "
                           "holds only arrays; this file could run code)") from None
    except OSError as error:
        raise DatasetError(f"cannot read pool pickle {path}: {error.strerror or error}") from None
    except Exception as error:  # damaged bytes: UnpicklingError, EOFError, UnicodeDecodeError, ...
        raise DatasetError(f"{path} is damaged ({type(error).__name__}): copy it again") from None
    if not isinstance(entry, dict) or "data" not in entry or "extrapolated_targets" not in entry:
        raise DatasetError(f"{path}: expected a dict with keys 'data' and 'extrapolated_targets' "
                           "(the ti_80M_selected.pickle format)")
    images = np.asarray(entry["data"], dtype=np.uint8)
    if images.ndim != 4 or images.shape[3] != 3:
        raise DatasetError(f"{path}: 'data' must be N x H x W x 3 uint8, got shape {images.shape}")
    return Pool(os.path.basename(path), kind="tinyimages", images=images,
                reference_labels=entry["extrapolated_targets"])


def svhn_extra_pool(root: str, download: bool) -> Pool:
    """SVHN's ``extra`` split (531,131 images) with its true labels (digit 0 is label 0)."""
    from .svhn_lt import read_svhn_split

    split = read_svhn_split(root, "extra", download)
    return Pool("svhn extra", kind="svhn_extra", images=split.array, reference_labels=split.targets)


def image_folder_pool(folder: str) -> Pool:
    """Every image file below ``folder`` (sorted, recursive); no reference labels."""
    paths = sorted(os.path.join(parent, name) for parent, _, names in os.walk(os.path.abspath(folder))
                   for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise DatasetError(f"no image ({', '.join(IMAGE_EXTENSIONS)}) below {folder}")
    return Pool(folder, paths=paths)


def image_list_pool(list_path: str, root: Optional[str] = None) -> Pool:
    """A split file of ``relative/path [label]`` lines; paths relative to ``root`` (default: the
    list's folder). Labels, when every line has one, become the reference labels."""
    root = os.path.abspath(root if root is not None else os.path.dirname(os.path.abspath(list_path)))
    paths, labels = [], []
    for _, line in text_lines(list_path):  # an unreadable file or a non-UTF-8 line is named FILE:LINE
        line = line.strip()
        if not line:
            continue
        fields = line.rsplit(None, 1)
        has_label = len(fields) == 2 and fields[1].isascii() and fields[1].isdigit()
        paths.append(os.path.join(root, fields[0] if has_label else line))
        labels.append(int(fields[1]) if has_label else None)
    if not paths:
        raise DatasetError(f"pool list is empty: {list_path}")
    labelled = [label is not None for label in labels]
    if any(labelled) and not all(labelled):
        raise DatasetError(f"{list_path}: give a label on every line or on none")
    if not os.path.isfile(paths[0]):
        raise DatasetError(f"image not found: {paths[0]} (first entry of {list_path}; check --pool_root)")
    return Pool(list_path, paths=paths, reference_labels=np.asarray(labels) if all(labelled) else None)


def decode_pool(pool: Pool, image_size: int) -> Pool:
    """Loads a path pool into memory (CIFAR-style runs batch raw pixels, so every image must
    already be ``image_size`` x ``image_size``)."""
    if pool.images is not None:
        return pool
    images = np.empty((len(pool), image_size, image_size, 3), dtype=np.uint8)
    for i, path in enumerate(pool.paths):
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
        except OSError as error:
            raise DatasetError(f"cannot read image {path}: {error}") from error
        if pixels.shape != images.shape[1:]:
            raise DatasetError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}; this run takes "
                               f"{image_size}x{image_size} images as they are (no resizing)")
        images[i] = pixels
    return dataclasses.replace(pool, images=images, paths=None)


# ---- the pseudo-label file ------------------------------------------------------------------------
def save_pseudo_labels(path: str, pool: Pool, pseudo_labels: np.ndarray, confidences: np.ndarray, *,
                       num_classes: int, dataset: str, prediction_model: str,
                       threshold: Optional[float] = None, force: bool = False) -> Dict[str, Any]:
    """Writes the file described in the module docstring, keeping only predictions with
    confidence >= ``threshold`` when one is given. Refuses to replace a file unless ``force``."""
    if os.path.exists(path) and not force:
        raise DatasetError(f"{path} exists; pass --force to overwrite it")
    pseudo_labels = np.asarray(pseudo_labels, dtype=np.int64)
    confidences = np.asarray(confidences, dtype=np.float32)
    keep = np.arange(len(pool)) if threshold is None else np.flatnonzero(confidences >= threshold)
    entry = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "pseudo_labels": pseudo_labels[keep], "confidences": confidences[keep],
        "reference_labels": None if pool.reference_labels is None else pool.reference_labels[keep],
        "images": None if pool.images is None else pool.images[keep],
        "paths": None if pool.paths is None else [pool.paths[i] for i in keep],
        "num_classes": int(num_classes), "dataset": dataset, "pool": pool.name, "pool_kind": pool.kind,
        "labeled_indices": None if pool.labeled_indices is None else np.asarray(pool.labeled_indices),
        "validation_size": int(pool.validation_size),
        "validation_indices": None if pool.validation_indices is None else np.asarray(pool.validation_indices,
                                                                                      dtype=np.int64),
        "prediction_model": prediction_model, "threshold": None if threshold is None else float(threshold),
        "pool_size": len(pool),
    }
    arrays = {"pseudo_labels": entry["pseudo_labels"], "confidences": entry["confidences"]}
    arrays.update({name: np.asarray(entry[name], dtype=str if name == "paths" else None)
                   for name in OPTIONAL_ARRAYS if entry[name] is not None})
    arrays["meta"] = np.array(json.dumps({k: v for k, v in entry.items() if k not in arrays}))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            # Written to the open file, so NumPy does not append ".npz" to the name; zip64 takes
            # the SVHN extra pixels (1.6 GB).
            np.savez(stream, **arrays)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return entry


def load_pseudo_labels(path: str) -> Dict[str, Any]:
    """Reads and checks a pseudo-label file; errors name the file and what is wrong."""
    if not os.path.isfile(path):
        raise DatasetError(f"--unlabeled {path}: file not found (write it with scripts/gen_pseudolabels.py)")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            is_pickle = handle.read(1) == b"\x80"  # the PROTO opcode that starts pickles of protocol >= 2
        raise DatasetError(
            f"--unlabeled {path}: " + ("a pickle (pseudo-label files of earlier versions); pickles can carry "
                                        "code and are not read: regenerate it with scripts/gen_pseudolabels.py"
                                        if is_pickle else "not a pseudo-label .npz archive of "
                                        "scripts/gen_pseudolabels.py (damaged, or another kind of file)"))
    try:
        with np.load(path, allow_pickle=False) as archive:
            entry: Dict[str, Any] = {name: archive[name] for name in archive.files}
        meta = json.loads(str(entry.pop("meta")))
    # JSON errors are ValueErrors; a header claiming an absurd shape is a MemoryError.
    except (OSError, ValueError, KeyError, EOFError, MemoryError, zipfile.BadZipFile) as error:
        raise DatasetError(f"--unlabeled {path} is damaged or not a pseudo-label file "
                           f"({type(error).__name__}): regenerate it with scripts/gen_pseudolabels.py") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path} is not a pseudo-label file of scripts/gen_pseudolabels.py "
                           f"(no '{FORMAT_NAME}' header)")
    version = meta.get("version", 0)
    if not _is_count(version):
        raise DatasetError(f"--unlabeled {path}: its format version is {version!r}, not a number (damaged): "
                           "regenerate it with scripts/gen_pseudolabels.py")
    if version > FORMAT_VERSION:
        raise DatasetError(f"{path} has format version {meta['version']}, newer than this code's {FORMAT_VERSION}")
    entry = {**{name: None for name in OPTIONAL_ARRAYS}, **meta, **entry}
    if entry["paths"] is not None:
        entry["paths"] = [str(p) for p in entry["paths"]]
    missing = [name for name in ("pseudo_labels", "confidences", "num_classes", "dataset") if name not in entry]
    if missing:
        raise DatasetError(f"{path}: the archive lacks {', '.join(missing)}; regenerate it with "
                           "scripts/gen_pseudolabels.py")
    _check_shapes(path, entry)
    size = len(entry["pseudo_labels"])
    pixels = entry["images"] if entry["images"] is not None else entry["paths"]
    if pixels is None or len(pixels) != size or len(entry["confidences"]) != size or (
            entry["reference_labels"] is not None and len(entry["reference_labels"]) != size):
        raise DatasetError(f"{path}: images, pseudo labels, confidences and reference labels differ in length")
    return entry


def pool_kind(path: str) -> str:
    """The kind of pool a pseudo-label file was drawn from (POOL_KINDS), read from its header
    alone; files written before the kind was recorded name a leftover pool in their pool name."""
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"]))
    kind = meta.get("pool_kind")
    if kind in POOL_KINDS:
        return kind
    return "leftover" if str(meta.get("pool", "")).startswith("leftover of ") else "unrecorded"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_shapes(path: str, entry: Dict[str, Any]) -> None:
    """What gen_pseudolabels.py writes, field by field: a damaged or hand-made file is named here,
    not by an error deep in the training loop."""
    def fail(what: str) -> None:
        raise DatasetError(f"--unlabeled {path}: {what}; regenerate it with scripts/gen_pseudolabels.py")

    for name, kind in (("pseudo_labels", "integer"), ("confidences", "floating"), ("reference_labels", "integer"),
                       ("labeled_indices", "integer"), ("validation_indices", "integer")):
        array = entry.get(name)
        if array is None and name in OPTIONAL_ARRAYS:
            continue
        if not isinstance(array, np.ndarray) or array.ndim != 1 or not np.issubdtype(
                array.dtype, np.integer if kind == "integer" else np.floating):
            fail(f"'{name}' must be a 1-D {kind} array, got "
                 + (f"{array.ndim}-D {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__))
    images = entry["images"]
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3):
        fail(f"'images' must be N x H x W x 3 uint8 pixels, got {images.ndim}-D {images.dtype} "
             f"{tuple(images.shape)}")
    if not _is_count(entry["num_classes"]) or entry["num_classes"] < 1:
        fail(f"'num_classes' must be a positive number, got {entry['num_classes']!r}")
    if not _is_count(entry.get("validation_size", 0)):
        fail(f"'validation_size' must be a number, got {entry.get('validation_size')!r}")
    if not isinstance(entry["dataset"], str):
        fail(f"'dataset' must be a name, got {entry['dataset']!r}")


# ---- D_U ------------------------------------------------------------------------------------------
def select_per_class(labels: Sequence[int], wanted: Sequence[int], seed: int = 0) -> np.ndarray:
    """Positions of up to ``wanted[c]`` items of each class c, chosen by a seeded shuffle.

    A class with fewer items contributes all it has. Classes in label order, each in shuffled
    order; every class is shuffled, so the choice for one class does not depend on another's size.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.RandomState(seed)
    chosen = []
    for c, n_c in enumerate(wanted):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        chosen.append(idx[:max(int(n_c), 0)])
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def unlabeled_targets_by_rank(train_counts: Sequence[int], imb_factor_unlabel: float,
                              size_factor: float) -> List[int]:
    """Wanted D_U images per class (docs/semi_self.md#unlabelled-set-sizes), the largest going to
    the class with the most labelled images (class 0 on CIFAR, digit 1 on SVHN-LT), and so on down."""
    if not size_factor > 0:
        raise DatasetError(f"--unlabel_size_factor must be positive, got {size_factor}")
    try:
        sizes = unlabeled_class_counts(int(sum(train_counts)), len(train_counts), imb_factor_unlabel, size_factor)
    except ValueError as error:
        raise DatasetError(str(error)) from error
    # Stable, so ties keep label order.
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    wanted = [0] * len(train_counts)
    for rank, c in enumerate(order):
        wanted[int(c)] = sizes[rank]
    return wanted


def _check_pool_matches(entry: Dict[str, Any], data: LongTailData, path: str) -> None:
    if entry["num_classes"] != data.num_classes:
        raise DatasetError(f"{path} holds {entry['num_classes']}-class pseudo labels but {data.name} has "
                           f"{data.num_classes} classes")
    if entry["labeled_indices"] is not None:
        # A leftover pool cut against another labelled subset would hand labelled images (or the
        # images of another split) back to training under a second label.
        if entry["dataset"] != data.name or data.train_indices is None or not np.array_equal(
                np.asarray(entry["labeled_indices"]), data.train_indices):
            raise DatasetError(f"{path} is the leftover pool of another long-tailed subset ({entry['dataset']}); "
                               "regenerate it from a run with this --dataset/--imb_factor/--imb_type/--lt_seed")
        # The validation split is drawn from the same leftovers: a pool that excluded another split
        # (another size, or as many images chosen with another --lt_seed while --lt_selection first
        # kept the labelled subset) would hand this run's validation images to training, and
        # selection would see trained-on data.
        validation_size = 0 if data.val is None else len(data.val)
        ours = np.sort(np.zeros(0, np.int64) if data.val_indices is None else np.asarray(data.val_indices))
        theirs = entry.get("validation_indices")
        if entry.get("validation_size", 0) != validation_size:
            raise DatasetError(f"{path} was made with a validation split of {entry.get('validation_size', 0)} "
                               f"images but this run has {validation_size}: regenerate the pool from a run "
                               "with the same --val_per_class, so no validation image can join training")
        if theirs is None and validation_size:
            raise DatasetError(f"{path} does not record which images its run's validation split held (an "
                               "earlier version wrote it): regenerate it with scripts/gen_pseudolabels.py, so "
                               "no validation image of this run can join training")
        if theirs is not None and not np.array_equal(np.sort(np.asarray(theirs)), ours):
            raise DatasetError(f"{path} was made with other validation images than this run's (the same "
                               f"{validation_size} in number; another --lt_seed?): regenerate the pool from a "
                               "run with this --lt_seed and --val_per_class, so no validation image can join "
                               "training")


def _append(train: ImageSource, entry: Dict[str, Any], chosen: np.ndarray, targets: np.ndarray) -> ImageSource:
    if entry["images"] is not None:
        if not train.in_memory:
            raise DatasetError("a pseudo-label file with pixels can only join an in-memory (CIFAR-style) "
                               "training set; give the pool as image files for this dataset")
        images = np.asarray(entry["images"])[chosen]
        if images.shape[1:] != train.array.shape[1:]:
            raise DatasetError(f"pool images are {images.shape[2]}x{images.shape[1]} but the training "
                               f"images {train.array.shape[2]}x{train.array.shape[1]}")
        return ImageSource(targets, array=np.concatenate([train.array, images]))
    paths = [entry["paths"][i] for i in chosen]
    if train.in_memory:
        pool = decode_pool(Pool("selected", paths=paths), train.array.shape[1])
        return ImageSource(targets, array=np.concatenate([train.array, pool.images]))
    return ImageSource(targets, paths=list(train.paths) + paths)


def add_pseudo_labeled(data: LongTailData, path: str, imb_factor_unlabel: float, size_factor: float = 5.0,
                       seed: int = 0, log: Callable[[str], None] = print) -> LongTailData:
    """D_L plus the pseudo-labelled subset D_U of Yang & Xu (2020), docs/semi_self.md#pseudo-labels.

    |D_U| aims at ``size_factor`` x |D_L| with imbalance 1 / ``imb_factor_unlabel``. Images are
    chosen per class by the pool's reference labels (the pseudo labels when it has none) with a
    seeded shuffle, and enter training with their PSEUDO labels; a class the pool cannot fill
    contributes what it has, and ``log`` says so. ``train_counts`` of the result count the
    pseudo-labelled images by pseudo label, as the reference does for re-weighting; the
    appended images have ``train_indices`` -1 (no position in the training file).
    """
    entry = load_pseudo_labels(path)
    _check_pool_matches(entry, data, path)
    wanted = unlabeled_targets_by_rank(data.train_counts, imb_factor_unlabel, size_factor)
    by_reference = entry["reference_labels"] is not None
    selection_labels = np.asarray(entry["reference_labels"] if by_reference else entry["pseudo_labels"])
    chosen = select_per_class(selection_labels, wanted, seed)
    if not len(chosen):  # a "_semi" run that trains on D_L alone would be mislabelled
        if sum(wanted) == 0:
            why = f"--unlabel_size_factor {size_factor:g} asks for no image in any class: raise it"
        elif not len(selection_labels):
            why = "the file holds no image (did its --threshold keep none?)"
        else:
            why = f"none of its labels is a class of this dataset (0..{data.num_classes - 1})"
        raise DatasetError(f"--unlabeled {path} adds no image to D_U: {why}")
    pseudo = np.asarray(entry["pseudo_labels"], dtype=np.int64)[chosen]
    if len(pseudo) and (pseudo.min() < 0 or pseudo.max() >= data.num_classes):
        raise DatasetError(f"{path}: pseudo labels outside 0..{data.num_classes - 1}")
    taken = np.bincount(selection_labels[chosen], minlength=data.num_classes)[:data.num_classes]
    short = [f"{c} ({int(taken[c])} of {wanted[c]})" for c in range(data.num_classes) if taken[c] < wanted[c]]
    agreement = ""
    if by_reference and len(chosen):
        agreement = f"; pseudo labels agree with them on {100.0 * np.mean(pseudo == selection_labels[chosen]):.1f}%"
    log(f"pseudo-labelled D_U from {path}: {len(chosen)} of {sum(wanted)} wanted images (size factor "
        f"{size_factor:g}, imbalance {1 / imb_factor_unlabel:g}, seed {seed}), chosen by "
        + ("the pool's reference labels" + agreement if by_reference
           else "their pseudo labels (the pool has no reference labels)")
        + (f"; the pool is short in classes {', '.join(short)}" if short else ""))
    targets = np.concatenate([data.train.targets, pseudo])
    train_indices = None
    if data.train_indices is not None:
        train_indices = np.concatenate([data.train_indices, np.full(len(chosen), -1, dtype=np.int64)])
    return dataclasses.replace(
        data, train=_append(data.train, entry, chosen, targets),
        train_counts=np.bincount(targets, minlength=data.num_classes).tolist(), train_indices=train_indices)
