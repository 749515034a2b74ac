"""Long-tailed training: BCCL (the default, with the BCCL paper's flags) and the standard
baselines (CE, focal, LDAM-DRW, class-balanced re-weighting and re-sampling, logit adjustment,
balanced softmax), with the semi-self paper's --loss_type / --train_rule spellings.

    python main.py --dataset cifar10 --arch resnet32 --epochs 200 --temp 0.1 --lr 0.15 \\
        --use-norm True --wd 5e-4 --cos True -b 128 --feat_dim 128 --tb_save
    python main.py --dataset cifar10 --imb_factor 0.01 --loss_type LDAM --train_rule DRW
    python main.py --dataset cifar10_sample --method ce --epochs 5

Every run writes config.json, log.txt, tensorboardX curves, last.pth / best.pth and results.json
into its run folder; ``python test.py --path RUN_FOLDER`` evaluates it.
"""
from __future__ import annotations

import argparse
import sys

from methods import METHOD_CLIS
from utils import cli
from utils.config import ConfigError, OneLineErrorParser, TrainConfig

# The BCCL paper's README command names no method: main.py then trains BCCL, as its main.py did.
DEFAULT_METHOD = "bccl"


def method_clis():
    return [METHOD_CLIS.get(name) for name in METHOD_CLIS.names()]


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description=__doc__)
    choices = sorted(name for entry in method_clis() for name in entry.names)
    parser.add_argument("--method", default=None, choices=choices,
                        help=f"training method (default: ERM when --loss_type/--train_rule/--sampler "
                             f"is given, else {DEFAULT_METHOD})")
    recipes = {name: METHOD_CLIS.get(name).recipe for name in METHOD_CLIS.names()}
    recipes.update({f"{name} on {dataset}": recipe for name in METHOD_CLIS.names()
                    for dataset, recipe in METHOD_CLIS.get(name).dataset_recipes.items()})
    cli.add_data_arguments(parser, default_dataset="cifar10")
    cli.add_model_arguments(parser, head_default="True for bccl, ldam and ldam_drw (--loss_type LDAM), False "
                                                  "for the others",
                            scale_default="1/0.03 for BCCL, 1 for LDAM (its loss scales the logits), 30 for "
                                          "the other losses")
    cli.add_optim_arguments(parser, recipes)
    cli.add_aug_arguments(parser, recipes)
    cli.add_run_arguments(parser, recipes)
    cli.add_semi_self_arguments(parser)
    for entry in method_clis():
        entry.add_arguments(parser)
    evaluation = parser.add_argument_group("evaluation variants reported at the end")
    evaluation.add_argument("--posthoc_tau", type=cli.limit(TrainConfig, "eval_posthoc_tau"), default=None,
                            help="also report post-hoc logit adjustment with this tau")
    evaluation.add_argument("--tau_norm", type=cli.limit(TrainConfig, "eval_tau_norm"), default=None,
                            help="also report the tau-normalised classifier with this tau")
    return parser


def choose_method(args: argparse.Namespace):
    claimed = [entry for entry in method_clis() if entry.claims(args)]
    if not claimed:
        fallback = DEFAULT_METHOD if DEFAULT_METHOD in [n for e in method_clis() for n in e.names] else "ce"
        claimed = [entry for entry in method_clis() if fallback in entry.names]
        args = argparse.Namespace(**{**vars(args), "method": fallback})
    if len(claimed) > 1:
        raise ConfigError(f"the flags select several methods ({', '.join(e.names[0] for e in claimed)}): "
                          "pass --method explicitly")
    # A re-balancing flag the chosen method does not read would be silently ignored.
    ignored = [f"--{flag}" for flag in ("loss_type", "train_rule", "sampler")
               if getattr(args, flag) is not None and flag not in getattr(claimed[0], "erm_flags", ())]
    if ignored:
        raise ConfigError(f"--method {args.method} does not use {', '.join(ignored)}: drop "
                          f"{'it' if len(ignored) == 1 else 'them'} or choose an ERM method (--method ce, ...)")
    return claimed[0].choose(args)


def build_config(args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """Returns the frozen config and a readable label for the run folder name."""
    choice = choose_method(args)
    recipe = choice.recipe
    aug_options = {**choice.aug_options, **{k: v for k, v in (("randaug_n", args.randaug_n),
                                                               ("randaug_m", args.randaug_m),
                                                               ("color_jitter", args.color_jitter)) if v is not None}}
    config = TrainConfig(
        script="main.py", dataset=args.dataset, data=cli.data_options(args, "shuffle"), arch=cli.architecture(args),
        head=choice.head, head_scale=choice.head_scale, method=choice.method,
        method_options=choice.options.as_kwargs(), batch_size=cli.pick(args.batch_size, recipe.batch_size),
        train_aug=tuple(cli.pick(args.aug, recipe.aug)), aug_options=aug_options,
        sampler=choice.sampler, sampler_options=choice.sampler_options,
        select_on=args.select_on,
        optim=cli.optim_config(args, recipe), run=cli.run_config(args, recipe.seed),
        drop_last=choice.drop_last, eval_posthoc_tau=args.posthoc_tau, eval_tau_norm=args.tau_norm,
        **cli.semi_self_fields(args))
    return config, choice.label


def main(args: argparse.Namespace) -> None:
    from utils.checkpoint import trusting
    from utils.runner import run_training

    config, label = build_config(args)
    with trusting(args.trust_checkpoint):
        run_training(config, label)


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(cli.run_guarded("main.py", lambda: main(arguments), trains=True))
