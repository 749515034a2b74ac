"""LCSL: long-tailed classification via self-labeling (Vu et al., IEEE TCSVT 2024).

    python train_LCSL.py --dataset='cifar100' --batch_size=64 --imb_factor=0.01 --alpha=1. --beta=1. \\
        --lr=0.01 --gpu=0 --weight_decay=5e-3 --epochs=300 --lambda_init=0.5
    python train_LCSL.py --dataset imagenet_lt --data_root /data/imagenet --split_dir splits/ImageNet_LT \\
        --data_aug autoaug --gpu 0,1,2,3
    python train_LCSL.py --dataset cifar10_sample --epochs 5 --workers 0

The student trains on mixed images with ground-truth labels plus the confident minority-class
labels of a teacher, the best student so far (methods/lcsl.py). The teacher is replaced, and
best.pth written, whenever the student improves on the selection split (--select_on: a balanced
validation split cut from unused training images by default, the test set as in the paper's
code with --select_on test). At the end best.pth is evaluated on the test set as the paper's code
does: accuracy and many/medium/few, with and without flip test-time augmentation, and with the
tau-normalised classifier (--tau_norm); the entries named selected* in results.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Dict, List, Tuple

from methods.lcsl import LCSLCommandLine
from utils import cli, dist
from utils.checkpoint import trusting
from utils.config import OneLineErrorParser, TrainConfig
from utils.evaluation import Variant
from utils.metrics import format_shot_table
from utils.report import report
from utils.run import FinishedRun, build_run, resume_at_start_epoch
from utils.training import train

COMMAND_LINE = LCSLCommandLine()


def get_args_parser() -> argparse.ArgumentParser:
    # 'resolve' lets the LCSL flags re-declare --dataset with the reference's spellings as aliases.
    parser = OneLineErrorParser(description=__doc__,
                                conflict_handler="resolve")
    recipes = {"lcsl": COMMAND_LINE.recipe}
    cli.add_data_arguments(parser, default_dataset="cifar100")
    cli.add_model_arguments(parser, head_default="False, the only classifier LCSL trains",
                            scale_default="none, LCSL refuses it")
    cli.add_optim_arguments(parser, recipes)
    cli.add_aug_arguments(parser, recipes)
    cli.add_run_arguments(parser, recipes)
    cli.add_semi_self_arguments(parser)
    COMMAND_LINE.add_arguments(parser)
    return parser


def build_config(args: argparse.Namespace) -> Tuple[TrainConfig, str]:
    """The frozen config and a label for the run folder name."""
    return COMMAND_LINE.build_config(args)


def final_variants(tau: float) -> List[Variant]:
    """What the paper's code reports for the selected model at the end: the trained and the
    tau-normalised classifier, each without and with flip test-time augmentation."""
    return [Variant(tau_norm=t, flip=flip) for t in (None, tau) for flip in (False, True)]


def print_final_report(results: Dict[str, Any], tau: float) -> None:
    selected = results["selected_report"]
    print(f"== LCSL final report: {selected['rule']} (the paper's code prints selected_flip_tta and "
          f"selected_tau_norm{tau:g}_flip_tta)")
    for name in selected["variants"]:
        print(f"-- {name}: {results[name]['rule'].split('; test set, ', 1)[1]}")
        print(format_shot_table(results[name]))


def main(args: argparse.Namespace) -> None:
    config, label = build_config(args)
    with trusting(args.trust_checkpoint):  # --resume and --pretrained_model reads
        resume = resume_at_start_epoch(config, label, args.start_epoch)
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, resume=resume))
        run = build_run(config, label)
    if isinstance(run, FinishedRun):
        return  # --resume auto found this run finished, its report included
    with run:
        results = report(run, train(run), selected=final_variants(args.tau_norm))
    if run.ctx.is_main:
        print_final_report(results, args.tau_norm)
    dist.barrier()


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(cli.run_guarded("train_LCSL.py", lambda: main(arguments), trains=True))
