"""From a TrainConfig to a run ready to train: ``build_run(config, label) -> Run``.

The build order reads top to bottom: devices, seed, data (with the pseudo-labelled extra set),
checks that need the data, the run folder's plan, the method and its model, a resumed or
pre-trained state, the claimed run folder and its log, the device placement and wrappers, the
loaders. Every refusal before the folder is claimed leaves no folder behind, and a run that fails
before its first checkpoint removes what it wrote (``abandon_unstarted_run``).

A run is then trained (``utils.training.train``) and reported (``utils.report.report``); both
happen inside ``with run:``, which closes the log and releases the folder's lock however they end.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from datasets import DatasetError, LongTailData, build_dataset, dataset_entry
from datasets.augment import build_views, recipe_options
from datasets.augment.tensor import build_tensor_views, tensor_recipe_options
from datasets.device_loader import DeviceLoader
from datasets.loaders import (absolute_data_options, build_eval_loaders, build_train_loader,
                              check_evaluation_images)
from datasets.longtail import smallest_imb_factor
from datasets.samplers import build_sampler
from methods import Method, build_method
from models import build_model
from utils import dist
from utils.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint_path
from utils.config import SELECTION_SPLITS, ConfigError, TrainConfig
from utils.dist import DeviceContext
from utils.engine import DeviceInputs, NonFiniteLossError, resolve_amp
from utils.logger import RunLogger
from utils.metrics import SELECTION_METRICS
from utils.run_folder import (RunFolderLock, RunPlan, abandon_unstarted_run, check_checkpoint_is_folders_run,
                              check_is_checkpoint, claim_run_folder, config_with_new_epochs,
                              config_differences, other_settings_error, plan_run_folder, saved_run_config,
                              started_as)


@dataclass
class Run:
    """Everything a training run is made of, built once by ``build_run``."""
    config: TrainConfig  # with the selection split resolved
    label: str  # method label plus _ssp / _semi: the run folder's and the tables' name
    ctx: DeviceContext
    data: LongTailData  # train_counts include pseudo-labelled images
    labeled_counts: List[int]  # what the dataset flags alone give
    method: Method  # on the device, wrapped for DataParallel / DDP / compile
    model_kwargs: Dict[str, Any]
    loaders: Dict[str, Any]  # train, test and (with a validation split) val
    inputs: DeviceInputs
    logger: RunLogger
    run_dir: str
    resume: Optional[Dict[str, Any]]  # the checkpoint this run continues, if any
    lock: Optional[RunFolderLock]  # held by rank 0 until the run is closed
    started: float  # wall-clock start, for results.json

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if isinstance(error, NonFiniteLossError):
            self.logger.info(f"training stopped: {error}", echo=False)  # run_guarded prints it on stderr
        elif isinstance(error, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (utils.cli.Terminated)
            kept = ("last.pth holds the last finished epoch" if os.path.isfile(os.path.join(self.run_dir, "last.pth"))
                    else "no epoch finished, so it starts again")
            self.logger.info(f"training interrupted ({str(error) or 'Ctrl-C'}): {kept}; continue with --resume auto",
                             echo=False)
        self.close(error)

    def close(self, error: Optional[BaseException] = None) -> None:
        _close(self.logger, self.lock, error)

    def describe_dataset(self) -> Dict[str, Any]:
        """What a checkpoint needs to rebuild the evaluation data and the shot groups
        (datasets/rebuild.py): `train_counts` include pseudo-labelled images (the shot groups
        and re-weighting use them); `labeled_counts` are what the dataset flags alone rebuild."""
        data, config = self.data, self.config
        return {"name": data.name, "num_classes": data.num_classes, "train_counts": list(data.train_counts),
                "labeled_counts": list(self.labeled_counts),
                # What the log's numbers were scored on, so test.py can say when the lists changed since.
                "split_sizes": {"test": len(data.test), "val": len(data.val) if data.val is not None else 0},
                "mean": list(data.mean), "std": list(data.std), "image_size": data.image_size,
                "style": data.style, "class_names": list(data.class_names),
                # Absolute paths: test.py must read the data this run read, from whatever folder it runs in.
                "options": dataclasses.asdict(absolute_data_options(config.dataset, config.data))}


@dataclass(frozen=True)
class FinishedRun:
    """What ``build_run`` returns when --resume auto finds this configuration's run finished."""
    results: Dict[str, Any]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True


