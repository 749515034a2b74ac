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
from typing import Any, Dict, List, Optional, Tuple

from datasets import DATASETS, SMALL_IMAGE_DATASETS
from datasets.augment import recipe_options
from utils import cli, dist
from utils.checkpoint import load_checkpoint, resolve_checkpoint_path, trusting
from utils.config import (FINITE, NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY, ConfigError,
                          OneLineErrorParser, TrainConfig)
from utils.evaluation import Variant
from utils.metrics import format_shot_table
from utils.report import report
from utils.run import FinishedRun, build_run, find_resume
from utils.training import train

# The reference's --dataset spellings.
DATASET_ALIASES = {"imagenet": "imagenet_lt", "inaturalist": "inat2018"}
CIFAR_DATASETS = SMALL_IMAGE_DATASETS  # 32-px in-memory data: CIFAR recipes and backbones
# ResNet-32 is the backbone the paper states for CIFAR (the released code trains a ResNet-34,
# --arch resnet34_cifar); ResNeXt-50 and ResNet-50 are the code's ImageNet-LT and iNat choices.
DEFAULT_ARCH = {"cifar10": "resnet32", "cifar100": "resnet32", "cifar10_sample": "resnet32",
                "imagenet_lt": "resnext50", "inat2018": "resnet50"}
# Balanced validation images per class on CIFAR-style data, from the images the LT subset left.
# The head class keeps all its images (none left), so it is absent from the split.
DEFAULT_VAL_PER_CLASS = 20
# --data_aug -> recipe per image style (docs/lcsl.md#augmentation): on CIFAR the reference gives every
# value other than 'none' AutoAugment + Cutout, 'sim_aug' included.
DATA_AUG = {"none": {"cifar": "standard", "imagenet": "standard"},
            "autoaug": {"cifar": "autoaug", "imagenet": "randaug"},
            "sim_aug": {"cifar": "autoaug", "imagenet": "simclr"}}
# LCSL config.py / train_LCSL.py (docs/lcsl.md#schedule-and-defaults): SGD, warm-up 10 then cosine.
DEFAULTS = dict(lr=0.01, weight_decay=5e-3, epochs=300, warmup_epochs=10, cos=True, schedule=(),
                lr_gamma=0.1, batch_size=64, seed=0)


def dataset_name(value: str) -> str:
    return DATASET_ALIASES.get(value, value)


def get_args_parser() -> argparse.ArgumentParser:
    # 'resolve' lets this script re-declare --dataset with the reference's spellings as aliases.
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                conflict_handler="resolve")
    cli.add_data_arguments(parser, default_dataset="cifar100")
    parser.add_argument("--dataset", default="cifar100", type=dataset_name, choices=DATASETS.names(),
                        help="dataset ('imagenet' and 'inaturalist' are accepted for imagenet_lt and inat2018)")
    parser.set_defaults(val_per_class=None)  # resolved per dataset in build_config
    cli.add_model_arguments(parser, default_arch=None)
    cli.add_optim_arguments(parser)
    cli.add_aug_arguments(parser)
    cli.add_run_arguments(parser)
    cli.add_semi_self_arguments(parser)
    group = parser.add_argument_group("LCSL (the flags of the paper's config.py)")
    group.add_argument("--alpha", type=NON_NEGATIVE, default=1.0, help="weight of the self-labeling loss")
    group.add_argument("--beta", type=NON_NEGATIVE, default=1.0, help="weight of the mixup loss")
    group.add_argument("--tau", type=POSITIVE, default=1.0, help="temperature of the teacher's softmax")
    group.add_argument("--lambda_init", type=PROBABILITY, default=0.5,
                       help="confidence (a softmax probability, in [0, 1]) a teacher label needs to count")
    group.add_argument("--fc_norm", type=FINITE, default=1.9,
                       help="> 0: L2-normalise the teacher's classifier rows each epoch (only the sign matters)")
    group.add_argument("--data_aug", type=str.lower, default=None, choices=sorted(DATA_AUG),
                       help="none: crop + flip; autoaug: AutoAugment + Cutout (CIFAR) / RandAugment "
                            "(ImageNet-style); sim_aug: SimCLR views with blur (ImageNet-style), "
                            "AutoAugment + Cutout on CIFAR as in the reference (default: none)")
    group.add_argument("--start_epoch", type=POSITIVE_INT, default=1,
                       help="> 1 continues the run's last.pth (--out_dir, or the newest matching run "
                            "under --root_log); it must be the epoch after the last finished one")
    group.add_argument("--tau_norm", type=cli.limit(TrainConfig, "eval_tau_norm"), default=1.9,
                       help="tau of the tau-normalised classifier in the final report")
    group.add_argument("--image_size", type=POSITIVE_INT, default=None,
                       help="accepted for the paper's commands and unused, as there: the dataset sets the size")
    group.add_argument("--optimizer", default="sgd", choices=["sgd"],
                       help="accepted for the paper's commands; SGD is the only optimiser, as there")
    return parser


