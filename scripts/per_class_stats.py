"""A run's per-class statistics over epochs, as Markdown tables (from ``<run>/per_class.csv``).

    python scripts/per_class_stats.py runs/evidence/lcsl_cifar10_seed0 [more runs...]
        [--stat lcsl/counted_labels lcsl/student_row_norm] [--epochs 1 50 100 160 200] [--share]
        [--plot stats.png]

Methods write one row per epoch and statistic (LCSL: the teacher's labels per class, all and
those that counted, and the student's classifier row norms and biases). One table per run and
statistic: a row per chosen epoch (default: the first, every quarter of the run and the last),
a column per class, headed by the class index and, when the run's results.json gives them, its
training count. ``--share`` shows each row as percentages of its sum (how far the teacher's
labels reach the tail); the last column is the row's sum. ``--plot`` draws every recorded epoch
of the chosen statistics, the runs side by side.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

# Runnable as ``python scripts/per_class_stats.py`` from anywhere: make the packages importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# standard library only
from utils.config import POSITIVE_INT, OneLineErrorParser, end_quietly_when_output_closes  # noqa: E402

PER_CLASS_FILE = "per_class.csv"


class StatsError(Exception):
    """A missing or malformed file; the message names it."""


def read_per_class(run: str) -> Dict[str, Dict[int, List[float]]]:
    """statistic -> epoch -> per-class values."""
    path = os.path.join(run, PER_CLASS_FILE)
    if not os.path.isfile(path):
        raise StatsError(f"{path} is missing: only methods with per-class statistics (LCSL) write it")
    table: Dict[str, Dict[int, List[float]]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            lines = stream.read().splitlines()
    except UnicodeDecodeError:
        raise StatsError(f"{path} is not UTF-8 text (damaged?)") from None
    rows = csv.reader(lines)
    header = next(rows, None)
    if not header or header[:2] != ["epoch", "statistic"]:
        raise StatsError(f"{path}: not a per-class statistics file (header {header})")
    for number, row in enumerate(rows, start=2):
        try:
            values = [float(v) for v in row[2:] if v != ""]
            table.setdefault(row[1], {})[int(row[0])] = values
        except (ValueError, IndexError):
            raise StatsError(f"{path}:{number}: expected epoch, statistic, then numbers") from None
    return table


def train_counts(run: str) -> Optional[List[int]]:
    path = os.path.join(run, "results.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            result = json.load(stream)
    except ValueError as error:  # not UTF-8, not JSON
        raise StatsError(f"{path} is not readable JSON ({type(error).__name__})") from None
    counts = result.get("train_counts") if isinstance(result, dict) else None
    if counts is not None and not (isinstance(counts, list) and all(isinstance(c, int) for c in counts)):
        raise StatsError(f"{path}: 'train_counts' must be a list of integers")
    return counts or None


def default_epochs(available: Sequence[int]) -> List[int]:
    """The first epoch, each quarter of the run and the last, among those recorded."""
    last = max(available)
    wanted = [min(available)] + [round(last * q / 4) for q in (1, 2, 3)] + [last]
    return sorted({min(available, key=lambda e: abs(e - w)) for w in wanted})


def format_value(value: float) -> str:
    if not math.isfinite(value):  # a diverged run's last epoch: shown as it was recorded
        return str(value)
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"


def stat_table(values: Dict[int, List[float]], epochs: Sequence[int], counts: Optional[List[int]],
               share: bool) -> str:
    width = max(len(v) for v in values.values())
    heads = [f"{c} ({counts[c]})" if counts and c < len(counts) else str(c) for c in range(width)]
    lines = ["| epoch | " + " | ".join(heads) + " | sum |",
             "|" + "---|" * (width + 2)]
    for epoch in epochs:
        if epoch not in values:
            raise StatsError(f"epoch {epoch} is not recorded (recorded: {min(values)} to {max(values)})")
        row = values[epoch]
        total = sum(row)
        cells = [f"{100 * v / total:.1f}" if share and total and math.isfinite(total) else format_value(v)
                 for v in row]
        lines.append(f"| {epoch} | " + " | ".join(cells) + f" | {format_value(total)} |")
    return "\n".join(lines)


def class_series(values: Dict[int, List[float]], share: bool) -> Tuple[List[int], List[List[float]]]:
    """(every recorded epoch, for each class its values over those epochs). With ``share`` each
    value is a percentage of its epoch's sum, NaN (a gap in a plotted line) where the sum is 0
    or not finite: an epoch whose teacher gave no label has no shares."""
    epochs = sorted(values)
    width = max(len(v) for v in values.values())
    series: List[List[float]] = [[] for _ in range(width)]
    for epoch in epochs:
        row = list(values[epoch]) + [math.nan] * (width - len(values[epoch]))
        total = sum(row)
        for c, value in enumerate(row):
            if share:
                value = 100 * value / total if total and math.isfinite(total) else math.nan
            series[c].append(value)
    return epochs, series


def plot_runs(path: str, runs: Sequence[str], stats: Optional[Sequence[str]], share: bool) -> None:
    """A grid of line plots: a row per statistic, a column per run, a line per class over epochs
    (labelled with the class's training count where results.json gives it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [read_per_class(run) for run in runs]
    names = list(stats) if stats else sorted(set().union(*tables))
    for run, table in zip(runs, tables):
        missing = [n for n in names if n not in table]
        if missing:
            raise StatsError(f"{run}: no statistic {', '.join(missing)} (recorded: {', '.join(sorted(table))})")
    figure, axes = plt.subplots(len(names), len(runs), figsize=(4.5 * len(runs), 3 * len(names)), squeeze=False)
    for column, (run, table) in enumerate(zip(runs, tables)):
        counts = train_counts(run)
        for row, name in enumerate(names):
            axis = axes[row][column]
            epochs, series = class_series(table[name], share)
            for c, values in enumerate(series):
                label = f"{c} ({counts[c]})" if counts and c < len(counts) else str(c)
                axis.plot(epochs, values, lw=1, label=label)
            axis.set_title(f"{os.path.basename(os.path.normpath(run))}: {name}", fontsize=9)
            axis.set_xlabel("epoch")
            axis.set_ylabel("% of the epoch's sum" if share else "value")
            axis.grid(alpha=0.3)
            if len(series) <= 20:  # beyond that a legend hides the lines
                axis.legend(fontsize=6, ncol=2, title="class (training images)" if counts else "class",
                            title_fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(run: str, stats: Optional[Sequence[str]], epochs: Optional[Sequence[int]], share: bool) -> str:
    table = read_per_class(run)
    names = list(stats) if stats else sorted(table)
    missing = [n for n in names if n not in table]
    if missing:
        raise StatsError(f"{run}: no statistic {', '.join(missing)} (recorded: {', '.join(sorted(table))})")
    counts = train_counts(run)
    parts = []
    for name in names:
        chosen = list(epochs) if epochs else default_epochs(sorted(table[name]))
        parts.append(f"{run}: {name}" + (" (% of each epoch's sum)" if share else "") + "\n\n"
                     + stat_table(table[name], chosen, counts, share))
    return "\n\n".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    parser = OneLineErrorParser(prog="per_class_stats.py", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders holding per_class.csv")
    parser.add_argument("--stat", nargs="+", default=None, help="statistics to show (default: all recorded)")
    parser.add_argument("--epochs", nargs="+", type=POSITIVE_INT, default=None, help="epochs to show (1-based)")
    parser.add_argument("--share", action="store_true", help="each row as percentages of its sum")
    parser.add_output_argument("--plot", figure=True, default=None,
                               help="also draw every recorded epoch: a row of panels per statistic, a column per run, "
                                    "a line per class (PNG, PDF or SVG)")
    args = parser.parse_args(argv)
    try:
        print("\n\n".join(report(run, args.stat, args.epochs, args.share) for run in args.runs))
        if args.plot:
            plot_runs(args.plot, args.runs, args.stat, args.share)
            print(f"\nplot written to {args.plot}")
    except (StatsError, OSError) as error:
        print(f"per_class_stats.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    end_quietly_when_output_closes()
    sys.exit(main())