def build_run(config: TrainConfig, label: str):
    """A ``Run`` ready for ``train``, or a ``FinishedRun`` when there is nothing left to train."""
    started = time.time()
    label = run_label(config, label)
    ctx = dist.setup_devices(config.run.gpu)
    if config.run.compile and ctx.data_parallel:
        # DataParallel replicates the compiled wrapper with its forward bound to the first GPU's
        # module, so the other replicas would run on the wrong device.
        raise ConfigError("--compile does not work with DataParallel (--gpu listing several GPUs): "
                          "drop --compile, or train on several GPUs with torchrun (DDP)")
    if config.run.amp == "fp16" and ctx.device.type != "cuda":
        # fp16 needs loss scaling against underflowing gradients, and GradScaler scales on CUDA only.
        raise ConfigError(f"--amp fp16 needs a CUDA device (its loss scaling runs there), but this run trains "
                          f"on the {ctx.device.type}: use --amp bf16, none or auto")
    # Model initialisation must agree across DDP ranks (DDP also broadcasts it); augmentation is
    # re-seeded per rank and epoch by fit.
    seed_everything(config.run.seed, config.run.deterministic)
    # Rank 0 alone probes the folder's lock (two probes at once could see each other as busy);
    # its refusal reaches every rank, and the other ranks read the checkpoint after the data.
    checked: List[Optional[Dict[str, Any]]] = []
    _on_main(ctx, lambda: checked.append(_check_resume_before_data(config, label)))
    early_resume = checked[0] if checked else None  # a differing --dataset names itself
    data = build_data_rank_zero_first(config, ctx)
    check_evaluation_images(data, config.data, ctx.rank, ctx.world_size)  # a bad image stops it before epoch 1
    labeled_counts = list(data.train_counts)
    data_notes: List[str] = []  # logged once the run folder exists (D_U's size, its short classes)
    if config.unlabeled is not None:
        from datasets.semi import add_pseudo_labeled

        data = add_pseudo_labeled(data, config.unlabeled, imb_factor_unlabel=config.imb_factor_unlabel
                                  or config.data.imb_factor, size_factor=config.unlabel_size_factor,
                                  seed=config.data.lt_seed, log=data_notes.append)
    config = resolve_selection(config, data)
    check_training_data(config, data, labeled_counts, ctx.world_size)  # before any file is written
    if config.run.out_dir:
        check_not_own_input(config, config.run.out_dir)

    plan: RunPlan = _on_main(ctx, lambda: plan_run_folder(config, label))
    if plan.action == "finished":
        return FinishedRun(_finished_results(plan, ctx))
    model_kwargs = {"arch": config.arch, "num_classes": data.num_classes, "head": config.head,
                    "scale": config.head_scale}
    method = build_method(config.method, build_model(**model_kwargs), data.train_counts, **config.method_options)
    resume = None
    if plan.resume:
        same = early_resume is not None and early_resume["path"] == plan.resume
        resume = early_resume if same else load_checkpoint(plan.resume, prefer="last.pth")
    if resume is not None:
        check_resume_matches(config, resume)
    if plan.run_dir:
        check_not_own_input(config, plan.run_dir)
    training_recipes(config, data, method.num_views)  # refused here, not after the folder is claimed
    pretrained_notes: List[str] = []
    if resume is None and config.pretrained_model is not None:
        from utils.pretrained import load_pretrained

        load_pretrained(method, config.pretrained_model, _PendingNotes(pretrained_notes))  # a bad file: no folder

    run_dir, notes, lock = _claim_on_main(plan, config, label, ctx)
    logger = RunLogger(run_dir, is_main=ctx.is_main)
    try:
        _log_start(logger, run_dir, notes, plan, config, ctx, data)
        for line in data_notes:
            logger.info(line)
        if resume is None:
            from utils.checkpoint import git_commit

            logger.write_json("config.json", {**config.to_dict(), "git_commit": git_commit(), **started_as(config)})
            for line in pretrained_notes:
                logger.info(line)
        else:
            method.load_state_dict(resume["state_dict"], strict=True)
            _record_new_epochs(logger, run_dir, config, int(resume["epoch"]))
        place_on_device(method, config, ctx)
        loaders = build_loaders(config, data, ctx, method.num_views)
    except BaseException as error:
        _close(logger, lock, error)
        raise
    inputs = DeviceInputs(data.mean, data.std, ctx.device, config.run.channels_last)
    return Run(config=config, label=label, ctx=ctx, data=data, labeled_counts=labeled_counts, method=method,
               model_kwargs=model_kwargs, loaders=loaders, inputs=inputs, logger=logger, run_dir=run_dir,
               resume=resume, lock=lock, started=started)


