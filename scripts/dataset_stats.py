"""Per-class counts, shot groups and selected indices of a long-tailed training split.

    python scripts/dataset_stats.py --dataset cifar10_sample --imb_factor 0.01
    python scripts/dataset_stats.py --dataset cifar100 --imb_factor 0.01 --json
    python scripts/dataset_stats.py --dataset cifar10 --imb_factor 0.02 --plot counts.png

``--json`` prints one object: num_classes, counts, total, groups (many > 100, medium 20-100,
few < 20 training images) and indices (positions in the original training file, class order
then selection order), so two recipes or two repos can be compared with a diff.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

# Runnable as ``python scripts/dataset_stats.py`` from the repo root: make the packages importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DATASETS, DataOptions, DatasetError, LongTailData, build_dataset  # noqa: E402
from datasets.longtail import IMB_TYPES, SELECTIONS  # noqa: E402
from utils.config import FRACTION, SEED, OneLineErrorParser  # noqa: E402
from utils.metrics import shot_groups  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    defaults = DataOptions()
    parser = OneLineErrorParser(prog="dataset_stats.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS.names(), help="dataset")
    parser.add_argument("--imb_factor", type=FRACTION, default=defaults.imb_factor,
                        help="1 / imbalance ratio, in (0, 1]")
    parser.add_argument("--imb_type", default=defaults.imb_type, choices=IMB_TYPES, help="per-class count profile")
    parser.add_argument("--lt_selection", default=defaults.lt_selection, choices=SELECTIONS,
                        help="which images of each class the long-tailed subset keeps")
    parser.add_argument("--lt_seed", type=SEED, default=defaults.lt_seed, help="seed of the 'shuffle' selection")
    parser.add_argument("--data_root", default=defaults.data_root, help="dataset folder")
    parser.add_argument("--split_dir", default=None, help="folder of the ImageNet-LT / iNat / Places-LT lists")
    parser.add_argument("--train_list", default=None, help="training list (default: the dataset's own)")
    parser.add_argument("--test_list", default=None, help="test list (default: the dataset's own)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_output_argument("--plot", figure=True, default=None, metavar="PATH",
                               help="write a bar chart of the counts (PNG)")
    return parser


def summary(data: LongTailData) -> dict:
    """The JSON-ready description of ``data``'s training split."""
    counts = [int(n) for n in data.train_counts]
    return {
        "dataset": data.name,
        "num_classes": data.num_classes,
        "counts": counts,
        "total": sum(counts),
        "groups": shot_groups(counts),
        "indices": [int(i) for i in data.train_indices] if data.train_indices is not None else None,
    }


def table(data: LongTailData) -> str:
    """A readable per-class table followed by the group sizes."""
    counts = data.train_counts
    groups = shot_groups(counts)
    group_of = {c: name for name, members in groups.items() for c in members}
    names = data.class_names or [""] * data.num_classes
    width = max([len("class")] + [len(n) for n in names])
    lines = [f"{data.name}: {data.num_classes} classes, {sum(counts)} training images, "
             f"imbalance ratio {max(counts) / max(min(counts), 1):.1f}",
             f"{'idx':>5}  {'class':<{width}}  {'count':>7}  group"]
    for c, n in enumerate(counts):
        lines.append(f"{c:>5}  {names[c]:<{width}}  {n:>7}  {group_of[c]}")
    lines.append("  ".join(f"{name}: {len(members)}" for name, members in groups.items()))
    return "\n".join(lines)


def plot_counts(counts: List[int], title: str, path: str) -> None:
    """Bar chart of the per-class counts, log scale so the tail stays visible."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; the chart goes straight to a file
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(4.0, min(16.0, len(counts) * 0.12 + 3)), 3.5))
    axis.bar(range(len(counts)), counts, width=1.0 if len(counts) > 50 else 0.8, color="tab:blue")
    axis.set_yscale("log")
    axis.set_xlabel("class index (label order)")
    axis.set_ylabel("training images")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(args: argparse.Namespace) -> None:
    options = DataOptions(
        data_root=args.data_root,
        imb_type=args.imb_type,
        imb_factor=args.imb_factor,
        lt_selection=args.lt_selection,
        lt_seed=args.lt_seed,
        split_dir=args.split_dir,
        train_list=args.train_list,
        test_list=args.test_list,
    )
    try:
        data = build_dataset(args.dataset, options)
    except DatasetError as error:
        print(f"dataset_stats.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        print(json.dumps(summary(data)))
    else:
        print(table(data))
    if args.plot:
        plot_counts(data.train_counts, f"{data.name}, {sum(data.train_counts)} images", args.plot)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
