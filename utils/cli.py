"""Flags shared by the entry scripts, with the papers' spellings kept as aliases.

Defaults that differ between papers (lr, weight decay, schedule, batch size, augmentation, seed)
are ``None`` here and filled from the method's ``Recipe``, so an explicit flag always wins, an
omitted one means what it meant in the paper's own repository, and ``--help`` lists the value
each method will use.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from typing import Any, Callable, Dict, List

from datasets import DATASETS, DataOptions, DatasetError, dataset_entry, dataset_name
from datasets.longtail import IMB_TYPES, SELECTIONS
from utils.checkpoint import CheckpointError, add_trust_argument
from utils.config import (AMP_CHOICES, AUG_BACKENDS, COMPILE_MODES, FRACTION, GPU_HELP, NON_NEGATIVE_INT, SEED,
                          REFERENCE_IMB_FACTOR_UNLABEL, SELECTION_SPLITS, ConfigError, Number, OptimConfig, Recipe,
                          RunConfig, TrainConfig, add_bool_flag, str2bool, user_path)


def limit(config_class: type, name: str) -> Number:
    """The range a config class declares for one of its fields, as the flag's argparse type."""
    return config_class.LIMITS[name][1]


def add_data_arguments(parser: argparse.ArgumentParser, default_dataset: str) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=default_dataset, type=dataset_name, choices=DATASETS.names(),
                       help="dataset (the papers' 'imagenet', 'inat' and 'inaturalist' name imagenet_lt and "
                            "inat2018)")
    group.add_argument("--data_root", "--data", dest="data_root", default="./data", type=user_path,
                       help="dataset folder (CIFAR pickles below it, or the image root of list datasets)")
    group.add_argument("--imb_type", default="exp", choices=IMB_TYPES, help="per-class count profile")
    group.add_argument("--imb_factor", type=FRACTION, default=0.01, help="1 / imbalance ratio, in (0, 1]")
    group.add_argument("--lt_selection", default=None, choices=SELECTIONS,
                       help="which images of each class form the LT subset")
    group.add_argument("--lt_seed", type=SEED, default=0, help="seed of the 'shuffle' selection")
    group.add_argument("--val_per_class", type=NON_NEGATIVE_INT, default=0,
                       help="validation images per class, taken from the training images the long-tailed "
                            "subset leaves unused (fewer where a class has fewer left) (default: 0, none)")
    group.add_argument("--split_dir", default=None, type=user_path,
                       help="folder of ImageNet-LT / iNat / Places-LT lists")
    group.add_argument("--train_list", default=None, type=user_path,
                       help="training list 'path label' per line (default: the dataset's own, in --split_dir)")
    group.add_argument("--val_list", default=None, type=user_path,
                       help="validation list (default: the dataset's own, if any)")
    group.add_argument("--test_list", default=None, type=user_path, help="test list (default: the dataset's own)")
    add_bool_flag(group, "--download", default=True, help="download missing CIFAR files")
    group.add_argument("--workers", "-j", type=limit(RunConfig, "workers"), default=min(4, os.cpu_count() or 1),
                       help="DataLoader workers for the PIL pipeline (default: up to 4, at most the CPU count)")


def add_model_arguments(parser: argparse.ArgumentParser, head_default: str, scale_default: str) -> None:
    """``head_default`` and ``scale_default`` tell --help which classifier, and which cosine
    scale, each method uses when --use_norm / --head_scale are left out."""
    # Imported here, as in add_aug_arguments: both pull in torchvision (seconds), which a script
    # that only uses run_guarded (test.py, gen_pseudolabels.py) must not pay before a refusal.
    from models import MODELS

    group = parser.add_argument_group("model")
    defaults = ", ".join(f"{name} {dataset_entry(name).default_arch}" for name in DATASETS.names()
                         if dataset_entry(name).default_arch)
    group.add_argument("--arch", default=None, choices=MODELS.names(),
                       help=f"backbone (default: the dataset's: {defaults}; others need --arch)")
    group.add_argument("--use_norm", "--use-norm", type=str2bool, nargs="?", const=True, default=None,
                       metavar="BOOL", help=f"cosine (normalised) classifier (default: {head_default})")
    group.add_argument("--head_scale", type=limit(TrainConfig, "head_scale"), default=None,
                       help=f"scale of the cosine classifier (default: {scale_default})")