def training_recipe(args: argparse.Namespace, style: str) -> Tuple[str, Dict[str, Any]]:
    """The augmentation recipe and its options from --data_aug (or the toolkit's --aug)."""
    if args.aug:
        if args.data_aug is not None:
            raise ConfigError("--aug and --data_aug both choose the training augmentation: pass one")
        if len(args.aug) != 1:
            raise ConfigError(f"LCSL trains on one view, but --aug lists {len(args.aug)} recipes")
        recipe, options = args.aug[0], {}
    else:
        recipe = DATA_AUG[args.data_aug or "none"][style]
        # LCSL's ImageNet sim_aug adds Gaussian blur to the SimCLR view (docs/lcsl.md#augmentation).
        options = {"blur": True} if recipe == "simclr" else {}
    for key in ("randaug_n", "randaug_m", "color_jitter"):
        value = getattr(args, key, None)
        if value is not None:
            if key not in recipe_options(recipe):
                raise ConfigError(f"--{key} is an option of other recipes than '{recipe}', the one this "
                                  "run trains with (--data_aug, or --aug)")
            options[key] = value
    return recipe, options


def default_selection(args: argparse.Namespace, val_per_class: int) -> str:
    """Select on a validation split wherever the data have one: the images --val_per_class cuts
    from the CIFAR leftovers, or a list dataset's own validation list (ImageNet-LT and Places-LT
    always have one; iNaturalist's validation list is its test set)."""
    if args.dataset in CIFAR_DATASETS:
        return "val" if val_per_class > 0 else "test"
    return "val" if args.dataset in ("imagenet_lt", "places_lt") or args.val_list else "test"


def check_flags(args: argparse.Namespace) -> None:
    if args.use_norm or args.head_scale is not None:
        raise ConfigError("LCSL trains a linear classifier (its teacher normalisation and the final "
                          "tau-normalisation act on the weight norms): drop --use_norm / --head_scale")


def build_config(args: argparse.Namespace) -> Tuple[TrainConfig, str]:
    """The frozen config and a label for the run folder name."""
    check_flags(args)
    cifar = args.dataset in CIFAR_DATASETS
    arch = args.arch or DEFAULT_ARCH.get(args.dataset)
    if arch is None:
        raise ConfigError(f"the LCSL paper names no backbone for --dataset {args.dataset}: pass --arch")
    val_per_class = args.val_per_class if args.val_per_class is not None else (DEFAULT_VAL_PER_CLASS if cifar else 0)
    select_on = cli.pick(args.select_on, default_selection(args, val_per_class))
    if select_on == "val" and cifar and val_per_class < 1:
        raise ConfigError("--select_on val needs a validation split: --val_per_class N (N >= 1) cuts one "
                          "from the unused training images; or pass --select_on test, as the paper's code")
    recipe, aug_options = training_recipe(args, "cifar" if cifar else "imagenet")
    method_options = dict(arch=arch, alpha=args.alpha, beta=args.beta, tau=args.tau, threshold=args.lambda_init,
                          fc_norm=args.fc_norm > 0, select_on=select_on)
    config = TrainConfig(
        script="train_LCSL.py", dataset=args.dataset,
        data=dataclasses.replace(cli.data_options(args, "first"), val_per_class=val_per_class),
        arch=arch, head="linear", head_scale=None, method="lcsl", method_options=method_options,
        batch_size=cli.pick(args.batch_size, DEFAULTS["batch_size"]), train_aug=(recipe,),
        aug_options=aug_options, sampler=None, sampler_options={}, select_on=select_on,
        optim=cli.optim_config(args, DEFAULTS), run=cli.run_config(args, DEFAULTS["seed"]),
        **cli.semi_self_fields(args))
    label = f"lcsl_{args.data_aug or ('none' if not args.aug else recipe)}_sel{select_on}"
    return config, label


def resolve_resume(config: TrainConfig, label: str, start_epoch: int) -> Optional[str]:
    """The checkpoint file to continue from (None: a fresh run). ``--start_epoch N > 1`` is the
    reference's way to resume: it means --resume auto, must find a checkpoint, and must name
    the epoch after the last finished one."""
    path = config.run.resume
    if path == "auto" and start_epoch == 1:
        return path  # run_training continues, restarts or skips this configuration's run
    if path == "auto" or (path is None and start_epoch > 1):
        path = find_resume(config, label)
    if start_epoch > 1:
        if path is None:
            where = config.run.out_dir or f"the runs under --root_log {config.run.root_log} named like this one"
            raise ConfigError(f"--start_epoch {start_epoch} continues a run, but there is no last.pth in "
                              f"{where}: pass the run with --out_dir or --resume PATH")
        finished = int(load_checkpoint(path, prefer="last.pth")["epoch"])
        if finished + 1 != start_epoch:
            raise ConfigError(f"--start_epoch {start_epoch}: {path} holds {finished} finished epochs, so "
                              f"training continues at epoch {finished + 1}; pass --start_epoch {finished + 1}")
    return resolve_checkpoint_path(path, prefer="last.pth") if path else None


def final_variants(tau: float) -> List[Variant]:
    """What the paper's code reports for the selected model at the end: the trained and the
    tau-normalised classifier, each without and with flip test-time augmentation."""
    return [Variant(tau_norm=t, flip=flip) for t in (None, tau) for flip in (False, True)]


def print_final_report(results: Dict[str, Any], tau: float) -> None:
    report = results["selected_report"]
    print(f"== LCSL final report: {report['rule']} (the paper's code prints selected_flip_tta and "
          f"selected_tau_norm{tau:g}_flip_tta)")
    for name in report["variants"]:
        print(f"-- {name}: {results[name]['rule'].split('; test set, ', 1)[1]}")
        print(format_shot_table(results[name]))


def main(args: argparse.Namespace) -> None:
    config, label = build_config(args)
    with trusting(args.trust_checkpoint):  # --resume and --pretrained_model reads
        resume = resolve_resume(config, label, args.start_epoch)
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
    sys.exit(cli.run_guarded("train_LCSL.py", lambda: main(arguments)))
