"""From a TrainConfig to a finished run folder: data, model, method, devices, resume, results.

Entry scripts parse their flags into a ``TrainConfig`` and call ``run_training``; this module is
the only place that wires components together, so every script trains the same way.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import random
import time
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from datasets import DATASETS, SMALL_IMAGE_DATASETS, LongTailData, build_dataset
from datasets.augment import build_transform, build_views
from datasets.augment.tensor import build_tensor_views
from datasets.device_loader import DeviceLoader
from datasets.loaders import build_eval_loader, build_train_loader
from datasets.samplers import build_sampler
from methods import build_method
from models import build_model
from utils import dist
from utils.checkpoint import (build_payload, capture_rng_state, git_commit, load_checkpoint,
                              restore_rng_state, save_atomic)
from utils.config import ConfigError, TrainConfig, check_training_data
from utils.engine import DeviceInputs, evaluate, fit, resolve_amp
from utils.logger import RunLogger


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


def describe_dataset(data: LongTailData, config: TrainConfig, labeled_counts) -> Dict[str, Any]:
    """What test.py needs to rebuild the evaluation data and the shot groups. `train_counts`
    include pseudo-labelled images (the shot groups and re-weighting use them); `labeled_counts`
    are what the dataset flags alone rebuild."""
    return {"name": data.name, "num_classes": data.num_classes, "train_counts": list(data.train_counts),
            "labeled_counts": list(labeled_counts),
            "mean": list(data.mean), "std": list(data.std), "image_size": data.image_size,
            "style": data.style, "class_names": list(data.class_names),
            "options": dataclasses.asdict(config.data)}


def default_run_name(config: TrainConfig, label: str) -> str:
    ratio = round(1 / config.data.imb_factor) if config.data.imb_factor > 0 else 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{config.dataset}_{config.data.imb_type}{ratio}_{label}_{config.arch}_s{config.run.seed}_{stamp}"


def find_resume(config: TrainConfig, label: str) -> Optional[str]:
    """`--resume auto`: last.pth of --out_dir, else of the newest run folder with the same name
    stem under --root_log; None when there is nothing to continue."""
    if config.run.out_dir:
        path = os.path.join(config.run.out_dir, "last.pth")
        return path if os.path.isfile(path) else None
    stem = default_run_name(config, label).rsplit("_", 1)[0]
    candidates = sorted(glob.glob(os.path.join(config.run.root_log, stem + "_*", "last.pth")),
                        key=os.path.getmtime)
    return candidates[-1] if candidates else None


# Fields a continuation may change: where files are, how the run executes and reports, and the
# number of epochs (to extend a run). Everything else must equal the checkpoint's config.
RESUMABLE_CHANGES = {
    "run": {"resume", "gpu", "workers", "progress", "out_dir", "root_log", "log_interval", "eval_interval",
            "test_interval", "limit_batches", "compile", "tta_flip"},
    "data": {"data_root", "split_dir", "train_list", "val_list", "test_list", "download"},
    "optim": {"epochs"},
    "": {"eval_posthoc_tau", "eval_tau_norm", "script"},
}


def _flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key in ("run", "data", "optim"):
            flat.update(_flatten(value, key))
        else:
            flat[(prefix, key)] = value
    return flat


def check_resume_matches(config: TrainConfig, payload: Dict[str, Any]) -> None:
    """Continuing a run with other data, recipe or seed would silently mix two runs."""
    saved = _flatten(json.loads(json.dumps(payload["config"])))
    current = _flatten(json.loads(json.dumps(config.to_dict())))
    for (group, key), value in current.items():
        if key in RESUMABLE_CHANGES.get(group, ()) or saved.get((group, key), value) == value:
            continue
        flag = f"{group}.{key}" if group else key
        raise ConfigError(f"--resume {payload['path']}: the checkpoint has {flag}={saved[(group, key)]!r} "
                          f"but this command has {value!r}; continue a run with its own flags")


def resolve_selection(config: TrainConfig, data: LongTailData) -> TrainConfig:
    """best.pth is chosen on the validation split when there is one; on the test set (the
    papers' practice, labelled as such everywhere) only when there is none or when asked."""
    has_val = data.val is not None and len(data.val) > 0
    if config.select_on == "val" and not has_val:
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
    source = os.path.abspath(config.pretrained_model)
    source_dir = source if os.path.isdir(source) else os.path.dirname(source)
    if os.path.abspath(run_dir) == source_dir:
        raise ConfigError(f"--out_dir {run_dir} is the folder of --pretrained_model: choose another "
                          "--out_dir so the input run is not overwritten")


def build_loaders(config: TrainConfig, data: LongTailData, ctx, num_views: int) -> Dict[str, Any]:
    if config.batch_size % ctx.world_size:
        raise ConfigError(f"-b/--batch_size {config.batch_size} must be divisible by the "
                          f"{ctx.world_size} DDP processes")
    per_rank = config.batch_size // ctx.world_size
    recipes = config.train_aug if len(config.train_aug) == num_views else config.train_aug * num_views
    if len(recipes) != num_views:
        raise ConfigError(f"method '{config.method}' needs {num_views} views but --aug gave "
                          f"{len(config.train_aug)} recipes")
    sampler = None
    if config.sampler:
        sampler = build_sampler(config.sampler, data.train.targets, data.num_classes, seed=config.run.seed,
                                rank=ctx.rank, world_size=ctx.world_size, **config.sampler_options)
    pin = ctx.device.type == "cuda"
    backend = config.run.aug_backend
    if backend == "auto":
        backend = "tensor" if data.train.in_memory else "pil"
    if backend == "tensor":
        if not data.train.in_memory:
            raise ConfigError(f"--aug_backend tensor needs in-memory (CIFAR-style) data; '{config.dataset}' "
                              "reads image files: use --aug_backend pil")
        transform = build_tensor_views(list(recipes), data.style, data.image_size, **config.aug_options)
        train = DeviceLoader(data.train, transform, per_rank, sampler=sampler, device=ctx.device,
                             seed=config.run.seed, rank=ctx.rank, world_size=ctx.world_size,
                             drop_last=config.drop_last)
    else:
        transform = build_views(list(recipes), data.style, data.image_size, **config.aug_options)
        train = build_train_loader(data.train, transform, per_rank, sampler=sampler, workers=config.run.workers,
                                   drop_last=config.drop_last, seed=config.run.seed, rank=ctx.rank,
                                   world_size=ctx.world_size, pin_memory=pin)
    loaders = {"train": train}
    eval_transform = None if data.style == "cifar" else build_transform("test", data.style, data.image_size)
    eval_batch = max(per_rank, 256 if data.style == "cifar" else 64)
    splits = {"test": data.test, "val": data.val}
    for split, source in splits.items():
        if source is not None and len(source):
            loaders[split] = build_eval_loader(source, eval_transform, eval_batch, workers=config.run.workers,
                                               rank=ctx.rank, world_size=ctx.world_size, pin_memory=pin)
    return loaders


def run_label(config: TrainConfig, label: str) -> str:
    """The method label plus what changed the recipe: self-supervised pre-training (_ssp) and
    pseudo-labelled extra data (_semi). Run folder names and results tables use it."""
    from utils.pretrained import is_self_supervised_start

    label += "_ssp" if config.pretrained_model and is_self_supervised_start(config.pretrained_model) else ""
    return label + ("_semi" if config.unlabeled else "")


def run_training(config: TrainConfig, label: str, prepare_method: Optional[Callable] = None) -> Dict[str, Any]:
    """Builds everything, trains, writes results.json, and returns the results dict.

    `prepare_method(method, data, logger)` runs after construction (e.g. a pre-trained load).
    """
    wall_start = time.time()
    label = run_label(config, label)
    ctx = dist.setup_devices(config.run.gpu)
    if config.run.compile and ctx.data_parallel:
        # DataParallel replicates the compiled wrapper with its forward bound to the first GPU's
        # module, so the other replicas would run on the wrong device.
        raise ConfigError("--compile does not work with DataParallel (--gpu listing several GPUs): "
                          "drop --compile, or train on several GPUs with torchrun (DDP)")
    # Model initialisation must agree across DDP ranks (DDP also broadcasts it); augmentation drawn
    # from the global generator must not, so the generator is re-seeded per rank after building.
    seed_everything(config.run.seed, config.run.deterministic)
    data = build_dataset(config.dataset, config.data)
    labeled_counts = list(data.train_counts)
    if config.unlabeled is not None:
        from datasets.semi import add_pseudo_labeled

        data = add_pseudo_labeled(data, config.unlabeled, imb_factor_unlabel=config.imb_factor_unlabel
                                  or config.data.imb_factor, size_factor=config.unlabel_size_factor,
                                  seed=config.data.lt_seed)
    model_kwargs = {"arch": config.arch, "num_classes": data.num_classes, "head": config.head,
                    "scale": config.head_scale}
    config = resolve_selection(config, data)
    check_training_data(config, data, labeled_counts, ctx.world_size)  # before any file is written
    method = build_method(config.method, build_model(**model_kwargs), data.train_counts, **config.method_options)

    resume_path = config.run.resume
    if resume_path == "auto":
        resume_path = find_resume(config, label)
    payload = load_checkpoint(resume_path, prefer="last.pth") if resume_path else None
    if payload is not None:
        check_resume_matches(config, payload)
        run_dir = os.path.dirname(payload["path"])
    else:
        run_dir = config.run.out_dir or os.path.join(config.run.root_log, default_run_name(config, label))
    run_dir = dist.broadcast_object(run_dir)
    check_not_own_input(config, run_dir)
    logger = RunLogger(run_dir, is_main=ctx.is_main)
    logger.info(f"run folder: {run_dir}")
    logger.info(f"device: {ctx.device}, {dist.describe_hardware(ctx)} (world size {ctx.world_size}); precision: "
                f"{resolve_amp(config.run.amp, ctx.device)} (--amp {config.run.amp}); "
                f"channels_last: {config.run.channels_last}")
    logger.info(f"{data.name}: {len(data.train)} training images in {data.num_classes} classes "
                f"(head {max(data.train_counts)}, tail {min(data.train_counts)}), {len(data.test)} test"
                + (f", {len(data.val)} validation" if data.val is not None else ""))
    if payload is None:
        logger.write_json("config.json", {**config.to_dict(), "git_commit": git_commit()})
        if config.pretrained_model is not None:
            from utils.pretrained import load_pretrained

            load_pretrained(method, config.pretrained_model, logger)
        if prepare_method is not None:
            prepare_method(method, data, logger)
    else:
        method.load_state_dict(payload["state_dict"], strict=True)

    method.to(ctx.device)
    if config.run.channels_last:
        method.to(memory_format=torch.channels_last)
    # Compiling the DDP wrapper (not the bare network) lets the compiler see DDP's gradient
    # buckets and overlap their all-reduces with the backward pass.
    method.wrap(lambda net: torch.compile(dist.wrap_network(net, ctx)) if config.run.compile
                else dist.wrap_network(net, ctx),
                lambda net: dist.wrap_forward_only(net, ctx))
    loaders = build_loaders(config, data, ctx, method.num_views)
    inputs = DeviceInputs(data.mean, data.std, ctx.device, config.run.channels_last)
    dataset_info = describe_dataset(data, config, labeled_counts)

    def save_checkpoint(name, epoch, optimizer, scaler, records):
        if not ctx.is_main:
            return
        save_atomic(build_payload(
            method_name=config.method, method_kwargs=method.init_kwargs, model_kwargs=model_kwargs,
            dataset=dataset_info, config=config.to_dict(), state_dict=method.state_dict(), epoch=epoch,
            optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), records=records,
            rng=capture_rng_state()), os.path.join(run_dir, name))

    if payload is not None and payload.get("rng"):
        restore_rng_state(payload["rng"])
    if ctx.distributed:
        # Only rank 0's generator state is checkpointed; every rank draws its own augmentation.
        torch.manual_seed((config.run.seed * 1000 + ctx.rank) * 100003 + (payload or {}).get("epoch", 0))
    records = fit(config, method, data, ctx, loaders, inputs, logger, save_checkpoint, resume=payload)
    results = finalize(config, method, data, ctx, loaders, inputs, records, logger, labeled_counts)
    results["label"] = label
    results["run_dir"] = run_dir
    results["method_options"] = dict(config.method_options)
    results["device"] = str(ctx.device) + (f" x{ctx.world_size}" if ctx.distributed else "")
    results["hardware"] = dist.describe_hardware(ctx)
    results["wall_time_s"] = time.time() - wall_start
    results["train_time_s"] = records.get("elapsed_s")
    logger.write_json("results.json", results)
    logger.info(f"results written to {os.path.join(run_dir, 'results.json')}")
    logger.close()
    dist.barrier()
    return results


