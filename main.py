"""Long-tailed training with the standard baselines (CE, focal, LDAM-DRW, class-balanced
re-weighting and re-sampling, logit adjustment, balanced softmax).

    python main.py --dataset cifar10 --imb_factor 0.01 --loss_type LDAM --train_rule DRW
    python main.py --dataset cifar10_sample --method ce --epochs 5

Every run writes config.json, log.txt, tensorboardX curves, last.pth / best.pth and results.json
into its run folder; ``python test.py --path RUN_FOLDER`` evaluates it.
"""
from __future__ import annotations

import argparse
import sys

from methods import erm
from utils import cli
from utils.config import ConfigError, OneLineErrorParser, TrainConfig

ERM_METHODS = sorted(erm.PRESETS)


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default=None, choices=ERM_METHODS,
                        help="training method (default: from --loss_type/--train_rule, else ce)")
    cli.add_data_arguments(parser, default_dataset="cifar10")
    cli.add_model_arguments(parser, default_arch="resnet32")
    cli.add_optim_arguments(parser)
    cli.add_aug_arguments(parser)
    cli.add_run_arguments(parser)
    erm.add_arguments(parser)
    eval_group = parser.add_argument_group("evaluation variants reported at the end")
    eval_group.add_argument("--posthoc_tau", type=float, default=None,
                            help="also report post-hoc logit adjustment with this tau")
    eval_group.add_argument("--tau_norm", type=float, default=None,
                            help="also report the tau-normalised classifier with this tau")
    return parser


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """Returns the frozen config and a readable label for the run folder name."""
    loss, rule, sampler = erm.resolve(args, args.method)
    label = args.method or "_".join(p for p in (loss, rule if rule != "none" else "", sampler or "") if p)
    defaults = erm.DEFAULTS
    normed = loss == "ldam" if args.use_norm is None else args.use_norm
    if loss == "ldam" and not normed:
        raise ConfigError("the LDAM loss expects cosine logits: drop --use_norm False")
    head_scale = args.head_scale if args.head_scale is not None else (
        (1.0 if loss == "ldam" else 30.0) if normed else None)
    if not normed and args.head_scale is not None:
        raise ConfigError("--head_scale applies to the cosine classifier only: add --use_norm True")
    aug_options = {k: v for k, v in (("randaug_n", args.randaug_n), ("randaug_m", args.randaug_m))
                   if v is not None}
    config = TrainConfig(
        script="main.py", dataset=args.dataset, data=cli.data_options(args, "shuffle"), arch=args.arch,
        head="normed" if normed else "linear", head_scale=head_scale, method="erm",
        method_options=erm.options_from_args(args, loss, rule),
        batch_size=cli.pick(args.batch_size, defaults["batch_size"]),
        train_aug=tuple(cli.pick(args.aug, defaults["aug"])), aug_options=aug_options,
        sampler=sampler,
        sampler_options={"samples_per_class": args.samples_per_class} if sampler == "class_aware" else (
            {"beta": args.cb_beta} if sampler == "effective_number" else {}),
        select_on=cli.pick(args.select_on, "val" if args.val_per_class > 0 else "test"),
        optim=cli.optim_config(args, defaults), run=cli.run_config(args, defaults["seed"]),
        eval_posthoc_tau=args.posthoc_tau, eval_tau_norm=args.tau_norm)
    return config, label


def main(args: argparse.Namespace) -> None:
    from utils.runner import run_training

    config, label = build_config(args)
    run_training(config, label)


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(cli.run_guarded("main.py", lambda: main(arguments)))
