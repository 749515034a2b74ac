"""CIFAR-10-LT and CIFAR-100-LT from the standard pickle files (docs/data.md#long-tailed-cifar-counts).

The pickles are read directly, without torchvision's md5 check, so re-encoded copies (whose
md5 differs from the official files') load. Only missing files trigger a download, and the
downloaded archive is md5-checked by torchvision.

They are read with ``ArrayUnpickler``, which rebuilds dicts, lists, strings, numbers and NumPy
arrays and refuses every other type, so a planted file cannot run code. What was read is then
checked (uint8 N x 3072 pixels, N labels in range, 10,000 rows per official batch), so a damaged
file is named as damaged instead of failing deep inside pickle or loading silently.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from .base import DataOptions, DatasetError, ImageSource, LongTailData, download_folder, move_missing, staging_folder
from .longtail import balanced_validation_indices, class_counts, leftover_indices, select_indices

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant's files live and how its pickles name things."""

    folder: str  # directory below data_root that the archive extracts to
    train_files: Tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str  # 'labels' (CIFAR-10) or 'fine_labels' (CIFAR-100)
    rows: Tuple[Tuple[str, int], ...]  # images in each official file (checked where 'batch_label' says official)
    names_key: str  # class-name list in the meta pickle
    url: str
    md5: str  # of the archive; only checked on download