def recipe_default(recipes: Dict[str, Recipe], key: str) -> str:
    """The ``--help`` text of a flag whose default is the method's recipe: its value per method."""
    methods_by_value: Dict[str, List[str]] = {}
    for name, recipe in recipes.items():
        value = getattr(recipe, key)
        shown = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        methods_by_value.setdefault(shown or "none", []).append(name)
    if len(methods_by_value) == 1:
        return f"default: {next(iter(methods_by_value))}"
    return "default: " + "; ".join(f"{value} ({', '.join(names)})" for value, names in methods_by_value.items())


def add_optim_arguments(parser: argparse.ArgumentParser, recipes: Dict[str, Recipe]) -> None:
    """The optimisation flags; one left out takes the value of the method's recipe (``recipes``:
    the recipe of each method the script offers, listed in ``--help``)."""
    group = parser.add_argument_group("optimisation")

    def described(key: str, what: str) -> str:
        return f"{what} ({recipe_default(recipes, key)})"

    group.add_argument("--epochs", type=limit(OptimConfig, "epochs"), default=None, help=described("epochs", "epochs"))
    group.add_argument("-b", "--batch_size", "--batch-size", dest="batch_size", type=limit(TrainConfig, "batch_size"),
                       default=None, help=described("batch_size", "global batch size"))
    group.add_argument("--lr", "--learning-rate", dest="lr", type=limit(OptimConfig, "lr"), default=None,
                       help=described("lr", "learning rate of the global batch"))
    group.add_argument("--momentum", type=limit(OptimConfig, "momentum"), default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument("--wd", "--weight_decay", "--weight-decay", dest="weight_decay",
                       type=limit(OptimConfig, "weight_decay"), default=None,
                       help=described("weight_decay", "weight decay"))
    group.add_argument("--cos", type=str2bool, nargs="?", const=True, default=None, metavar="BOOL",
                       help=described("cos", "cosine schedule after warm-up, else step decays at --schedule"))
    group.add_argument("--schedule", type=NON_NEGATIVE_INT, nargs="+", default=None,
                       help=described("schedule", "step-decay epochs (0-based)"))
    group.add_argument("--lr_gamma", type=limit(OptimConfig, "gamma"), default=None,
                       help=described("lr_gamma", "step-decay factor"))
    group.add_argument("--warmup_epochs", type=limit(OptimConfig, "warmup_epochs"), default=None,
                       help=described("warmup_epochs", "linear warm-up epochs"))
    add_bool_flag(group, "--nesterov", default=False, help="Nesterov momentum")


def add_run_arguments(parser: argparse.ArgumentParser, recipes: Dict[str, Recipe]) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--root_log", default="log", type=user_path, help="parent folder of run folders")
    group.add_argument("--out_dir", default=None, type=user_path, help="run folder (default: a name under --root_log)")
    group.add_argument("--resume", default=None, type=user_path,
                       help="checkpoint or run folder to continue (it continues in its own folder), or 'auto': "
                            "continue the unfinished run of exactly this configuration (--out_dir, or the "
                            "newest matching run under --root_log), skip it if finished, else start a new one")
    add_bool_flag(group, "--overwrite", default=False,
                  help="DISCARDS the run already in --out_dir: deletes its checkpoints, results, log and "
                       "curves before starting (without it, a folder holding a run is never written into)")
    group.add_argument("--seed", type=limit(RunConfig, "seed"), default=None,
                       help=f"seed ({recipe_default(recipes, 'seed')})")
    add_bool_flag(group, "--deterministic", default=False, help="deterministic algorithms")
    group.add_argument("--gpu", default=None, help=GPU_HELP)
    group.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                       help="autocast precision; auto: bf16 on GPUs that have it (else fp16 with loss "
                            "scaling) and on CPUs with native bf16, fp32 on other CPUs")
    add_bool_flag(group, "--channels_last", default=True, help="NHWC memory format")
    add_bool_flag(group, "--compile", default=False, help="torch.compile the network")
    group.add_argument("--compile_mode", default=None, choices=COMPILE_MODES,
                       help="torch.compile mode (implies --compile; default: default). reduce-overhead "
                            "also captures the step in CUDA graphs, which pays off where a step is "
                            "bound by kernel launches (ResNet-32 on a GPU); CPUs only compile")
    group.add_argument("--limit_batches", type=limit(RunConfig, "limit_batches"), default=None,
                       help="batches per epoch (smoke runs)")
    group.add_argument("--log_interval", type=limit(RunConfig, "log_interval"), default=50,
                       help="steps between log synchronisations")
    group.add_argument("--eval_interval", type=limit(RunConfig, "eval_interval"), default=1,
                       help="evaluate every N epochs")
    group.add_argument("--test_interval", type=limit(RunConfig, "test_interval"), default=1,
                       help="with --select_on val: score the test set only once N epochs have passed "
                            "since the last test, when the validation selection score improves, and after the "
                            "last epoch (saves time; the last-epoch and selected-checkpoint numbers "
                            "are unchanged)")
    add_bool_flag(group, "--progress", default=True, help="tqdm progress bars")
    add_bool_flag(group, "--tta_flip", default=False, help="also report flip test-time augmentation")
    add_bool_flag(group, "--tb_save", default=True,
                  help="kept for command compatibility: tensorboardX curves are always written")
    group.add_argument("--select_on", default=None, choices=SELECTION_SPLITS,
                       help="split that chooses best.pth (default: val wherever the data have a validation "
                            "split: --val_per_class N > 0, or the dataset's own validation list; else test)")
    add_trust_argument(group)  # --trust_checkpoint, for --resume and --pretrained_model