def _record_new_epochs(logger: RunLogger, run_dir: str, config: TrainConfig, after_epoch: int) -> None:
    """A continuation with another --epochs rewrites config.json with the new number (the old
    one kept in its epochs_changed list), so the file always says how long the run trains."""
    saved = saved_run_config(run_dir, from_checkpoint=False) if logger.is_main else None
    updated = config_with_new_epochs(saved, config.optim.epochs, after_epoch,
                                     started_as(config).get("command")) if saved else None
    if updated is not None:
        logger.write_json("config.json", updated)
        logger.info(f"--epochs {saved['optim']['epochs']} -> {config.optim.epochs} from epoch {after_epoch} on "
                    "(config.json updated; the earlier number kept under epochs_changed)")


def _log_start(logger, run_dir: str, notes: List[str], plan: RunPlan, config: TrainConfig, ctx, data) -> None:
    logger.info(f"run folder: {run_dir}")
    for note in notes:
        logger.info(note)
    if plan.action == "restart":
        logger.forget_per_class_after(0)  # rows of the epoch the earlier attempt did not finish
    logger.info(f"device: {ctx.device}, {dist.describe_hardware(ctx)} (world size {ctx.world_size}); precision: "
                f"{resolve_amp(config.run.amp, ctx.device)} (--amp {config.run.amp}); "
                f"channels_last: {config.run.channels_last}")
    logger.info(f"{data.name}: {len(data.train)} training images in {data.num_classes} classes "
                f"(head {max(data.train_counts)}, tail {min(data.train_counts)}), {len(data.test)} test"
                + (f", {len(data.val)} validation" if data.val is not None else ""))
    short = validation_shortfall(data, config.data.val_per_class)
    if short:
        logger.info(f"validation split: {config.data.val_per_class} images per class where the images the "
                        f"training subset left allow it; fewer for {short}, so its top-1 weighs classes "
                        "unequally (the mean per-class accuracy does not)")


def _name_classes(classes: Sequence[int], names: Sequence[str], shown: int = 3) -> str:
    labelled = [f"{c} ({names[c]})" if c < len(names) and names[c] else str(c) for c in classes]
    if len(labelled) == 1:
        return f"class {labelled[0]}"
    listed = ", ".join(labelled[:shown]) + (", ..." if len(labelled) > shown else "")
    return f"{len(labelled)} classes ({listed})"


