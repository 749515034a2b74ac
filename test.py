"""Evaluate a trained run from its checkpoint alone.

    python test.py --path RUN_FOLDER_OR_CHECKPOINT [--which last|best] [--data_root R]
                   [--tta_flip] [--tau_norm T] [--posthoc_tau T] [--json OUT] [--plot PNG]
                   [--confusion CSV]

The checkpoint describes its method, model, dataset (with the absolute data folder it was read
from) and class counts, so nothing else is needed; weights load with strict=True. A run folder
means its last.pth unless --which best is given (best.pth was chosen by the rule recorded in the
run, which is printed). The evaluation is the training log's own: the same loaders, batch size,
precision, memory format and ``method.predict``, so the numbers match the log for the same file.
The data folder used is printed; a missing one is an error (nothing is ever downloaded here).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict

import torch

from utils.config import (AMP_CHOICES, GPU_HELP, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, OneLineErrorParser,
                          user_path)


def get_args_parser() -> argparse.ArgumentParser:
    from utils.checkpoint import add_trust_argument

    parser = OneLineErrorParser(description=__doc__)
    parser.add_argument("--path", required=True, type=user_path, help="run folder or checkpoint file")
    parser.add_argument("--which", choices=["last", "best"], default="last",
                        help="checkpoint of a run folder to evaluate")
    parser.add_argument("--data_root", "--data", dest="data_root", default=None, type=user_path,
                        help="read the data from this folder instead of the one recorded in the checkpoint")
    parser.add_argument("--split", choices=["test", "val"], default="test", help="the evaluation split to score")
    parser.add_argument("--gpu", default=None, help=GPU_HELP)
    parser.add_argument("-b", "--batch_size", "--batch-size", dest="batch_size", type=POSITIVE_INT, default=None,
                        help="images per evaluation batch (default: the training run's evaluation batch)")
    parser.add_argument("--workers", "-j", type=NON_NEGATIVE_INT, default=min(4, os.cpu_count() or 1),
                        help="DataLoader worker processes")
    parser.add_argument("--amp", default=None, choices=AMP_CHOICES,
                        help="autocast precision (default: the one the checkpoint's epoch trained in, which "
                             "its results were scored in; auto: native bf16/fp16 on GPUs, bf16 on CPUs with "
                             "native bf16, else fp32)")
    parser.add_argument("--tta_flip", action="store_true", help="average with the mirrored image")
    parser.add_argument("--tau_norm", type=NON_NEGATIVE, default=None, help="tau-normalise the classifier")
    parser.add_argument("--posthoc_tau", type=NON_NEGATIVE, default=None, help="post-hoc logit adjustment")
    parser.add_output_argument("--json", default=None, help="write the summary to this JSON file")
    parser.add_output_argument("--plot", figure=True, default=None,
                               help="write per-class accuracy vs training count (PNG)")
    parser.add_output_argument("--confusion", default=None,
                               help="write the confusion matrix to this CSV file (rows: true class, columns: "
                                    "predicted) and print where the images of the smallest classes went")
    add_trust_argument(parser)
    return parser


def print_summary(title: str, summary: Dict[str, Any]) -> None:
    from utils.metrics import format_shot_table

    print(f"== {title}")
    print(format_shot_table(summary))


def plot_per_class(path: str, summary: Dict[str, Any], counts, split: str = "test") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.scatter(counts, summary["per_class"], s=12)
    axis.set_xscale("log")
    axis.set_xlabel("training images of the class")
    axis.set_ylabel(f"{split} accuracy (%)")
    axis.set_title(f"per-class accuracy (top-1 {summary['top1']:.2f})")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def class_label(names, index: int) -> str:
    return f"{index} {names[index]}" if index < len(names) and str(names[index]) != str(index) else str(index)


def write_confusion(path: str, matrix, names) -> None:
    """The matrix as CSV: a header of predicted classes, then a row per true class (through a
    temporary file and a rename, so an interrupted write leaves no half file)."""
    import csv

    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as stream:
        table = csv.writer(stream)
        table.writerow(["true \\ predicted"] + [class_label(names, c) for c in range(len(matrix))])
        for true_class, row in enumerate(matrix):
            table.writerow([class_label(names, true_class)] + [int(count) for count in row])
    os.replace(tmp, path)


def print_confusions(matrix, train_counts, names, classes: int = 5) -> None:
    """Where the test images of the classes with the fewest training images went."""
    from utils.metrics import largest_confusions

    smallest = sorted(range(len(train_counts)), key=lambda c: (train_counts[c], c))[:classes]
    print(f"where the images of the {len(smallest)} classes with the fewest training images went "
          "(share of the class's images):")
    for c in smallest:
        total = sum(matrix[c])
        if not total:
            print(f"  {class_label(names, c)} ({train_counts[c]} training images): no image in this split")
            continue
        others = ", ".join(f"{class_label(names, p)} {share:.2f} %" for p, share in largest_confusions(matrix, c))
        print(f"  {class_label(names, c)} ({train_counts[c]} training images): {100.0 * matrix[c][c] / total:.2f} % "
              f"right" + (f"; {others}" if others else ""))


def main(args: argparse.Namespace) -> None:
    from utils.checkpoint import load_checkpoint

    payload = load_checkpoint(args.path, prefer=f"{args.which}.pth", trust=args.trust_checkpoint,
                              exact=True)
    # The model code (torchvision with it, seconds) loads once the file is accepted as a checkpoint.
    from datasets.loaders import build_eval_loaders
    from datasets.rebuild import evaluation_set
    from methods import rebuild
    from utils import dist
    from utils.engine import DeviceInputs, resolve_amp, runs_natively
    from utils.evaluation import Variant, evaluate_variants
    from utils.run import selection_rule

    method = rebuild(payload)
    data, data_root = evaluation_set(payload, args.data_root, args.split)
    ctx = dist.setup_devices(args.gpu)
    # The run's own evaluation settings (the training log's numbers come from them); older
    # checkpoints without them get the defaults of their time.
    run = payload.get("config", {}).get("run", {})
    # The precision the checkpoint's epoch trained and was scored in. Where the run's --amp auto
    # chose one this device only emulates (bf16 on a CPU without it: many times slower), --amp
    # auto here instead, named in the printout.
    recorded, asked = payload.get("records", {}).get("precision"), run.get("amp", "auto")
    if args.amp:
        amp, why = args.amp, "--amp"
    elif asked != "auto" or not recorded:  # a precision the run asked for by name is reproduced
        amp, why = asked, f"the run's --amp {asked}"
    elif runs_natively(recorded, ctx.device):
        amp, why = recorded, "what the run's --amp auto trained in"
    else:
        amp, why = "auto", (f"the run's --amp auto trained in {recorded}, which this device emulates: "
                            f"--amp {recorded} evaluates in it, slowly")
    channels_last = bool(run.get("channels_last", False))
    method.to(ctx.device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    # No DDP wrapper (nothing is trained); --gpu 0,1,..: DataParallel splits batches over GPUs.
    method.wrap(lambda net: dist.wrap_forward_only(net, ctx), lambda net: dist.wrap_forward_only(net, ctx))
    method.eval()
    variant = Variant(tau_norm=args.tau_norm, posthoc_tau=args.posthoc_tau, flip=args.tta_flip)
    batch_per_rank = payload.get("config", {}).get("batch_size", 0) // ctx.world_size
    loaders = build_eval_loaders(data, batch_per_rank, workers=args.workers, rank=ctx.rank,
                                 world_size=ctx.world_size, batch_size=args.batch_size)
    inputs = DeviceInputs(data.mean, data.std, ctx.device, channels_last)
    if ctx.is_main:
        print(f"data: {data_root}" + (" (--data_root)" if args.data_root else " (recorded in the checkpoint)"))
        print(f"precision: {resolve_amp(amp, ctx.device)} ({why})")
        scored, now = payload["dataset"].get("split_sizes", {}).get(args.split), len(getattr(data, args.split))
        if scored is not None and scored != now:  # checkpoints before split_sizes was recorded: no note
            print(f"note: the {args.split} split now holds {now} images, but the run was scored on {scored}: its "
                  "list or data changed since training, so these numbers are not the log's")
    summary = evaluate_variants(method, [variant], loaders[args.split], inputs, ctx, data.train_counts, amp,
                                confusion=bool(args.confusion))[variant]

    if not ctx.is_main:
        return
    rule = payload.get("config", {}).get("select_on", "?")
    chosen = os.path.basename(payload["path"])
    # best.pth is what the run selected; any other file (a copied snapshot) is only its epoch.
    note = {"last.pth": "last epoch", "best.pth": f"selected: {selection_rule(method, rule)}"}.get(
        chosen, f"the file {chosen}")
    title = (f"{data.name} {args.split} | {payload['method']} {payload['model_kwargs']['arch']} | "
             f"{payload['path']} (epoch {payload['epoch']}, {note}) | {variant.describe(method.tau_norm_keeps_bias)}")
    print_summary(title, summary)
    if args.json:
        from utils.logger import write_json

        write_json(args.json, {**summary, "checkpoint": payload["path"], "epoch": payload["epoch"],
                               "checkpoint_rule": note, "variant": variant.describe(method.tau_norm_keeps_bias), "split": args.split})
    if args.plot:
        plot_per_class(args.plot, summary, data.train_counts, args.split)
        print(f"plot written to {args.plot}")
    if args.confusion:
        names = list(data.class_names or [])
        print_confusions(summary["confusion"], list(data.train_counts), names)
        write_confusion(args.confusion, summary["confusion"], names)
        print(f"confusion matrix written to {args.confusion}")


if __name__ == "__main__":
    from utils.cli import run_guarded

    arguments = get_args_parser().parse_args()
    sys.exit(run_guarded("test.py", lambda: main(arguments)))