def add_semi_self_arguments(parser: argparse.ArgumentParser) -> None:
    """Yang & Xu (NeurIPS 2020): pseudo-labelled extra data and self-supervised initialisation."""
    group = parser.add_argument_group("semi-/self-supervised")
    group.add_argument("--pretrained_model", default=None, type=user_path,
                       help="initialise the backbone from this checkpoint (rotation / MoCo / any run)")
    group.add_argument("--unlabeled", default=None, type=user_path,
                       help="pseudo-label file (scripts/gen_pseudolabels.py) whose images join training")
    group.add_argument("--imb_factor_unlabel", type=limit(TrainConfig, "imb_factor_unlabel"), default=None,
                       help=f"imbalance of the selected pseudo-labelled subset (default: "
                            f"{REFERENCE_IMB_FACTOR_UNLABEL}, the reference's train_semi.py)")
    group.add_argument("--unlabel_size_factor", type=limit(TrainConfig, "unlabel_size_factor"), default=5.0,
                       help="pseudo-labelled images per labelled image")


def semi_self_fields(args: argparse.Namespace) -> Dict[str, Any]:
    # With --unlabeled, an omitted --imb_factor_unlabel is the reference's default, written into
    # the run's config (not left to mean something else later).
    imb_factor_unlabel = args.imb_factor_unlabel
    if imb_factor_unlabel is None and args.unlabeled is not None:
        imb_factor_unlabel = REFERENCE_IMB_FACTOR_UNLABEL
    return dict(pretrained_model=args.pretrained_model, unlabeled=args.unlabeled,
                imb_factor_unlabel=imb_factor_unlabel, unlabel_size_factor=args.unlabel_size_factor)


def add_aug_arguments(parser: argparse.ArgumentParser, recipes: Dict[str, Recipe]) -> None:
    from datasets.augment import TRANSFORMS
    from datasets.augment.pil import RANDAUG_MAX_MAGNITUDE

    group = parser.add_argument_group("augmentation")
    group.add_argument("--aug", nargs="+", default=None, choices=TRANSFORMS.names(),
                       help=f"training recipe, one per view ({recipe_default(recipes, 'aug')}; BCCL's pair follows "
                            "--cl_views and the dataset's image style)")
    group.add_argument("--randaug_n", type=NON_NEGATIVE_INT, default=None,
                       help="RandAugment operations per image (default: 2)")
    group.add_argument("--randaug_m", type=Number(int, 0, RANDAUG_MAX_MAGNITUDE), default=None,
                       help=f"RandAugment magnitude (0-{RANDAUG_MAX_MAGNITUDE}, timm's scale; default: 10)")
    group.add_argument("--aug_backend", default="auto", choices=AUG_BACKENDS,
                       help="tensor: the data lives on the training device and is augmented in batches; "
                            "pil: the papers' per-image DataLoader pipeline; auto: tensor for in-memory "
                            "(CIFAR-style) data, pil for image files")
    add_bool_flag(group, "--color_jitter", default=None,
                  help="colour jitter (0.4, 0.4, 0.4) in the ImageNet-style 'standard' and 'cutout' recipes; "
                       "False for the iNaturalist recipe of the semi-self paper",
                  default_text="True, the recipes' own; False for crt on inat2018, as its cls_crt.yaml")


def architecture(args: argparse.Namespace) -> str:
    """--arch, or the backbone the papers train on --dataset."""
    arch = args.arch or dataset_entry(args.dataset).default_arch
    if arch is None:
        raise ConfigError(f"--dataset {args.dataset} has no standard backbone: pass --arch "
                          f"({', '.join(sorted(_model_names()))})")
    return arch


def _model_names():
    from models import MODELS

    return MODELS.names()


def pick(value, default):
    return default if value is None else value