def check_training_data(config: TrainConfig, data: Any, labeled_counts: Sequence[int], world_size: int) -> None:
    """What the flags ask of the built data, checked before a run folder exists.

    Every class needs a training image: with an empty class, cross-entropy trains silently on a
    class it can never see, while LDAM, logit adjustment, class-balanced weights and BCCL's
    priors divide by (or take the log of) its count. And an epoch needs a step: a method that
    drops the last incomplete batch (BCCL, cRT, MoCo) would otherwise train on nothing.
    """
    empty = [c for c, n in enumerate(labeled_counts) if n < 1]
    if empty:
        which = _name_classes(empty, data.class_names)
        if dataset_entry(config.dataset).small_images:  # the datasets whose tail --imb_factor cuts
            smallest = smallest_imb_factor(max(labeled_counts), len(labeled_counts), config.data.imb_type)
            raise ConfigError(f"--imb_factor {config.data.imb_factor:g} leaves {which} with 0 training images "
                              f"(every class needs at least 1): use --imb_factor >= {smallest:g}")
        raise ConfigError(f"{data.name}: {which} has no training image; every class needs at least 1")
    images = len(data.train)
    per_rank = -(-images // world_size)
    if config.drop_last and per_rank < config.batch_size // world_size:
        spread = f" ({per_rank} per process over {world_size} processes)" if world_size > 1 else ""
        raise ConfigError(f"-b/--batch_size {config.batch_size} is larger than the {images} training images{spread}, "
                          f"and {config.method} drops the last incomplete batch, so an epoch would have no step: "
                          f"use -b/--batch_size {per_rank * world_size} or less")


def validation_shortfall(data, per_class: int) -> str:
    """The classes of a --val_per_class split that got fewer than ``per_class`` images, with their
    counts ('class 0 (airplane): 0, ...'); '' when the split is balanced or there is none."""
    if data.val is None or not len(data.val) or per_class < 1:  # no split: selection is on the test set
        return ""
    counts = np.bincount(data.val.targets, minlength=data.num_classes)
    names = list(data.class_names) + [""] * data.num_classes
    short = [f"class {c}{f' ({names[c]})' if names[c] else ''}: {counts[c]}"
             for c in range(data.num_classes) if counts[c] < per_class]
    return ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")


def place_on_device(method: Method, config: TrainConfig, ctx: DeviceContext) -> None:
    """Moves the method to the device in the run's memory format and wraps its networks."""
    method.to(ctx.device)
    if config.run.channels_last:
        method.to(memory_format=torch.channels_last)
    # Compiling the DDP wrapper (not the bare network) lets the compiler see DDP's gradient
    # buckets and overlap their all-reduces with the backward pass.
    method.wrap(lambda net: torch.compile(dist.wrap_network(net, ctx), mode=config.run.compile_mode)
                if config.run.compile else dist.wrap_network(net, ctx),
                lambda net: dist.wrap_forward_only(net, ctx))


# ---- checks that need the data or the plan ----------------------------------------------------------
def resolve_selection(config: TrainConfig, data: LongTailData) -> TrainConfig:
    """best.pth is chosen on the validation split when there is one; on the test set (the
    papers' practice, labelled as such everywhere) only when there is none or when asked."""
    has_val = data.val is not None and len(data.val) > 0
    if config.select_on == "val" and not has_val:
        if config.data.val_per_class:  # asked for, but the long-tailed subset left no image to hold out
            raise ConfigError(f"--val_per_class {config.data.val_per_class} holds out nothing: the long-tailed "
                              f"subset (--imb_factor {config.data.imb_factor:g}) uses every training image, so "
                              "best.pth cannot be chosen on a validation split; pass --select_on test (labelled "
                              "as test-selected everywhere)")
        raise ConfigError("--select_on val needs a validation split: add --val_per_class N (CIFAR) or "
                          "--val_list (list datasets), or pass --select_on test as the papers did")
    if config.select_on is None:
        config = dataclasses.replace(config, select_on="val" if has_val else "test")
    if config.select_on == "test" and config.run.test_interval > 1:
        raise ConfigError(f"--test_interval {config.run.test_interval} needs --select_on val (and a validation "
                          "split): selecting on the test set evaluates it at every evaluation")
    return config


def check_not_own_input(config: TrainConfig, run_dir: str) -> None:
    """A run must never write into the run folder it starts from (--pretrained_model)."""
    if config.pretrained_model is None:
        return
    # realpath: a link to the input run (or a path through one) is the input run.
    source = os.path.realpath(config.pretrained_model)
    source_dir = source if os.path.isdir(source) else os.path.dirname(source)
    if os.path.realpath(run_dir) == source_dir:
        raise ConfigError(f"--out_dir {run_dir} is the folder of --pretrained_model: choose another "
                          "--out_dir so the input run is not overwritten")


def _check_resume_before_data(config: TrainConfig, label: str) -> Optional[Dict[str, Any]]:
    """Refuses a continuation whose run folder or checkpoint disagrees with this command before
    any data is built, so a command that leaves out the run's flags (``python main.py --resume
    RUN``) is told every setting that differs instead of failing on the default dataset. Covers
    an explicit ``--resume PATH`` and ``--resume auto --out_dir RUN``; returns the checkpoint a
    continuation will start from (read once), or None. The same checks run again once the data
    has resolved the selection split."""
    resume, out_dir = config.run.resume, config.run.out_dir
    if resume is None or (resume == "auto" and not out_dir):
        return None  # a new run, or --resume auto's search for this configuration's own run
    if resume == "auto":
        folder = out_dir
    else:
        path = resolve_checkpoint_path(resume, prefer="last.pth")
        check_is_checkpoint(resume, path)
        folder = os.path.dirname(path) or "."
    # --resume auto compares with the folder's config.json, or its last.pth where there is none.
    saved = saved_run_config(folder, from_checkpoint=resume == "auto")
    plan = plan_run_folder(_with_saved_selection(config, saved), label)
    if plan.action != "continue":
        return None  # a new or finished run: a finished one is left as it is, its checkpoint unread
    payload = load_checkpoint(plan.resume, prefer="last.pth")
    check_resume_matches(_with_saved_selection(config, payload["config"]), payload)
    return payload


def _with_saved_selection(config: TrainConfig, saved: Optional[Dict[str, Any]]) -> TrainConfig:
    """A command that left --select_on to the data (not built yet) takes the run's own choice
    for a comparison made before the data; the comparison after it checks the real one."""
    selection = (saved or {}).get("select_on")
    if config.select_on is None and selection in SELECTION_SPLITS:
        return dataclasses.replace(config, select_on=selection)
    return config


def check_resume_matches(config: TrainConfig, payload: Dict[str, Any]) -> None:
    """Continuing a run with other data, recipe or seed would silently mix two runs; a checkpoint
    copied into another run's folder would overwrite that run; --epochs must reach past it."""
    check_checkpoint_is_folders_run(payload["path"], payload["path"], payload["config"])
    differences = config_differences(config, payload["config"])
    if differences:
        raise other_settings_error(payload["path"], differences)
    if int(payload["epoch"]) > config.optim.epochs:
        raise ConfigError(f"--epochs {config.optim.epochs}: --resume {payload['path']} has already trained "
                          f"{payload['epoch']} epochs; pass --epochs {payload['epoch']} or more")


def selection_rule(method: Method, split: str) -> str:
    """How best.pth was chosen, in words, for results.json and reports."""
    return f"best {SELECTION_METRICS[method.selection_metric]} on the {split} split"


# ---- loaders ------------------------------------------------------------------------------------------
def build_loaders(config: TrainConfig, data: LongTailData, ctx: DeviceContext, num_views: int) -> Dict[str, Any]:
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"-b/--batch_size {config.batch_size} must be divisible by the "
                          f"{ctx.world_size} DDP processes")
    per_rank = config.batch_size // ctx.world_size
    backend, recipes = training_recipes(config, data, num_views)
    sampler = None
    if config.sampler:
        sampler = build_sampler(config.sampler, data.train.targets, data.num_classes, seed=config.run.seed,
                                rank=ctx.rank, world_size=ctx.world_size, **config.sampler_options)
    pin = ctx.device.type == "cuda"
    if backend == "tensor":
        transform = build_tensor_views(list(recipes), data.style, data.image_size, **config.aug_options)
        train = DeviceLoader(data.train, transform, per_rank, sampler=sampler, device=ctx.device,
                             seed=config.run.seed, rank=ctx.rank, world_size=ctx.world_size,
                             drop_last=config.drop_last)
    else:
        transform = build_views(list(recipes), data.style, data.image_size, **config.aug_options)
        train = build_train_loader(data.train, transform, per_rank, sampler=sampler, workers=config.run.workers,
                                   drop_last=config.drop_last, seed=config.run.seed, rank=ctx.rank,
                                   world_size=ctx.world_size, pin_memory=pin)
    # test.py builds its loader with the same function, so it scores a checkpoint as the log did.
    return {"train": train, **build_eval_loaders(data, per_rank, workers=config.run.workers, rank=ctx.rank,
                                                 world_size=ctx.world_size, pin_memory=pin)}


