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
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from datasets import DATASETS, SMALL_IMAGE_DATASETS, LongTailData, build_dataset
from datasets.augment import recipe_options
from models.heads import tau_normalize_head
from test import rebuild
from utils import cli, dist
from utils.checkpoint import load_checkpoint, resolve_checkpoint_path, trusting
from utils.config import (FINITE, NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY, ConfigError,
                          OneLineErrorParser, TrainConfig)
from utils.engine import DeviceInputs, collect_logits
from utils.logger import write_json
from utils.metrics import format_shot_table, summarize
from utils.runner import build_loaders, find_resume, run_label, run_training

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
        # The search must use the folder name run_training gives (SSP / pseudo-label suffixes).
        path = find_resume(config, run_label(config, label))
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


def check_selection_split(config: TrainConfig, data: LongTailData) -> None:
    """The teacher is replaced by mean per-class accuracy and best.pth is chosen by top-1 on the
    same split; they are the same number only when every present class has as many images."""
    split = config.select_on
    source = data.val if split == "val" else data.test
    if source is None or len(source) == 0:
        raise ConfigError(f"--select_on {split}: {data.name} has no {split} images here")
    counts = np.bincount(source.targets, minlength=data.num_classes)
    present = counts[counts > 0]
    if present.min() != present.max():
        fix = (f": lower --val_per_class to {present.min()}" if split == "val" and config.data.val_per_class
               else ": select on a balanced split")
        raise ConfigError(f"--select_on {split}: the {split} split holds {present.min()} to {present.max()} "
                          f"images per class, so top-1 (best.pth) and mean per-class accuracy (the "
                          f"teacher's rule) could pick different students{fix}")


def evaluate_selected(config: TrainConfig, ctx: dist.DeviceContext, run_dir: str, tau: float) -> Dict[str, Any]:
    """best.pth on the test set as the paper's code evaluates it at the end: the trained and the
    tau-normalised classifier, each without and with flip test-time augmentation."""
    began = time.time()
    payload = load_checkpoint(os.path.join(run_dir, "best.pth"))
    method = rebuild(payload)
    data = build_dataset(config.dataset, config.data)
    loader = build_loaders(config, data, ctx, num_views=1)["test"]
    inputs = DeviceInputs(data.mean, data.std, ctx.device, config.run.channels_last)
    counts = payload["dataset"]["train_counts"]  # those trained with (pseudo-labelled data included)
    student = method.classifier()
    networks = {"": ("trained classifier", student),
                f"_tau_norm{tau:g}": (f"tau-normalised classifier (tau={tau:g})",
                                      type(student)(student.backbone, tau_normalize_head(student.head, tau)))}
    epoch, split = int(payload["epoch"]), config.select_on
    chosen = (f"best.pth = the student of epoch {epoch}, the best mean per-class accuracy on the {split} "
              f"split (== top-1 there), which also became the teacher")
    entries: Dict[str, Any] = {}
    for suffix, (what, network) in networks.items():
        network.to(ctx.device).eval()
        predict = dist.wrap_forward_only(network, ctx)
        # Two passes per classifier, not three: flip TTA is the mean of these two logit sets,
        # exactly as evaluate(..., tta_flip=True) computes it.
        logits, targets = collect_logits(predict, loader, inputs, ctx, config.run.amp)
        mirrored, _ = collect_logits(lambda x: predict(torch.flip(x, dims=[3])), loader, inputs, ctx, config.run.amp)
        for flip, variant in ((False, logits), (True, (logits + mirrored) / 2)):
            name = "selected" + suffix + ("_flip_tta" if flip else "")
            rule = f"{chosen}; test set, {what}, {'flip test-time augmentation' if flip else 'no TTA'}"
            entries[name] = {**summarize(variant, targets, counts), "epoch": epoch, "rule": rule}
    entries["selected_report"] = {
        "checkpoint": "best.pth", "epoch": epoch, "select_on": split, "rule": chosen,
        "teacher_epoch": int(method.teacher_epoch),
        "paper_prints": ["selected_flip_tta", f"selected_tau_norm{tau:g}_flip_tta"],
        "note": "the paper's code prints the selected model's mean per-class test accuracy and "
                "many/medium/few with flip TTA, then the same for its tau-normalised copy",
        "time_s": time.time() - began}
    return entries


def write_report(run_dir: str, entries: Dict[str, Any], is_main: bool) -> None:
    """Prints the entries and adds them to the run's results.json (rank 0 only)."""
    report = entries["selected_report"]
    if is_main:
        print(f"== LCSL final report: {report['rule']}")
        for name, entry in entries.items():
            if name != "selected_report":
                print(f"-- {name}: {entry['rule'].split('; ', 1)[1]}")
                print(format_shot_table(entry))
        path = os.path.join(run_dir, "results.json")
        with open(path) as stream:
            results = json.load(stream)
        results.update(entries)
        results["selected_checkpoint"] = {"file": "best.pth", "epoch": report["epoch"],
                                          "rule": f"best mean per-class accuracy on the {report['select_on']} "
                                                  "split (LCSL's teacher rule; equal to top-1 on this balanced split)"}
        write_json(path, results)
        print(f"selected-model results added to {path}")
    dist.barrier()


def main(args: argparse.Namespace) -> None:
    with trusting(args.trust_checkpoint):  # --resume and --pretrained_model reads
        train(args)


def train(args: argparse.Namespace) -> None:
    config, label = build_config(args)
    resume = resolve_resume(config, label, args.start_epoch)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, resume=resume))

    results = run_training(config, label, check_data=check_selection_split)
    if "selected_report" in results:
        return  # --resume auto found this run finished, its report included
    # The same devices as training; the runner has already said when --gpu finds no CUDA.
    ctx = dist.setup_devices(config.run.gpu if torch.cuda.is_available() else None)
    run_dir = results["run_dir"]
    write_report(run_dir, evaluate_selected(config, ctx, run_dir, args.tau_norm), ctx.is_main)


if __name__ == "__main__":
    arguments = get_args_parser().parse_args()
    sys.exit(cli.run_guarded("train_LCSL.py", lambda: main(arguments)))
