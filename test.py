"""Evaluate a trained run from its checkpoint alone.

    python test.py --path RUN_FOLDER_OR_CHECKPOINT [--which last|best] [--data_root R]
                   [--tta_flip] [--tau_norm T] [--posthoc_tau T] [--json OUT] [--plot PNG]

The checkpoint describes its method, model, dataset (with the absolute data folder it was read
from) and class counts, so nothing else is needed; weights load with strict=True. A run folder
means its last.pth unless --which best is given (best.pth was chosen by the rule recorded in the
run, which is printed). The evaluation is the training log's own: the same loaders, batch size,
precision, memory format and ``method.predict``, so the numbers match the log for the same file.
The data folder used is printed; a missing one is an error (nothing is ever downloaded here).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Dict, Optional

import torch

from utils.config import NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE_INT, OneLineErrorParser, output_file


def get_args_parser() -> argparse.ArgumentParser:
    from utils.checkpoint import add_trust_argument

    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", required=True, help="run folder or checkpoint file")
    parser.add_argument("--which", choices=["last", "best"], default="last",
                        help="checkpoint of a run folder to evaluate")
    parser.add_argument("--data_root", "--data", dest="data_root", default=None,
                        help="read the data from this folder instead of the one recorded in the checkpoint")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    parser.add_argument("--gpu", default=None)
    parser.add_argument("-b", "--batch_size", "--batch-size", dest="batch_size", type=POSITIVE_INT, default=None,
                        help="images per evaluation batch (default: the training run's evaluation batch)")
    parser.add_argument("--workers", "-j", type=NON_NEGATIVE_INT, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--amp", default=None, choices=["auto", "none", "bf16", "fp16"],
                        help="autocast precision (default: the run's --amp; auto: native bf16/fp16 on GPUs, "
                             "fp32 on CPUs without bf16)")
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


def data_options(payload: Dict[str, Any], data_root: Optional[str]):
    """The checkpoint's data options with absolute paths, `data_root` (--data_root) overriding
    its folder. Checkpoints from before paths were stored absolute hold them relative to the
    folder training ran in, recovered by ``training_folder``; never relative to this process's."""
    from datasets import DataOptions, DatasetError
    from datasets.loaders import PATH_OPTIONS, absolute_data_options

    info = payload["dataset"]
    # download=False: the evaluation must read the run's data, never a fresh copy fetched here.
    options = DataOptions(**{**info["options"], "download": False})
    if data_root is not None:
        options = dataclasses.replace(options, data_root=os.path.abspath(data_root))
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
        raise DatasetError(f"data folder {options.data_root} ({source}) does not exist: point test.py "
                           "--data_root at the data the run was trained on")
    return options


def evaluation_set(payload: Dict[str, Any], data_root, split: str):
    from datasets import DatasetError, build_dataset

    info = payload["dataset"]
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
    from datasets.loaders import build_eval_loaders
    from losses.priors import posthoc_adjusted
    from utils import dist
    from utils.checkpoint import load_checkpoint
    from utils.engine import DeviceInputs, evaluate

    payload = load_checkpoint(args.path, prefer=f"{args.which}.pth", trust=args.trust_checkpoint,
                              exact=True)
    # The model code (torchvision with it, seconds) loads once the file is accepted as a checkpoint.
    from models.heads import tau_normalize_head

    method = rebuild(payload)
    data, data_root = evaluation_set(payload, args.data_root, args.split)
    ctx = dist.setup_devices(args.gpu)
    # The run's own evaluation settings (the training log's numbers come from them); older
    # checkpoints without them get the defaults of their time.
    run = payload.get("config", {}).get("run", {})
    amp = args.amp or run.get("amp", "auto")
    channels_last = bool(run.get("channels_last", False))
    method.to(ctx.device)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    # No DDP wrapper (nothing is trained); --gpu 0,1,..: DataParallel splits batches over GPUs.
    method.wrap(lambda net: dist.wrap_forward_only(net, ctx), lambda net: dist.wrap_forward_only(net, ctx))
    method.eval()
    predict = method.predict  # what the training loop evaluates
    if args.tau_norm is not None:
        network = method.classifier()
        network = type(network)(network.backbone, tau_normalize_head(network.head, args.tau_norm))
        predict = dist.wrap_forward_only(network.to(ctx.device).eval(), ctx)
    if args.posthoc_tau is not None:
        predict = posthoc_adjusted(predict, data.train_counts, args.posthoc_tau, ctx.device)
    batch_per_rank = payload.get("config", {}).get("batch_size", 0) // ctx.world_size
    loaders = build_eval_loaders(data, batch_per_rank, workers=args.workers, rank=ctx.rank,
                                 world_size=ctx.world_size, batch_size=args.batch_size)
    inputs = DeviceInputs(data.mean, data.std, ctx.device, channels_last)
    if ctx.is_main:
        print(f"data: {data_root}" + (" (--data_root)" if args.data_root else " (recorded in the checkpoint)"))
    summary = evaluate(predict, loaders[args.split], inputs, ctx, data.train_counts, amp, args.tta_flip)

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