def training_recipes(config: TrainConfig, data: LongTailData, num_views: int) -> Tuple[str, Tuple[str, ...]]:
    """The augmentation backend ('tensor' or 'pil') and the recipe of each view; refuses, before
    any folder exists, what building the training transform would fail on."""
    recipes = config.train_aug if len(config.train_aug) == num_views else config.train_aug * num_views
    if len(recipes) != num_views:
        give = "one recipe" if num_views == 1 else f"one recipe (for every view) or {num_views}"
        raise ConfigError(f"--aug gave {len(config.train_aug)} recipes ({' '.join(config.train_aug)}) but the "
                          f"method trains on {num_views} view{'s' if num_views > 1 else ''}: give {give}")
    backend = config.run.aug_backend
    if backend == "auto":
        backend = "tensor" if data.train.in_memory else "pil"
    if backend == "tensor" and not data.train.in_memory:
        raise ConfigError(f"--aug_backend tensor needs in-memory (CIFAR-style) data; '{config.dataset}' "
                          "reads image files: use --aug_backend pil")
    accepts = tensor_recipe_options if backend == "tensor" else recipe_options
    taken = set().union(*(accepts(recipe) for recipe in set(recipes)))
    unused = sorted(set(config.aug_options) - taken)
    if unused:
        flags = ", ".join(f"--{name}" for name in unused)
        takes = ", ".join(f"--{name}" for name in sorted(taken)) or "no option"
        verb, them = ("does", "it") if len(unused) == 1 else ("do", "them")
        raise ConfigError(f"{flags} {verb} not apply to the training recipe (--aug {' '.join(dict.fromkeys(recipes))}, "
                          f"which takes {takes}): drop {flags}, or choose a recipe that uses {them}")
    return backend, tuple(recipes)