def data_options(args: argparse.Namespace, default_selection: str) -> DataOptions:
    if not dataset_entry(args.dataset).small_images:
        # These shape the long tail cut from a balanced CIFAR-style set; a list dataset's long tail
        # is its training list, so the flags would be recorded (and name the run folder) unused.
        given = [flag for flag, value, default in (
            ("--imb_factor", args.imb_factor, DataOptions.imb_factor),
            ("--imb_type", args.imb_type, DataOptions.imb_type),
            ("--lt_selection", args.lt_selection, None), ("--lt_seed", args.lt_seed, DataOptions.lt_seed))
            if value != default]
        if given:
            raise ConfigError(f"{' '.join(given)}: {'shapes' if len(given) == 1 else 'shape'} the long tail cut from "
                              f"CIFAR-style datasets; {args.dataset}'s long tail is its training list: drop "
                              f"{'it' if len(given) == 1 else 'them'} (or give another --train_list)")
    return DataOptions(data_root=args.data_root, imb_type=args.imb_type, imb_factor=args.imb_factor,
                       lt_selection=pick(args.lt_selection, default_selection), lt_seed=args.lt_seed,
                       val_per_class=args.val_per_class, split_dir=args.split_dir,
                       train_list=args.train_list, val_list=args.val_list, test_list=args.test_list,
                       download=args.download)


def optim_config(args: argparse.Namespace, recipe: Recipe) -> OptimConfig:
    """The optimiser and schedule: the flags given, the method's recipe for those left out."""
    return OptimConfig(lr=pick(args.lr, recipe.lr), momentum=args.momentum,
                       weight_decay=pick(args.weight_decay, recipe.weight_decay),
                       epochs=pick(args.epochs, recipe.epochs),
                       warmup_epochs=pick(args.warmup_epochs, recipe.warmup_epochs),
                       cosine=pick(args.cos, recipe.cos), milestones=tuple(pick(args.schedule, recipe.schedule)),
                       gamma=pick(args.lr_gamma, recipe.lr_gamma), nesterov=args.nesterov)


def run_config(args: argparse.Namespace, default_seed: int) -> RunConfig:
    return RunConfig(out_dir=args.out_dir, root_log=args.root_log, resume=args.resume,
                     seed=pick(args.seed, default_seed), deterministic=args.deterministic, gpu=args.gpu,
                     amp=args.amp, channels_last=args.channels_last,
                     compile=args.compile or args.compile_mode is not None,
                     compile_mode=args.compile_mode or "default",
                     workers=args.workers, aug_backend=args.aug_backend, limit_batches=args.limit_batches,
                     log_interval=args.log_interval, eval_interval=args.eval_interval,
                     test_interval=args.test_interval,
                     progress=args.progress, tta_flip=args.tta_flip, overwrite=args.overwrite)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler, torchrun or a machine shutting down) as an exception, so the run
    closes its log and releases its folder as after Ctrl-C, and says how to continue."""


def _raise_terminated(signum, frame) -> None:
    # A second SIGTERM (a scheduler repeating it) must not interrupt the clean-up of the first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated("SIGTERM")


def run_guarded(prog: str, body: Callable[[], Any], trains: bool = False) -> int:
    """Runs an entry script's body; expected failures become one line on stderr and exit 2,
    Ctrl-C and SIGTERM one line (exit 130 and 143) that, for a training script (``trains``),
    names --resume auto."""
    from utils.engine import NonFiniteLossError

    installed = False
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        installed = True
    except ValueError:  # not the main thread (a caller embedding the toolkit): leave signals alone
        pass
    try:
        body()
    except (ConfigError, DatasetError, CheckpointError, NonFiniteLossError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine refused a file operation (read-only, full, permissions)
        where = f"{error.filename}: " if error.filename else ""
        print(f"{prog}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        how = "terminated (SIGTERM)" if isinstance(error, Terminated) else "interrupted"
        hint = "; continue with --resume auto (or the run's last.pth)" if trains else ""
        print(f"{prog}: {how}{hint}", file=sys.stderr)
        return 143 if isinstance(error, Terminated) else 130
    except Exception:  # an unexpected bug: keep the traceback, it is needed to fix it
        traceback.print_exc()
        return 1
    finally:
        if installed:
            signal.signal(signal.SIGTERM, previous)
    return 0


def reword(parser: argparse.ArgumentParser, dest: str, help: str) -> None:
    """Replaces the --help text of a shared flag where an entry script gives it another default."""
    action = next(a for a in parser._actions if a.dest == dest)  # argparse has no public lookup
    action.help = help
