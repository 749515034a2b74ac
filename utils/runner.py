"""From a TrainConfig to a finished run folder: data, model, method, devices, resume, results.

Entry scripts parse their flags into a ``TrainConfig`` and call ``run_training``; this module is
the only place that wires components together, so every script trains the same way.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from datasets import DATASETS, SMALL_IMAGE_DATASETS, LongTailData, build_dataset
from datasets.augment import build_views
from datasets.augment.tensor import build_tensor_views
from datasets.device_loader import DeviceLoader
from datasets.loaders import (absolute_data_options, build_eval_loaders, build_train_loader,
                              check_evaluation_images)
from datasets.samplers import build_sampler
from methods import build_method
from models import build_model
from utils import dist
from utils.checkpoint import (CheckpointError, build_payload, capture_rng_state, git_commit, load_checkpoint,
                              restore_rng_state, save_atomic)
from utils.config import ConfigError, TrainConfig, check_training_data
from utils.engine import DeviceInputs, NonFiniteLossError, evaluate, fit, resolve_amp
from utils.logger import RunLogger
from utils.run_folder import RunFolderLock, RunPlan, claim_run_folder, config_differences, plan_run_folder


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
            # Absolute paths: test.py must read the data this run read, from whatever folder it runs in.
            "options": dataclasses.asdict(absolute_data_options(config.dataset, config.data))}


def check_resume_matches(config: TrainConfig, payload: Dict[str, Any]) -> None:
    """Continuing a run with other data, recipe or seed would silently mix two runs."""
    for flag, saved, value in config_differences(config, payload["config"])[:1]:
        raise ConfigError(f"--resume {payload['path']}: the checkpoint has {flag}={saved!r} "
                          f"but this command has {value!r}; continue a run with its own flags")
    if int(payload["epoch"]) > config.optim.epochs:
        raise ConfigError(f"--epochs {config.optim.epochs}: --resume {payload['path']} has already trained "
                          f"{payload['epoch']} epochs; pass --epochs {payload['epoch']} or more")


# ---- divergence: never checkpoint non-finite weights -----------------------------------------------
class DivergedError(NonFiniteLossError):
    """An epoch left NaN/inf in the weights (its loss may still have been finite)."""


def non_finite_tensors(state: Dict[str, Any]) -> List[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    names = [name for name, value in state.items() if torch.is_tensor(value) and value.is_floating_point()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state[name]).all() for name in names]).tolist()  # one sync
    return [name for name, ok in zip(names, finite) if not ok]


def check_finite_state(state: Dict[str, Any], epoch: int, name: str, run_dir: str, config: TrainConfig,
                       device: torch.device) -> None:
    """Raises DivergedError, on every DDP rank together, before a checkpoint with NaN/inf weights
    is written: the checkpoints already on disk stay the run's last good state."""
    bad = non_finite_tensors(state)
    if int(dist.all_reduce_max(torch.tensor(len(bad), device=device)).item()) == 0:
        return
    kept = [f for f in ("last.pth", "best.pth") if os.path.isfile(os.path.join(run_dir, f))]
    where = (f"{' and '.join(kept)} in {run_dir} keep the last finite state" if kept
             else "no checkpoint was written")
    first = f" (first: {bad[0]})" if bad else ""
    raise DivergedError(f"training diverged in epoch {epoch}: {len(bad) or 'some'} parameter/buffer tensor(s) "
                        f"hold NaN/inf{first}; stopped before writing {name}, {where}. Start again with a "
                        f"lower --lr (this run: {config.optim.lr:g}) in a new run folder")


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
    # test.py builds its loader with the same function, so it scores a checkpoint as the log did.
    return {"train": train, **build_eval_loaders(data, per_rank, workers=config.run.workers, rank=ctx.rank,
                                                 world_size=ctx.world_size, pin_memory=pin)}


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
    plan = plan_run_folder(auto, label)
    last = os.path.join(plan.run_dir, "last.pth") if plan.run_dir else None
    return last if last and plan.action in ("continue", "finished") and os.path.isfile(last) else None