# ---- the run folder ---------------------------------------------------------------------------------
def run_label(config: TrainConfig, label: str) -> str:
    """The method label plus what changed the recipe: self-supervised pre-training (_ssp) and
    pseudo-labelled extra data (_semi). Run folder names and results tables use it."""
    from utils.pretrained import is_self_supervised_start

    label += "_ssp" if config.pretrained_model and is_self_supervised_start(config.pretrained_model) else ""
    return label + ("_semi" if config.unlabeled else "")


def find_resume(config: TrainConfig, label: str) -> Optional[str]:
    """The last.pth `--resume auto` would continue (or find finished) for this command; None when
    it would start a new run. Refuses, naming the flag, a --out_dir that holds another run."""
    auto = dataclasses.replace(config, run=dataclasses.replace(config.run, resume="auto"))
    plan = plan_run_folder(auto, run_label(config, label))
    last = os.path.join(plan.run_dir, "last.pth") if plan.run_dir else None
    return last if last and plan.action in ("continue", "finished") and os.path.isfile(last) else None


def resume_at_start_epoch(config: TrainConfig, label: str, start_epoch: int) -> Optional[str]:
    """The checkpoint file to continue from (None: a fresh run), for commands that resume the
    LCSL reference's way: ``--start_epoch N > 1`` means --resume auto, must find a checkpoint,
    and must name the epoch after the last finished one."""
    path = config.run.resume
    if path == "auto" and start_epoch == 1:
        return path  # build_run continues, restarts or skips this configuration's run
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


