"""Collect results.json files into Markdown tables (mean ± std over seeds).

    python scripts/make_table.py log/*/ [--paper] [--plot per_class.png] [--out table.md]

Runs are grouped by dataset, imbalance ratio, method label and architecture; seeds of the same
group are averaged. Last-epoch numbers and selected-checkpoint numbers are kept in separate
columns, each named after its selection rule, so a test-set-selected number is never mistaken
for a clean one. ``--paper`` adds the numbers the papers report next to ours.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

# Top-1 accuracy (%) reported by the papers (their code selects on the test set), keyed by
# (label, dataset, ratio). BCCL: its README; semi-self: 100 - the README's error rates.
PAPER_TOP1: Dict[Tuple[str, str, int], float] = {
    ("bccl", "cifar10", 100): 85.22, ("bccl", "cifar10", 50): 88.14, ("bccl", "cifar10", 10): 91.92,
    ("bccl", "cifar100", 100): 52.55, ("bccl", "cifar100", 50): 56.89, ("bccl", "cifar100", 10): 65.3,
    ("lcsl", "cifar10", 100): 85.8, ("lcsl", "cifar100", 100): 54.4, ("lcsl", "imagenet_lt", 1): 56.2,
    ("ce_ssp", "cifar10", 10): 87.72, ("ce_ssp", "cifar10", 50): 78.20, ("ce_ssp", "cifar10", 100): 73.50,
    ("ce_ssp", "cifar100", 10): 57.07, ("ce_ssp", "cifar100", 50): 45.04, ("ce_ssp", "cifar100", 100): 40.40,
    ("balanced_sampling_ssp", "cifar10", 10): 88.43, ("balanced_sampling_ssp", "cifar10", 50): 80.40,
    ("balanced_sampling_ssp", "cifar10", 100): 76.53, ("balanced_sampling_ssp", "cifar100", 10): 58.06,
    ("balanced_sampling_ssp", "cifar100", 50): 47.09, ("balanced_sampling_ssp", "cifar100", 100): 43.06,
}
METRICS = ("top1", "many", "medium", "few")


def find_results(paths: Sequence[str]) -> List[str]:
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += glob.glob(os.path.join(path, "**", "results.json"), recursive=True)
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"no run folder or results.json at {path}")
    return sorted(set(found))


def group_key(result: Dict[str, Any]) -> Tuple[str, int, str, str]:
    ratio = int(round(1 / result["imb_factor"])) if result.get("imb_factor") else 1
    label = result.get("label") or result.get("method", "?")
    return result.get("dataset", "?"), ratio, label, result.get("arch", "?")


def selected_entry(result: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """Test numbers of the checkpoint the run selected, and the name of the rule that chose it."""
    if result.get("select_on", "val" if result.get("best_on_val") else "test") == "val":
        return "best on val", result.get("best_on_val", {})
    return "best on TEST", result.get("best_on_test", {})


def mean_std(values: List[Optional[float]]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def build_table(results: List[Dict[str, Any]], paper: bool) -> str:
    groups: Dict[Tuple, List[Dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[group_key(result)].append(result)
    header = ["dataset", "ratio", "method", "arch", "seeds"]
    header += [f"last {m}" for m in METRICS] + ["selected top1", "selection"]
    if paper:
        header.append("paper top1")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, ratio, label, arch), members in sorted(groups.items()):
        row = [dataset, str(ratio), label, arch, str(len(members))]
        row += [mean_std([m.get("last", {}).get(metric) for m in members]) for metric in METRICS]
        rules = {selected_entry(m)[0] for m in members}
        row += [mean_std([selected_entry(m)[1].get("top1") for m in members]), "/".join(sorted(rules))]
        if paper:
            value = PAPER_TOP1.get((label, dataset, ratio))
            row.append("" if value is None else f"{value:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_per_class(results: List[Dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    groups: Dict[Tuple, List[Dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[group_key(result)].append(result)
    for (dataset, ratio, label, arch), members in sorted(groups.items()):
        per_class = np.array([[np.nan if v is None else v for v in m["last"]["per_class"]] for m in members])
        counts = members[0]["train_counts"]
        axis.plot(counts, np.nanmean(per_class, 0), marker="o", ms=3, label=f"{label} ({dataset} r{ratio})")
    axis.set_xscale("log")
    axis.set_xlabel("training images of the class")
    axis.set_ylabel("last-epoch test accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, folders of runs, or results.json files")
    parser.add_argument("--paper", action="store_true", help="add the papers' reported top-1")
    parser.add_argument("--plot", default=None, help="PNG of per-class accuracy against training count")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    try:
        paths = find_results(args.runs)
    except FileNotFoundError as error:
        print(f"make_table.py: error: {error}", file=sys.stderr)
        return 2
    if not paths:
        print("make_table.py: error: no results.json found under the given paths", file=sys.stderr)
        return 2
    results = [json.load(open(path)) for path in paths]
    table = build_table(results, args.paper)
    print(table)
    if args.out:
        with open(args.out, "w") as stream:
            stream.write(table + "\n")
    if args.plot:
        plot_per_class(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