def _test_scope(config: TrainConfig, records: Dict[str, Any]) -> str:
    if config.run.test_interval == 1:
        return ""
    return (f", over the {records.get('test_evaluations', 0)} epochs whose test set was evaluated "
            f"(--test_interval {config.run.test_interval}: every {config.run.test_interval} epochs, "
            "validation improvements and the last)")


def finalize(config, method, data, ctx, loaders, inputs, records, logger, labeled_counts) -> Dict[str, Any]:
    """Labels each reported number with the rule that produced it; adds test-time variants of
    the last-epoch model (flip TTA, post-hoc logit adjustment, tau-normalisation) when asked."""
    from losses.priors import posthoc_adjusted
    from models.heads import tau_normalize_head

    results: Dict[str, Any] = {
        "dataset": data.name, "method": config.method, "arch": config.arch, "seed": config.run.seed,
        # --imb_factor only shapes the datasets whose long tail is cut here (CIFAR, SVHN).
        "imb_factor": config.data.imb_factor if config.dataset in SMALL_IMAGE_DATASETS else None,
        "imb_factor_unlabel": (config.imb_factor_unlabel or config.data.imb_factor) if config.unlabeled else None,
        "train_counts": list(data.train_counts), "labeled_counts": list(labeled_counts),
        "git_commit": git_commit(),
        "last": {**records.get("last", {}), "rule": "last epoch"},
        "best_on_test": {**records.get("best_on_test", {}),
                         "rule": "best top-1 on the TEST set (test-set selection, as in the papers' "
                                 "code: optimistic, not a clean estimate)" + _test_scope(config, records)},
        "selected_checkpoint": {"file": "best.pth", "rule": f"best top-1 on the {config.select_on} split"},
    }
    if "best_on_val" in records:
        results["best_on_val"] = {**records["best_on_val"],
                                  "rule": "test numbers of the epoch with the best validation top-1 "
                                          "(selection_top1 is that validation top-1)"}
    results["select_on"] = config.select_on
    results.update({k: v for k, v in records.items() if k.startswith("method/")})
    variants = {}
    if config.run.tta_flip:
        variants["last_flip_tta"] = (method.predict, True)
    if config.eval_posthoc_tau is not None:
        tau = config.eval_posthoc_tau
        variants[f"last_posthoc_la_tau{tau:g}"] = (posthoc_adjusted(method.predict, data.train_counts, tau,
                                                                    ctx.device), False)
    if config.eval_tau_norm is not None:
        net = method.classifier()
        tau_net = type(net)(net.backbone, tau_normalize_head(net.head, config.eval_tau_norm))
        variants[f"last_tau_norm{config.eval_tau_norm:g}"] = (tau_net, False)
    method.eval()
    for name, (predict, flip) in variants.items():
        summary = evaluate(predict, loaders["test"], inputs, ctx, data.train_counts, config.run.amp, flip)
        results[name] = {**summary, "rule": f"last epoch, {name.split('_', 1)[1]}"}
        logger.info(f"{name}: top1={summary['top1']:.2f}")
    return results
