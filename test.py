"""Evaluate a trained run from its checkpoint alone.

    python test.py --path RUN_FOLDER_OR_CHECKPOINT [--which last|best] [--data_root R]
                   [--tta_flip] [--tau_norm T] [--posthoc_tau T] [--json OUT] [--plot PNG]

The checkpoint describes its method, model, dataset and class counts, so nothing else is needed;
weights load with strict=True. A run folder means its last.pth unless --which best is given
(best.pth was chosen by the rule recorded in the run, which is printed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Dict

import torch

from utils.config import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, OneLineErrorParser, output_file


def get_args_parser() -> argparse.ArgumentParser:
    from utils.checkpoint import add_trust_argument

    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True, help="run folder or checkpoint file")
    parser.add_argument("--which", choices=["last", "best"], default="last",
                        help="checkpoint of a run folder to evaluate")
    parser.add_argument("--data_root", "--data", dest="data_root", default=None,
                        help="override the data folder recorded in the checkpoint")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--gpu", default=None)
    parser.add_argument("-b", "--batch_size", "--batch-size", dest="batch_size", type=POSITIVE_INT, default=256)
    parser.add_argument("--workers", "-j", type=NON_NEGATIVE_INT, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"],
                        help="autocast precision (auto: native bf16/fp16 on GPUs, fp32 on CPUs without bf16)")
    parser.add_argument("--tta_flip", action="store_true", help="average with the mirrored image")
    parser.add_argument("--tau_norm", type=NON_NEGATIVE, default=None, help="tau-normalise the classifier")
    parser.add_argument("--posthoc_tau", type=NON_NEGATIVE, default=None, help="post-hoc logit adjustment")
    parser.add_argument("--json", type=output_file, default=None, help="write the summary to this JSON file")
    parser.add_argument("--plot", type=output_file, default=None,
                        help="write per-class accuracy vs training count (PNG)")
    add_trust_argument(parser)
    return parser


def rebuild(payload: Dict[str, Any]):
    """Method (with its network) exactly as trained, from the checkpoint's own description."""
    from methods import build_method
    from models import build_model
    from utils.checkpoint import CheckpointError

    model = build_model(**payload["model_kwargs"])
    method = build_method(payload["method"], model, payload["dataset"]["train_counts"],
                          **payload["method_kwargs"])
    try:
        method.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise CheckpointError(f"{payload['path']}: weights do not match the recorded model ({first})") from None
    return method


def evaluation_set(payload: Dict[str, Any], data_root, split: str):
    from datasets import DataOptions, DatasetError, build_dataset

    info = payload["dataset"]
    options = dict(info["options"])
    if data_root is not None:
        options["data_root"] = data_root
    data = build_dataset(info["name"], DataOptions(**options))
    if list(data.train_counts) != list(info.get("labeled_counts", info["train_counts"])):
        raise DatasetError(f"the data under {options['data_root']} gives other class counts than the "
                           "checkpoint was trained with: point --data_root at the training data")
    # Shot groups use the counts the model was trained with (pseudo-labelled images included).
    data.train_counts = list(info["train_counts"])
    source = data.test if split == "test" else data.val
    if source is None:
        raise DatasetError("this run has no validation split (it was trained without --val_per_class)")
    return data, source


def print_summary(title: str, summary: Dict[str, Any]) -> None:
    from utils.metrics import format_shot_table

    print(f"== {title}")
    print(format_shot_table(summary))


def plot_per_class(path: str, summary: Dict[str, Any], counts) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.scatter(counts, summary["per_class"], s=12)
    axis.set_xscale("log")
    axis.set_xlabel("training images of the class")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"per-class accuracy (top-1 {summary['top1']:.2f})")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(args: argparse.Namespace) -> None:
    from datasets.augment import build_transform
    from datasets.loaders import build_eval_loader
    from losses.priors import posthoc_adjusted
    from models.heads import tau_normalize_head
    from utils import dist
    from utils.checkpoint import load_checkpoint
    from utils.engine import DeviceInputs, evaluate

    payload = load_checkpoint(args.path, prefer=f"{args.which}.pth", trust=args.trust_checkpoint)
    method = rebuild(payload)
    data, source = evaluation_set(payload, args.data_root, args.split)
    ctx = dist.setup_devices(args.gpu)
    network = method.classifier()
    if args.tau_norm is not None:
        network = type(network)(network.backbone, tau_normalize_head(network.head, args.tau_norm))
    network.to(ctx.device).eval()
    network = dist.wrap_forward_only(network, ctx)  # --gpu 0,1,..: batches split over the GPUs
    predict = network
    if args.posthoc_tau is not None:
        predict = posthoc_adjusted(network, data.train_counts, args.posthoc_tau, ctx.device)
    transform = None if data.style == "cifar" else build_transform("test", data.style, data.image_size)
    loader = build_eval_loader(source, transform, args.batch_size, workers=args.workers, rank=ctx.rank,
                               world_size=ctx.world_size)
    inputs = DeviceInputs(data.mean, data.std, ctx.device)
    summary = evaluate(predict, loader, inputs, ctx, data.train_counts, args.amp, args.tta_flip)

    if not ctx.is_main:
        return
    rule = payload.get("config", {}).get("select_on", "?")
    chosen = os.path.basename(payload["path"])
    note = "last epoch" if chosen == "last.pth" else f"selected by best top-1 on the {rule} split"
    variants = [v for v, on in (("flip TTA", args.tta_flip), (f"tau-norm {args.tau_norm}", args.tau_norm is not None),
                                (f"post-hoc LA tau {args.posthoc_tau}", args.posthoc_tau is not None)) if on]
    title = (f"{data.name} {args.split} | {payload['method']} {payload['model_kwargs']['arch']} | "
             f"{payload['path']} (epoch {payload['epoch']}, {note})" + (f" | {', '.join(variants)}" if variants else ""))
    print_summary(title, summary)
    if args.json:
        from utils.logger import write_json

        write_json(args.json, {**summary, "checkpoint": payload["path"], "epoch": payload["epoch"],
                               "checkpoint_rule": note, "variants": variants, "split": args.split})
    if args.plot:
        plot_per_class(args.plot, summary, data.train_counts)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    from utils.cli import run_guarded

    arguments = get_args_parser().parse_args()
    sys.exit(run_guarded("test.py", lambda: main(arguments)))
