"""The evaluation data of a trained run, rebuilt from its checkpoint's description.

A checkpoint records its dataset's name, options (with absolute paths) and class counts
(``utils.run.Run.describe_dataset``); test.py, train_LCSL.py's final report and
scripts/gen_pseudolabels.py read the same images from it. Nothing is ever downloaded here.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

from .base import DataOptions, DatasetError, LongTailData
from .loaders import PATH_OPTIONS, absolute_data_options


def training_folder(payload: Dict[str, Any]) -> Optional[str]:
    """The working folder a run was started from, recovered from where its checkpoint lies now
    and the run folder its config names (relative to that working folder); None when the config
    names an absolute folder or one that does not match."""
    run = payload.get("config", {}).get("run", {})
    run_dir = os.path.dirname(os.path.abspath(payload["path"]))
    recorded = run.get("out_dir") or (run.get("root_log") and os.path.join(run["root_log"], os.path.basename(run_dir)))
    if not recorded or os.path.isabs(recorded):
        return None
    recorded = os.path.normpath(recorded)
    if recorded == ".":
        return run_dir
    if recorded.startswith("..") or not run_dir.endswith(os.sep + recorded):
        return None
    return run_dir[: -len(recorded) - 1] or os.sep


def data_options(payload: Dict[str, Any], data_root: Optional[str]) -> DataOptions:
    """The checkpoint's data options with absolute paths, `data_root` (--data_root) overriding
    its folder. Checkpoints from before paths were stored absolute hold them relative to the
    folder training ran in, recovered by ``training_folder``; never relative to this process's."""
    info = payload["dataset"]
    try:
        # download=False: the evaluation must read the run's data, never a fresh copy fetched here.
        options = DataOptions(**{**info["options"], "download": False})
    except (KeyError, TypeError) as error:  # a damaged description, or one of another version
        raise DatasetError(f"{payload['path']}: its recorded data options cannot be read ({type(error).__name__}: "
                           f"{error})") from None
    if data_root is not None:
        options = _moved_to(options, os.path.abspath(data_root))
    relative = [key for key in PATH_OPTIONS if getattr(options, key) is not None
                and not os.path.isabs(getattr(options, key))]
    if relative:
        base = training_folder(payload)
        if base is None:
            raise DatasetError(f"{payload['path']} records the relative path --{relative[0]} "
                               f"{getattr(options, relative[0])!r} and the folder training ran in cannot "
                               "be recovered from the run folder: pass test.py --data_root with the data's "
                               "absolute path")
        options = absolute_data_options(info["name"], options, base)
    if not os.path.isdir(options.data_root):
        source = "--data_root" if data_root is not None else f"recorded in {payload['path']}"
        what = "is a file, not a folder" if os.path.exists(options.data_root) else "does not exist"
        raise DatasetError(f"data folder {options.data_root} ({source}) {what}: point test.py "
                           "--data_root at the data the run was trained on")
    return options


def _moved_to(options: DataOptions, data_root: str) -> DataOptions:
    """`options` with the data folder `data_root` (--data_root), and the split lists that lay inside
    the recorded data folder, and are no longer there, moved along with it."""
    recorded = options.data_root
    moved = {}
    for key in PATH_OPTIONS:
        value = getattr(options, key)
        if (key != "data_root" and value and os.path.isabs(value) and os.path.isabs(recorded or "")
                and value.startswith(recorded.rstrip(os.sep) + os.sep) and not os.path.exists(value)):
            moved[key] = os.path.join(data_root, os.path.relpath(value, recorded))
    return dataclasses.replace(options, data_root=data_root, **moved)


def evaluation_set(payload: Dict[str, Any], data_root: Optional[str], split: str) -> Tuple[LongTailData, str]:
    """The run's dataset (checked to give the class counts it was trained with) and the data
    folder read; `split` ('test' or 'val') must exist in it."""
    from datasets import DATASETS, build_dataset  # the registry, filled when the package is imported

    info = payload["dataset"]
    if info.get("name") not in DATASETS:
        raise DatasetError(f"{payload['path']} records the dataset {info.get('name')!r}, which this version of "
                           f"ltkit does not know (it knows {', '.join(sorted(DATASETS.names()))})")
    options = data_options(payload, data_root)
    data = build_dataset(info["name"], options)
    if list(data.train_counts) != list(info.get("labeled_counts", info["train_counts"])):
        raise DatasetError(f"the data under {options.data_root} gives other class counts than the "
                           "checkpoint was trained with: point --data_root at the training data")
    # Shot groups use the counts the model was trained with (pseudo-labelled images included).
    data.train_counts = list(info["train_counts"])
    source = data.test if split == "test" else data.val
    if source is None or not len(source):
        raise DatasetError("this run has no validation split (it was trained without --val_per_class "
                           "or --val_list): use --split test")
    return data, options.data_root
