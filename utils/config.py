"""Argument parsing helpers and the frozen run configuration every entry script builds.

Entry scripts own their flags (they keep the papers' spellings); this module turns the parsed
namespace into a ``TrainConfig`` that is validated once and never edited afterwards. Values found
at run time (device, rank, class counts) live in the engine, not here.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from datasets.base import DataOptions


class ConfigError(ValueError):
    """A flag or a combination of flags is wrong; the message names them and the fix."""


def str2bool(value: str | bool) -> bool:
    """Parses 'True'/'False' style strings, so ``--cos False`` really means False."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"true", "t", "yes", "y", "1", "on"}:
        return True
    if lowered in {"false", "f", "no", "n", "0", "off", "none"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got '{value}'")


def add_bool_flag(parser: argparse.ArgumentParser, *names: str, default: bool, help: str) -> None:
    """``--flag`` alone means True; ``--flag False`` / ``--flag True`` are parsed properly."""
    parser.add_argument(*names, type=str2bool, nargs="?", const=True, default=default,
                        metavar="BOOL", help=f"{help} (default: {default})")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass(frozen=True)
class OptimConfig:
    """SGD and its learning-rate schedule; the schedule is a pure function of the epoch."""

    lr: float = 0.1  # base learning rate for the global batch
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 2e-4  # applied to every parameter, as the papers' code does
    epochs: int = 200  # training epochs
    warmup_epochs: int = 5  # linear warm-up epochs, lr * (e + 1) / W
    cosine: bool = False  # cosine decay after warm-up; otherwise step decays at `milestones`
    milestones: Tuple[int, ...] = (160, 180)  # 0-based epochs where the lr is multiplied by gamma
    gamma: float = 0.01  # step factor (0.01 is the LDAM-DRW / semi-self recipe)
    nesterov: bool = False  # Nesterov momentum

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"--warmup_epochs must be non-negative, got {self.warmup_epochs}")
        if self.weight_decay < 0:
            raise ConfigError(f"--wd/--weight_decay must be non-negative, got {self.weight_decay}")


@dataclass(frozen=True)
class RunConfig:
    """How and where a run executes; nothing here changes what is learned, except `seed`."""

    out_dir: Optional[str] = None  # run folder; None builds one under `root_log`
    root_log: str = "log"  # parent folder of automatically named runs
    resume: Optional[str] = None  # checkpoint path, a run folder, or 'auto'
    seed: int = 0  # seeds Python, NumPy and torch; samplers derive per-epoch seeds from it
    deterministic: bool = False  # deterministic algorithms (slower on GPU)
    gpu: Optional[str] = None  # '0' or '0,1,2,3' (DataParallel); None: CUDA if present
    amp: str = "auto"  # 'none', 'bf16', 'fp16' autocast, or 'auto' (resolved per device: engine.resolve_amp)
    channels_last: bool = True  # NHWC memory format for convolutions
    compile: bool = False  # torch.compile the network
    workers: int = 4  # DataLoader worker processes for the PIL pipeline
    aug_backend: str = "auto"  # 'tensor' (batched, on the device), 'pil', or 'auto' (tensor for in-memory data)
    limit_batches: Optional[int] = None  # cap batches per epoch (smoke runs)
    log_interval: int = 50  # steps between host synchronisations for logging / NaN checks
    eval_interval: int = 1  # evaluate every N epochs (and always after the last)
    # With validation selection, the test set (often 50x the validation split) is evaluated once N
    # epochs have passed since its last evaluation, at every validation improvement (so the
    # selected checkpoint's test numbers are exact) and after the last epoch; 1 evaluates it
    # whenever the validation split is.
    test_interval: int = 1
    progress: bool = True  # tqdm bars
    tta_flip: bool = False  # also report flip test-time augmentation at the end

    def __post_init__(self):
        if self.amp not in ("auto", "none", "bf16", "fp16"):
            raise ConfigError(f"--amp must be auto, none, bf16 or fp16, got '{self.amp}'")
        if self.limit_batches is not None and self.limit_batches < 1:
            raise ConfigError(f"--limit_batches must be at least 1, got {self.limit_batches}")
        if self.aug_backend not in ("auto", "tensor", "pil"):
            raise ConfigError(f"--aug_backend must be auto, tensor or pil, got '{self.aug_backend}'")
        if self.workers < 0:
            raise ConfigError(f"--workers must be non-negative, got {self.workers}")
        for flag in ("eval_interval", "test_interval"):
            if getattr(self, flag) < 1:
                raise ConfigError(f"--{flag} must be at least 1, got {getattr(self, flag)}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved as config.json and inside checkpoints."""

    script: str  # entry script that built it ('main.py', 'train_LCSL.py')
    dataset: str  # DATASETS name
    data: DataOptions  # data flags
    arch: str  # MODELS name
    head: str  # HEADS name
    head_scale: Optional[float]  # cosine-classifier scale (None for linear heads)
    method: str  # METHODS name
    method_options: Dict[str, Any]  # the method's own hyper-parameters
    batch_size: int  # global batch size (split over DataParallel / DDP replicas)
    train_aug: Tuple[str, ...]  # augmentation recipe per view (TRANSFORMS names)
    aug_options: Dict[str, Any]  # recipe options (e.g. RandAugment n, m)
    sampler: Optional[str]  # SAMPLERS name or None for uniform shuffling
    sampler_options: Dict[str, Any]  # sampler options (e.g. samples_per_class)
    select_on: Optional[str]  # 'val', 'test', or None: val when the dataset has a validation split
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    drop_last: bool = False  # drop the last incomplete training batch
    eval_posthoc_tau: Optional[float] = None  # also report post-hoc logit adjustment with this tau
    eval_tau_norm: Optional[float] = None  # also report the tau-normalised classifier
    pretrained_model: Optional[str] = None  # start from these (self-supervised) backbone weights
    unlabeled: Optional[str] = None  # pseudo-label file whose images join the training set
    imb_factor_unlabel: Optional[float] = None  # imbalance of the pseudo-labelled subset (None: --imb_factor)
    unlabel_size_factor: float = 5.0  # pseudo-labelled images per labelled image

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"-b/--batch_size must be at least 1, got {self.batch_size}")
        if self.select_on not in (None, "val", "test"):
            raise ConfigError(f"--select_on must be val or test, got '{self.select_on}'")
        if self.unlabeled is None and self.imb_factor_unlabel is not None:
            raise ConfigError("--imb_factor_unlabel needs --unlabeled FILE (a pseudo-label file)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(values: Dict[str, Any]) -> "TrainConfig":
        values = dict(values)
        values["data"] = DataOptions(**values["data"])
        values["optim"] = OptimConfig(**{**values["optim"],
                                         "milestones": tuple(values["optim"]["milestones"])})
        values["run"] = RunConfig(**values["run"])
        values["train_aug"] = tuple(values["train_aug"])
        return TrainConfig(**values)