def build_data_rank_zero_first(config: TrainConfig, ctx: DeviceContext) -> LongTailData:
    """The dataset, built by rank 0 first: it downloads what is missing while the other ranks
    wait, and they then read the files it fetched (one download per job, not one per rank). Its
    refusal (a missing file with --download False, say) stops every rank."""
    if ctx.world_size == 1:
        return build_dataset(config.dataset, config.data)
    built: List[LongTailData] = []
    _on_main(ctx, lambda: built.append(build_dataset(config.dataset, config.data)))
    return built[0] if built else build_dataset(config.dataset, config.data)


def _on_main(ctx: DeviceContext, work: Callable[[], Any]) -> Any:
    """Runs `work` on rank 0 only and hands its result, or its refusal, to every rank, so that a
    refused DDP run stops on all ranks instead of leaving the others waiting."""
    outcome: Any = None
    if ctx.is_main:
        try:
            outcome = work()
        except (ConfigError, CheckpointError, DatasetError, OSError) as error:
            outcome = error
    outcome = dist.broadcast_object(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _claim_on_main(plan: RunPlan, config: TrainConfig, label: str, ctx: DeviceContext
                   ) -> Tuple[str, List[str], Optional[RunFolderLock]]:
    """Rank 0 locks the folder and clears what the plan discards; every rank gets the folder and
    the lines to log, rank 0 also the held lock (released when the run is closed)."""
    held = []

    def claim() -> Tuple[str, List[str]]:
        run_dir, lock, notes = claim_run_folder(plan, config, label)
        held.append(lock)
        return run_dir, notes

    run_dir, notes = _on_main(ctx, claim)
    return run_dir, notes, (held[0] if held else None)


def _finished_results(plan: RunPlan, ctx: DeviceContext) -> Dict[str, Any]:
    """--resume auto on a finished run: its results, untouched."""
    path = os.path.join(plan.run_dir, "results.json")

    def read() -> Dict[str, Any]:
        with open(path) as stream:
            return json.load(stream)

    results = {**_on_main(ctx, read), "run_dir": plan.run_dir}
    if ctx.is_main:
        print(f"{plan.run_dir} already holds this configuration's finished run (results in {path}): nothing "
              "to do (a larger --epochs extends it)", flush=True)
    return results


class _PendingNotes:
    """The logger load_pretrained writes to before the run folder exists: its lines go to
    log.txt once the folder is claimed, so a refused file leaves no folder."""

    def __init__(self, lines: List[str]):
        self.lines = lines

    def info(self, message: str, echo: bool = True) -> None:
        self.lines.append(message)


def _close(logger: RunLogger, lock: Optional[RunFolderLock], error: Optional[BaseException] = None) -> None:
    """Closes the run's log and releases its folder (rank 0 holds the lock). A run that failed
    before its first checkpoint leaves no run files behind (``abandon_unstarted_run``); one
    interrupted by Ctrl-C or SIGTERM keeps them, and --resume auto starts it again."""
    logger.close()
    if lock is not None:
        try:
            if error is not None and not isinstance(error, KeyboardInterrupt):
                abandon_unstarted_run(lock)  # under the lock: no other process can claim it meanwhile
        except OSError:
            pass  # the run's own error is what the user must see; the files stay as they are
        finally:
            lock.release()