CIFAR10 = CifarLayout(
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    rows=tuple((name, 10000) for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")),
    names_key="label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR100 = CifarLayout(
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    rows=(("train", 50000), ("test", 10000)),
    names_key="fine_label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)


def _missing_files(root: str, layout: CifarLayout) -> List[str]:
    names = (*layout.train_files, layout.test_file, layout.meta_file)
    paths = [os.path.join(root, layout.folder, name) for name in names]
    return [path for path in paths if not os.path.isfile(path)]


def _not_found_message(root: str, layout: CifarLayout, missing: Sequence[str], reason: str) -> str:
    return (
        f"{reason}: {missing[0]} is missing. Put the extracted '{layout.folder}' folder under "
        f"--data_root {root} (archive: {layout.url}), or run offline on the bundled sample with "
        f"--dataset cifar10_sample"
    )


def ensure_cifar_files(root: str, layout: CifarLayout, download: bool) -> None:
    """Makes sure every pickle is present, downloading the archive when allowed.

    Files already on disk are trusted as they are (no md5), so re-encoded copies work.
    """
    if os.path.exists(root) and not os.path.isdir(root):
        raise DatasetError(f"--data_root {root} is a file, not a folder: point it at the folder holding "
                           f"'{layout.folder}' (or where it should be downloaded to)")
    missing = _missing_files(root, layout)
    if not missing:
        return
    if not download:
        raise DatasetError(_not_found_message(root, layout, missing, "CIFAR files not found and download is off"))
    folder = os.path.join(root, layout.folder)
    if len(missing) < len(layout.train_files) + 2:
        # The folder holds some of the files: they may be the user's own copies (re-encoded, say),
        # which the official archive would silently mix with or replace.
        raise DatasetError(f"{folder} holds some CIFAR files but not {os.path.basename(missing[0])}: put the "
                           f"missing files there, or move the folder away to download the official ones")
    # Imported here: torchvision is only needed when something has to be fetched.
    from torchvision.datasets import utils as tv_utils

    archive = os.path.basename(layout.url)
    try:
        with download_folder(root), staging_folder(root) as staging:
            tv_utils.download_url(layout.url, staging, filename=archive, md5=layout.md5)
            tv_utils.extract_archive(os.path.join(staging, archive), staging)
            move_missing(os.path.join(staging, layout.folder), folder)
            os.replace(os.path.join(staging, archive), os.path.join(root, archive))  # kept, as torchvision does
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad md5 is a RuntimeError
        message = _not_found_message(root, layout, missing, f"cannot download CIFAR ({error})")
        raise DatasetError(message) from error
    missing = _missing_files(root, layout)
    if missing:
        raise DatasetError(_not_found_message(root, layout, missing, "the downloaded archive is incomplete"))


# ---- reading pickles without running code ----------------------------------------------------
class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a type outside ARRAY_GLOBALS (it could run code when rebuilt)."""


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it from Python 3 (bytes saved as a latin1 str,
    e.g. the pixel buffer of re-encoded CIFAR batches); no other use of the codec machinery."""
    if not isinstance(text, str) or encoding.lower().replace("-", "").replace("_", "") != "latin1":
        raise UnsafePickleError(f"_codecs.encode with {type(text).__name__} / {encoding!r} (only latin1 text)")
    return text.encode("latin1")


def _array_globals() -> Dict[Tuple[str, str], Callable[..., Any]]:
    """The globals a pickle of dicts, lists, strings, numbers and NumPy arrays names: array
    reconstruction under NumPy 1's and 2's module names (the functions NumPy itself pickles with,
    wherever they live in this NumPy), protocol 5's buffer form, and protocol 2's bytes."""
    reconstruct = np.zeros(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: Dict[Tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode}
    for prefix in ("numpy.core", "numpy._core"):
        allowed[(f"{prefix}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{prefix}.numeric", "_frombuffer")] = frombuffer
    return allowed


ARRAY_GLOBALS = _array_globals()


class ArrayUnpickler(pickle._Unpickler):
    """Unpickles plain data and NumPy arrays only: ``find_class`` resolves nothing outside
    ARRAY_GLOBALS, so no other callable (``os.system``, ``eval``, ...) can be reached.

    The pure-Python unpickler (as fast here: the time goes to the pixel bytes) lets BUILD, which
    sets an object's state, be checked as well: only arrays and dtypes take a state, and a dtype's
    flags must be its own (a damaged flags byte makes NumPy fail later, outside any error handler).
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ARRAY_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None

    def load_checked_build(self) -> None:
        target, state = self.stack[-2], self.stack[-1]
        if isinstance(target, np.dtype):
            own = target.__reduce__()[2]
            if not isinstance(state, tuple) or (len(state) >= 8 and state[7] != own[7]):
                raise pickle.UnpicklingError(f"dtype state {state!r} does not fit a {target} dtype")
        elif not isinstance(target, np.ndarray):
            raise UnsafePickleError(f"state of a {type(target).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_checked_build

    # NumPy pickles name ``numpy.ndarray`` only as the class _reconstruct builds; called directly
    # (REDUCE, NEWOBJ) it would make an array over bytes of the file's choosing, of Python objects
    # whose elements are raw memory addresses. A dtype of Python objects has no place in arrays of
    # pixels and labels either.
    def load_checked_reduce(self) -> None:
        _refuse_call(self.stack[-2], self.stack[-1])
        super().load_reduce()

    def load_checked_newobj(self) -> None:
        _refuse_call(self.stack[-2], self.stack[-1])
        super().load_newobj()

    def load_checked_newobj_ex(self) -> None:
        _refuse_call(self.stack[-3], self.stack[-2])
        super().load_newobj_ex()

    dispatch[pickle.REDUCE[0]] = load_checked_reduce
    dispatch[pickle.NEWOBJ[0]] = load_checked_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_checked_newobj_ex


def _refuse_call(target: Any, args: Any) -> None:
    if target is np.ndarray:
        raise UnsafePickleError("numpy.ndarray called directly (arrays are rebuilt through _reconstruct)")
    if target is np.dtype:
        try:
            forged = np.dtype(*args).hasobject if isinstance(args, tuple) else True
        except (TypeError, ValueError):
            return  # the call itself fails and is reported as damage
        if forged:
            raise UnsafePickleError("numpy.dtype of Python objects")


def read_array_pickle(path: str, encoding: str = "ASCII") -> Any:
    """Loads a pickle with ``ArrayUnpickler``; raises what the read raised (callers name the file)."""
    with open(path, "rb") as handle:
        return ArrayUnpickler(handle, encoding=encoding).load()


def _damaged(path: str, detail: str) -> str:
    return f"{path} is damaged ({detail}): delete it and rerun with --download True, or regenerate it"


def _read_pickle(path: str) -> Dict[str, Any]:
    try:
        # latin1 turns the Python 2 byte strings of the official files into str keys.
        entry = read_array_pickle(path, encoding="latin1")
    except UnsafePickleError as error:
        raise DatasetError(f"{path}: refused to unpickle '{error}' (a CIFAR pickle holds only arrays, lists "
                           "and numbers; this one could run code): delete it and rerun with --download True"
                           ) from None
    except OSError as error:
        raise DatasetError(f"cannot read CIFAR pickle {path}: {error.strerror or error}") from None
    except Exception as error:  # damaged bytes surface as any of UnpicklingError, EOFError,
        # UnicodeDecodeError, MemoryError, ValueError, KeyError, IndexError, TypeError, ...
        first = (str(error).splitlines() or [""])[0][:120]
        detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
        raise DatasetError(_damaged(path, detail)) from None
    if not isinstance(entry, dict):
        raise DatasetError(_damaged(path, f"it holds a {type(entry).__name__}, not a dict"))
    return entry


def _check_batch(path: str, entry: Dict[str, Any], layout: CifarLayout,
                 num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """The pixel rows and labels of one batch, after checking they fit together."""
    if "data" not in entry or layout.label_key not in entry:
        raise DatasetError(f"{path} lacks the keys 'data' and '{layout.label_key}' (damaged, or not a "
                           "CIFAR batch)")
    data = entry["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetError(_damaged(path, f"'data' must be uint8 N x 3072 pixel rows, got {what}"))
    try:
        labels = np.asarray(entry[layout.label_key])
    except (TypeError, ValueError) as error:
        raise DatasetError(_damaged(path, f"'{layout.label_key}' is not a list of integers ({error})")) from None
    if labels.ndim != 1 or len(labels) != len(data) or (len(labels) and labels.dtype.kind not in "iu"):
        raise DatasetError(_damaged(path, f"{len(data)} pixel rows but '{layout.label_key}' holds "
                                         f"{labels.dtype} {labels.shape}"))
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(_damaged(path, f"labels must lie in 0..{num_classes - 1}, found "
                                         f"{labels.min()}..{labels.max()}"))
    filenames = entry.get("filenames")
    if filenames is not None and (not isinstance(filenames, (list, np.ndarray)) or len(filenames) != len(data)):
        count = len(filenames) if isinstance(filenames, (list, np.ndarray)) else type(filenames).__name__
        raise DatasetError(_damaged(path, f"{len(data)} pixel rows but {count} file names"))
    expected = dict(layout.rows).get(os.path.basename(path))
    # Official (and regenerated) batches say what they are in 'batch_label'; small copies such as
    # test fixtures do not, and are taken at whatever size they have.
    if "batch_label" in entry and expected is not None and len(data) != expected:
        raise DatasetError(_damaged(path, f"{len(data)} images where the official file has {expected}"))
    return data, labels.astype(np.int64)


def _read_batches(root: str, layout: CifarLayout, names: Sequence[str], num_classes: int) -> ImageSource:
    arrays, labels = [], []
    for name in names:
        path = os.path.join(root, layout.folder, name)
        data, targets = _check_batch(path, _read_pickle(path), layout, num_classes)
        # Rows are channel-planar (R plane, G plane, B plane); the containers want N x H x W x 3.
        arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(targets)
    return ImageSource(np.concatenate(labels), array=np.ascontiguousarray(np.concatenate(arrays)))


def read_cifar(root: str, layout: CifarLayout, download: bool) -> Tuple[ImageSource, ImageSource, List[str]]:
    """The full (balanced) training set, the test set and the class names of one CIFAR variant."""
    ensure_cifar_files(root, layout, download)
    meta_path = os.path.join(root, layout.folder, layout.meta_file)
    meta = _read_pickle(meta_path)
    names = meta.get(layout.names_key)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{meta_path} lacks the class-name list '{layout.names_key}' (damaged, or not "
                           "CIFAR's meta file)")
    train = _read_batches(root, layout, layout.train_files, len(names))
    test = _read_batches(root, layout, (layout.test_file,), len(names))
    return train, test, list(names)


def build_long_tail(
    name: str,
    train: ImageSource,
    test: ImageSource,
    class_names: List[str],
    options: DataOptions,
    mean: Tuple[float, float, float] = CIFAR_MEAN,
    std: Tuple[float, float, float] = CIFAR_STD,
) -> LongTailData:
    """Cuts a balanced training set into the CIFAR-LT recipe (docs/data.md#long-tailed-cifar-counts;
    the leftovers: docs/data.md#leftover-pool).

    n_max is the per-class size of the balanced file, len / C as in the reference code (5000 for
    CIFAR-10, 500 for CIFAR-100 and the bundled sample). ``val`` (when ``val_per_class`` > 0)
    comes from the images the subset left, and ``unlabeled`` is what remains after both, with its
    true labels kept for pool selection; it is None when nothing remains.
    """
    num_classes = len(class_names)
    for source, split in ((train, "training"), (test, "test")):
        if len(source) and (source.targets.min() < 0 or source.targets.max() >= num_classes):
            raise DatasetError(f"{name}: {split} labels must lie in 0..{num_classes - 1} (one per class name)")
    try:
        counts = class_counts(len(train) // num_classes, num_classes, options.imb_type, options.imb_factor)
        selected = select_indices(train.targets, counts, options.lt_selection, options.lt_seed)
        val_idx = balanced_validation_indices(train.targets, selected, options.val_per_class, options.lt_seed)
    except ValueError as error:
        raise DatasetError(f"{name}: {error}") from error
    pool = leftover_indices(train.targets, np.concatenate([selected, val_idx]))
    return LongTailData(
        name=name,
        num_classes=num_classes,
        train=train.subset(selected),
        test=test,
        train_counts=counts,
        mean=mean,
        std=std,
        image_size=int(train.array.shape[1]),
        class_names=list(class_names),
        val=train.subset(val_idx) if options.val_per_class > 0 else None,
        val_indices=val_idx if options.val_per_class > 0 else None,
        unlabeled=train.subset(pool) if len(pool) else None,
        train_indices=selected,
    )


def cifar10(options: DataOptions) -> LongTailData:
    """CIFAR-10-LT: 5000 images per class before the cut; rho=100 keeps 12,406."""
    train, test, names = read_cifar(options.data_root, CIFAR10, options.download)
    return build_long_tail("cifar10", train, test, names, options)


def cifar100(options: DataOptions) -> LongTailData:
    """CIFAR-100-LT: 500 images per class before the cut; rho=100 keeps 10,847."""
    train, test, names = read_cifar(options.data_root, CIFAR100, options.download)
    return build_long_tail("cifar100", train, test, names, options)
