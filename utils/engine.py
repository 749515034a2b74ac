"""The training engine every entry script uses: ``fit`` -> ``train_one_epoch`` / ``evaluate``.

The engine knows nothing about any particular method: it moves batches to the device, runs the
method's ``training_step`` under one autocast context, steps SGD with the epoch's learning rate,
logs the named loss parts, evaluates, and writes checkpoints and results.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from tqdm import tqdm

from utils import dist
from utils.checkpoint import signals_deferred
from utils.config import OptimConfig, TrainConfig
from utils.dist import DeviceContext
from utils.metrics import improves, summarize
from utils.schedule import cosine_lr, warmup_cosine_lr, warmup_step_lr


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/inf; the message names the epoch, the step and the loss part."""


def learning_rate(optim: OptimConfig, epoch: int, warmup_cosine_without_warmup: bool = False) -> float:
    """The epoch's learning rate (the papers set it once per epoch). ``warmup_cosine_without_warmup``:
    the method's reference keeps its warm-up formula when there is no warm-up
    (methods.base.Method.warmup_cosine_without_warmup)."""
    if optim.cosine and optim.warmup_epochs == 0 and not warmup_cosine_without_warmup:
        # Plain cosine from the base lr (MoCo, the decoupling configs): lr * (1 + cos(pi e / E)) / 2.
        return cosine_lr(epoch, optim.lr, optim.epochs)
    if optim.cosine:
        return warmup_cosine_lr(epoch, optim.lr, optim.epochs, optim.warmup_epochs)
    return warmup_step_lr(epoch, optim.lr, optim.warmup_epochs, optim.milestones, optim.gamma)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``--amp auto``: the fastest precision the device runs natively. bf16 on GPUs that have it,
    else fp16 with loss scaling; on CPUs bf16 only with native support (AVX512-BF16 / AMX), since
    emulated bf16 is several times slower than fp32."""
    if amp != "auto":
        return amp
    if runs_natively("bf16", device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "none"


def cuda_bf16_native(device: torch.device) -> bool:
    """bf16 in hardware: compute capability 8.0 (Ampere) and later. torch.cuda.is_bf16_supported()
    also says yes where bf16 is only emulated (V100, T4), several times slower than fp16."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def runs_natively(precision: str, device: torch.device) -> bool:
    """Whether ``device`` computes in ``precision`` without emulation (fp32 always; fp16 on GPUs;
    bf16 on GPUs and CPUs that have it)."""
    if precision == "none":
        return True
    if device.type == "cuda":
        return precision == "fp16" or cuda_bf16_native(device)
    return precision == "bf16" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast_context(device: torch.device, amp: str):
    """One autocast context for every precision; 'none' is a no-op."""
    amp = resolve_amp(amp, device)
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling; bf16 and fp32 do not (the scaler is then a pass-through)."""
    enabled = resolve_amp(amp, device) == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)


class DeviceInputs:
    """Moves uint8 batches to the device and normalises them there (one fused op per view)."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool = False):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def images(self, views):
        if isinstance(views, (tuple, list)):
            return tuple(self.images(v) for v in views)
        views = views.to(self.device, non_blocking=True)
        if views.dtype == torch.uint8:
            views = (views.float() - self.mean) / self.std
        return views.contiguous(memory_format=self.memory_format)

    def __call__(self, batch) -> Tuple[Any, torch.Tensor, torch.Tensor]:
        views, targets, indices = batch
        return self.images(views), targets.to(self.device, non_blocking=True), indices


def train_one_epoch(method, optimizer, scaler, loader, inputs: DeviceInputs, epoch: int,
                    config: TrainConfig, ctx: DeviceContext, logger=None) -> Dict[str, float]:
    """One pass over `loader`; returns the mean of every loss part (synchronised once at the end
    and every `log_interval` steps, never per step)."""
    method.train()
    run = config.run
    total = len(loader) if run.limit_batches is None else min(len(loader), run.limit_batches)
    sums: Dict[str, torch.Tensor] = {}
    first_bad = torch.full((), -1, dtype=torch.long, device=ctx.device)
    seen, start = 0, time.time()
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{config.optim.epochs}", leave=False,
               disable=not (run.progress and ctx.is_main), dynamic_ncols=True)
    for step, batch in enumerate(loader):
        if step >= total:
            break
        images, targets, indices = inputs(batch)
        with autocast_context(ctx.device, run.amp):
            out = method.training_step(images, targets, epoch, indices)
        loss = out["loss"]
        finite = torch.isfinite(loss.detach())
        first_bad = torch.where((first_bad < 0) & ~finite, torch.full_like(first_bad, step), first_bad)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        for name, value in {"loss/total": loss.detach(), **out.get("parts", {})}.items():
            value = value.detach().float()
            sums[name] = sums[name] + value if name in sums else value.clone()
        seen += targets.shape[0]
        bar.update(1)
        if (step + 1) % run.log_interval == 0 or step + 1 == total:
            _check_finite(first_bad, sums, epoch, step)
            bar.set_postfix(loss=f"{sums['loss/total'].item() / (step + 1):.4f}",
                            img_s=f"{seen * ctx.world_size / max(time.time() - start, 1e-9):.0f}")
    bar.close()
    if not sums:
        raise RuntimeError("the training loader produced no batch: the training set is smaller than "
                           "one batch with drop_last, lower -b/--batch_size")
    _check_finite(first_bad, sums, epoch, total - 1)
    means = {name: dist.all_reduce_mean(value / total).item() for name, value in sums.items()}
    means["throughput"] = seen * ctx.world_size / max(time.time() - start, 1e-9)
    return means


