"""Log file, tensorboardX curves and JSON files of a run folder; only rank 0 writes.
Which folder a run may write into is decided in utils/run_folder.py."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import numpy as np

from utils.checkpoint import signals_deferred

PER_CLASS_FILE = "per_class.csv"  # the methods' per-class statistics, one row per epoch and statistic


def _jsonable(value: Any) -> Any:
    """Converts numpy / torch scalars and NaN into what json.dump writes portably."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _jsonable(float(value))
    return value


def write_json(path: str, payload: Dict[str, Any]) -> None:
    """Writes JSON through a temporary file and a rename, like checkpoints."""
    tmp = path + ".tmp"
    with open(tmp, "w") as stream:
        json.dump(_jsonable(payload), stream, indent=2)
        stream.write("\n")
    os.replace(tmp, path)


class RunLogger:
    """Prints to stdout and appends to ``<run>/log.txt``; tensorboardX scalars in ``<run>/tb``."""

    def __init__(self, run_dir: Optional[str], is_main: bool = True, tensorboard: bool = True):
        self.run_dir, self.is_main = run_dir, is_main
        self._file = None
        self._writer = None
        if is_main and run_dir:
            os.makedirs(run_dir, exist_ok=True)
            self._file = open(os.path.join(run_dir, "log.txt"), "a")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._writer = SummaryWriter(os.path.join(run_dir, "tb"))

    def info(self, message: str, echo: bool = True) -> None:
        """Appends to log.txt and prints; `echo=False` for lines the caller prints elsewhere
        (a stop message that becomes the one-line error on stderr)."""
        if not self.is_main:
            return
        if echo:
            print(message, file=sys.stdout, flush=True)
        if self._file:
            self._file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
            self._file.flush()

    def scalars(self, values: Dict[str, Optional[float]], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in values.items():
            if value is not None and math.isfinite(float(value)):
                self._writer.add_scalar(tag, float(value), step)

    def per_class(self, statistics: Dict[str, Sequence[float]], epoch: int) -> None:
        """One row per statistic in ``<run>/per_class.csv`` (epoch, statistic, class_0 ... class_C-1)
        and one tensorboard histogram per statistic whose buckets are the classes: bucket c
        holds class c's value, so the histogram view reads as a per-class bar chart over epochs
        without a scalar series per class."""
        if not (self.is_main and self.run_dir):
            return
        path = os.path.join(self.run_dir, PER_CLASS_FILE)
        width = max(len(values) for values in statistics.values())
        new_file = not os.path.exists(path)
        # A stop signal waits for the rows: a half-written one would break the file's readers.
        with signals_deferred(), open(path, "a", newline="") as stream:
            writer = csv.writer(stream)
            if new_file:
                writer.writerow(["epoch", "statistic", *(f"class_{c}" for c in range(width))])
            for name, values in statistics.items():
                writer.writerow([epoch, name, *(f"{float(v):.6g}" for v in values)])
        if self._writer is None:
            return
        for name, values in statistics.items():
            weights = np.asarray(values, dtype=np.float64)
            classes = np.arange(len(weights), dtype=np.float64)
            total = float(weights.sum())
            self._writer.add_histogram_raw(
                name, min=0.0, max=float(len(weights) - 1), num=total, sum=float((classes * weights).sum()),
                sum_squares=float((classes ** 2 * weights).sum()),
                bucket_limits=(classes + 0.5).tolist(), bucket_counts=weights.tolist(), global_step=epoch)

    def forget_per_class_after(self, epoch: int) -> None:
        """Drops per_class.csv rows of epochs after ``epoch``: a resumed run trains them again."""
        path = os.path.join(self.run_dir, PER_CLASS_FILE) if (self.is_main and self.run_dir) else None
        if path is None or not os.path.exists(path):
            return
        with open(path, newline="") as stream:
            rows = list(csv.reader(stream))
        kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= epoch]
        if len(kept) == len(rows):
            return
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as stream:
            csv.writer(stream).writerows(kept)
        os.replace(tmp, path)

    def write_json(self, name: str, payload: Dict[str, Any]) -> None:
        if self.is_main and self.run_dir:
            write_json(os.path.join(self.run_dir, name), payload)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None