def _on_main(ctx, work: Callable[[], Any]) -> Any:
    """Runs `work` on rank 0 only and hands its result, or its refusal, to every rank, so that a
    refused DDP run stops on all ranks instead of leaving the others waiting."""
    outcome: Any = None
    if ctx.is_main:
        try:
            outcome = work()
        except (ConfigError, CheckpointError, OSError) as error:
            outcome = error
    outcome = dist.broadcast_object(outcome)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _claim_on_main(plan: RunPlan, config: TrainConfig, label: str, ctx
                   ) -> Tuple[str, List[str], Optional[RunFolderLock]]:
    """Rank 0 locks the folder and clears what the plan discards; every rank gets the folder and
    the lines to log, rank 0 also the held lock (released when run_training ends)."""
    held = []

    def claim() -> Tuple[str, List[str]]:
        run_dir, lock, notes = claim_run_folder(plan, config, label)
        held.append(lock)
        return run_dir, notes

    run_dir, notes = _on_main(ctx, claim)
    return run_dir, notes, (held[0] if held else None)


def _finished_results(plan: RunPlan, ctx) -> Dict[str, Any]:
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
    """Collects log lines of the work done before the run folder exists (the pre-trained load),
    so that a refusal there leaves no folder; they go to log.txt once it is open."""

    def __init__(self, run_dir: Optional[str]):
        self.run_dir = run_dir
        self.lines: List[str] = []

    def info(self, message: str, echo: bool = True) -> None:
        self.lines.append(message)


def run_training(config: TrainConfig, label: str, check_data: Optional[Callable] = None) -> Dict[str, Any]:
    """Builds everything, trains, writes results.json, and returns the results dict.

    `check_data(config, data)` runs once the data is built, before any file is written, so a
    refusal leaves no run folder.
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
    check_evaluation_images(data, config.data, ctx.rank, ctx.world_size)  # a bad image stops it before epoch 1
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
    if check_data is not None:
        check_data(config, data)
    if config.run.out_dir:
        check_not_own_input(config, config.run.out_dir)
    plan: RunPlan = _on_main(ctx, lambda: plan_run_folder(config, label))
    if plan.action == "finished":
        return _finished_results(plan, ctx)
    method = build_method(config.method, build_model(**model_kwargs), data.train_counts, **config.method_options)
    payload = load_checkpoint(plan.resume, prefer="last.pth") if plan.resume else None
    if payload is not None:
        check_resume_matches(config, payload)
    if plan.run_dir:
        check_not_own_input(config, plan.run_dir)
    pretrained_notes = _PendingNotes(plan.run_dir)
    if payload is None and config.pretrained_model is not None:
        from utils.pretrained import load_pretrained

        load_pretrained(method, config.pretrained_model, pretrained_notes)  # a bad file: no folder made
    run_dir, notes, lock = _claim_on_main(plan, config, label, ctx)
    logger = RunLogger(run_dir, is_main=ctx.is_main)
    try:
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
        if payload is None:
            logger.write_json("config.json", {**config.to_dict(), "git_commit": git_commit()})
            for line in pretrained_notes.lines:
                logger.info(line)
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
            state = method.state_dict()
            check_finite_state(state, epoch, name, run_dir, config, ctx.device)  # every rank, together
            if not ctx.is_main:
                return
            save_atomic(build_payload(
                method_name=config.method, method_kwargs=method.init_kwargs, model_kwargs=model_kwargs,
                dataset=dataset_info, config=config.to_dict(), state_dict=state, epoch=epoch,
                optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), records=records,
                rng=capture_rng_state()), os.path.join(run_dir, name))

        if payload is not None and payload.get("rng"):
            restore_rng_state(payload["rng"])
        # Every rank's generators are re-seeded from (seed, rank, epoch) at each epoch start (fit),
        # so neither a resume nor which rank's state the checkpoint holds changes the random draws.
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
    except NonFiniteLossError as error:
        logger.info(f"training stopped: {error}", echo=False)  # run_guarded prints it on stderr
        raise
    finally:
        logger.close()
        if lock is not None:
            lock.release()
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