def _check_finite(first_bad: torch.Tensor, sums: Dict[str, torch.Tensor], epoch: int, step: int) -> None:
    # Under DDP every rank must stop together, or the healthy ones would wait in the next
    # collective forever; the steps where this runs are the same on every rank.
    first_bad = dist.all_reduce_max(first_bad)
    bad_step = int(first_bad.item())
    if bad_step < 0:
        return
    parts = [name for name, value in sums.items() if not torch.isfinite(value)] or ["loss/total"]
    raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {bad_step + 1} "
                             f"(parts: {', '.join(parts)}); stopping, checkpoints of earlier epochs are kept. "
                             "Start again with a lower --lr or --amp none (as a new run: a continued run "
                             "keeps its own flags), or check the data.")


@torch.no_grad()
def collect_logits(predict: Callable[[torch.Tensor], torch.Tensor], loader, inputs: DeviceInputs,
                   ctx: DeviceContext, amp: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and targets for a whole evaluation set, each image exactly once
    across DDP ranks (test-time variants: utils/evaluation.py)."""
    logits_list, target_list, index_list = [], [], []
    for batch in loader:
        images, targets, indices = inputs(batch)
        with autocast_context(ctx.device, amp):
            logits = predict(images).float()
        logits_list.append(logits)
        target_list.append(targets)
        index_list.append(indices.to(ctx.device, non_blocking=True))
    logits, targets = torch.cat(logits_list), torch.cat(target_list)
    indices = torch.cat(index_list)
    if ctx.distributed:
        logits, targets, indices = (dist.gather_variable(t) for t in (logits, targets, indices))
        order = torch.argsort(indices)
        logits, targets = logits[order], targets[order]
    return logits.cpu(), targets.cpu()


def evaluate(predict, loader, inputs, ctx, train_counts, amp="none") -> Dict[str, Any]:
    """Top-1/5, many/medium/few, mean per-class accuracy, ECE and NLL of one evaluation set."""
    logits, targets = collect_logits(predict, loader, inputs, ctx, amp)
    return summarize(logits, targets, train_counts)


def _test_due(config: TrainConfig, records: Dict[str, Any], evaluations: Dict[str, Dict[str, Any]],
              epoch: int, metric: str) -> bool:
    """Whether this evaluation also scores the test set: always at --test_interval 1; otherwise
    once test_interval epochs have passed since the last test (so --eval_interval cannot stretch
    the gap, and a resumed run keeps the rhythm: records["last"] is checkpointed) and whenever the
    validation score (`metric`) improves, because best_on_val keeps the test numbers of that epoch."""
    last_tested = records.get("last", {}).get("epoch", 0)
    if config.run.test_interval == 1 or (epoch + 1) - last_tested >= config.run.test_interval:
        return True
    return "val" in evaluations and improves(evaluations["val"][metric], _best_score(records.get("best_on_val")))


def _best_score(best: Optional[Dict[str, Any]]) -> Optional[float]:
    # Records of runs started before selection_score existed hold selection_top1.
    return None if best is None else best.get("selection_score", best.get("selection_top1"))


def _record_best(records: Dict[str, Any], split: str, evaluations: Dict[str, Dict[str, Any]],
                 epoch: int, metric: str) -> bool:
    """Keeps, under best_on_<split>, the TEST summary of the epoch with the highest `metric` on
    `split`, so a validation-selected number is the selected model's test accuracy."""
    key, score = f"best_on_{split}", evaluations[split][metric]
    if not improves(score, _best_score(records.get(key))):
        return False
    records[key] = {**evaluations["test"], "epoch": epoch + 1, "selection_metric": metric, "selection_score": score}
    return True


def _log_epoch(logger, epoch: int, lr: float, train: Dict[str, float], evaluations: Dict[str, Dict]) -> None:
    scalars = {f"train/{name}": value for name, value in train.items()}
    scalars["train/lr"] = lr
    for split, summary in evaluations.items():
        for key in ("top1", "top5", "many", "medium", "few", "mean_per_class", "ece", "nll"):
            scalars[f"{split}/{key}"] = summary.get(key)
    logger.scalars(scalars, epoch + 1)
    text = " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in train.items() if k.startswith("loss/"))
    message = f"epoch {epoch + 1}: lr={lr:.5f} {text} ({train['throughput']:.0f} img/s)"
    for split, summary in evaluations.items():
        shots = " ".join(f"{g}={'n/a' if summary[g] is None else f'{summary[g]:.2f}'}"
                         for g in ("many", "medium", "few"))
        message += f" | {split} top1={summary['top1']:.2f} {shots}"
    logger.info(message)


def fit(config: TrainConfig, method, data, ctx: DeviceContext, loaders: Dict[str, Any],
        inputs: DeviceInputs, logger, save_checkpoint: Callable[..., None],
        resume: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Trains `method` for config.optim.epochs epochs, evaluating after each (or every
    `eval_interval`), and returns the records: last-epoch, best-on-test and best-on-val summaries.

    `save_checkpoint(name, epoch, optimizer, scaler, records)` writes last.pth / best.pth.
    """
    optim = config.optim
    # The fused CUDA kernel also takes the fp16 scaler's inf check on the device (no sync per step).
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=optim.lr, momentum=optim.momentum,
                                weight_decay=optim.weight_decay, nesterov=optim.nesterov,
                                fused=True if ctx.device.type == "cuda" else None)
    scaler = make_scaler(ctx.device, config.run.amp)
    records: Dict[str, Any] = {"elapsed_s": 0.0}
    start_epoch = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        records = dict(resume["records"])
        start_epoch = int(resume["epoch"])
        logger.forget_per_class_after(start_epoch)  # rows of the epoch the kill interrupted
        logger.info(f"resumed from {resume['path']} after epoch {start_epoch}")
    precision = resolve_amp(config.run.amp, ctx.device)
    # Epochs trained per precision: `--amp auto` is bf16 on one machine and fp32 on another, so a
    # run continued elsewhere can change precision halfway; results.json then says so.
    trained_in = records.setdefault("precision_epochs", {})
    unrecorded = start_epoch - sum(trained_in.values())  # a checkpoint from before this count
    if unrecorded > 0:
        # An explicit --amp cannot change on resume, so those epochs were in it; auto's are unknown.
        earlier_name = precision if config.run.amp != "auto" else "unrecorded"
        trained_in[earlier_name] = trained_in.get(earlier_name, 0) + unrecorded
    earlier = sorted(set(trained_in) - {precision, "unrecorded"})
    if earlier:
        logger.info(f"note: this run trained {', '.join(f'{trained_in[p]} epoch(s) in {p}' for p in earlier)}; "
                    f"--amp {config.run.amp} here is {precision}, so the rest trains in {precision} "
                    "(results.json records the epochs of each)")
    selection_key = f"best_on_{config.select_on}"
    for epoch in range(start_epoch, optim.epochs):
        began = time.time()
        lr = learning_rate(optim, epoch, type(method).warmup_cosine_without_warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # Random streams restart from (seed, rank, epoch), so a resumed run (any rank) draws what
        # the uninterrupted one drew.
        dist.seed_epoch(config.run.seed, ctx.rank, epoch)
        loaders["train"].set_epoch(epoch)
        method.on_epoch_start(epoch)
        train = train_one_epoch(method, optimizer, scaler, loaders["train"], inputs, epoch, config, ctx, logger)
        statistics = method.epoch_statistics()
        if statistics:
            logger.per_class({name: values.tolist() for name, values in statistics.items()}, epoch + 1)
        last_epoch = epoch + 1 == optim.epochs
        evaluations: Dict[str, Dict[str, Any]] = {}
        if last_epoch or (epoch + 1) % config.run.eval_interval == 0:
            method.eval()
            dist.broadcast_buffers(method)
            if "val" in loaders:
                evaluations["val"] = evaluate(method.predict, loaders["val"], inputs, ctx,
                                              data.train_counts, config.run.amp)
            if last_epoch or _test_due(config, records, evaluations, epoch, method.selection_metric):
                evaluations["test"] = evaluate(method.predict, loaders["test"], inputs, ctx,
                                               data.train_counts, config.run.amp)
                records["test_evaluations"] = records.get("test_evaluations", 0) + 1
            records.update(method.on_epoch_end(epoch, evaluations) or {})
        improved = False
        for split in evaluations:
            better = _record_best(records, split, evaluations, epoch, method.selection_metric)
            improved |= better and f"best_on_{split}" == selection_key
        if "test" in evaluations:
            records["last"] = {**evaluations["test"], "epoch": epoch + 1}
        if "val" in evaluations:
            records["last_val"] = {**evaluations["val"], "epoch": epoch + 1}
        records["elapsed_s"] = records.get("elapsed_s", 0.0) + (time.time() - began)
        trained_in[precision] = trained_in.get(precision, 0) + 1
        records["precision"] = precision  # this checkpoint's epoch: test.py evaluates in it
        _log_epoch(logger, epoch, lr, train, evaluations)
        # Both files of an epoch or neither: a SIGTERM between them would leave best.pth an epoch
        # ahead of the last.pth a resume retrains from.
        with signals_deferred():
            if improved:
                save_checkpoint("best.pth", epoch + 1, optimizer, scaler, records)
            save_checkpoint("last.pth", epoch + 1, optimizer, scaler, records)
    return records
