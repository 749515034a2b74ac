"""Argument parsing helpers and the frozen run configuration every entry script builds.

Entry scripts own their flags (they keep the papers' spellings); this module turns the parsed
namespace into a ``TrainConfig`` that is validated once and never edited afterwards. Values found
at run time (device, rank, class counts) live in the engine, not here.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Optional, Sequence, Tuple, Union

if TYPE_CHECKING:  # imported lazily: scripts such as make_table.py use this module without torch
    from datasets.base import DataOptions


class ConfigError(ValueError):
    """A flag or a combination of flags is wrong; the message names them and the fix."""


class Number:
    """The valid values of one numeric flag: an argparse ``type`` and a config-field check.

    Parsing rejects NaN and infinities for every float flag (``float('nan')`` and ``1e999`` parse
    without complaint, and a NaN compares False against every bound, so it slips through checks
    such as ``lr <= 0``), then the closed or open bounds. Declaring the range once, next to the
    flag, is what makes every bad value fail at parse time, before any file is written.
    """

    def __init__(self, kind: type, low: Optional[float] = None, high: Optional[float] = None, *,
                 low_open: bool = False, high_open: bool = False):
        self.kind, self.low, self.high, self.low_open, self.high_open = kind, low, high, low_open, high_open

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        low, high = (str(self.kind(v)) if self.kind is int else f"{v:g}" for v in (self.low or 0, self.high or 0))
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {low}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {high}"
        return "a finite number" if self.kind is float else noun

    def accepts(self, value: Union[int, float]) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind is int and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __call__(self, text: str) -> Union[int, float]:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got '{text}'") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got '{text}'")
        return value

    def check(self, flag: str, value: Optional[Union[int, float]]) -> None:
        """Raises a ConfigError naming ``flag`` when a config field holds a value the flag refuses
        (configs are also built in code and from saved config.json files, not only from flags)."""
        if value is not None and not self.accepts(value):
            raise ConfigError(f"{flag} must be {self.describe()}, got {value}")

    def __repr__(self) -> str:
        return self.describe()


# The ranges the flags share. Counts of things (epochs, batches, dimensions) are integers >= 1;
# seeds feed NumPy's RandomState, which takes 0 .. 2**32 - 1.
POSITIVE_INT = Number(int, 1)
NON_NEGATIVE_INT = Number(int, 0)
SEED = Number(int, 0, 2 ** 32 - 1)
POSITIVE = Number(float, 0, low_open=True)
NON_NEGATIVE = Number(float, 0)
FINITE = Number(float)
FRACTION = Number(float, 0, 1, low_open=True)  # (0, 1]: --imb_factor, a 1 / imbalance ratio
PROBABILITY = Number(float, 0, 1)  # [0, 1]
BELOW_ONE = Number(float, 0, 1, high_open=True)  # [0, 1): momenta, effective-number beta


def check_limits(config: Any) -> None:
    """Checks every field named in the dataclass's ``LIMITS`` (field -> (flag, Number))."""
    for name, (flag, number) in config.LIMITS.items():
        number.check(flag, getattr(config, name))


def user_path(path: str) -> str:
    """An argparse ``type`` for a path flag: ``~`` stands for the home folder as in the shell. The
    shell leaves ``--data_root=~/data`` as typed, and torchvision's downloads expand it while every
    other file access would not: the data would land in one folder and be looked for in another."""
    return os.path.expanduser(path)


def output_file(path: str) -> str:
    """An argparse ``type`` for a file the script writes (--plot, --json, --out): its folder must
    exist and be writable, so a typo fails at once instead of after minutes of work. Missing
    folders are not created: a mistyped path would otherwise scatter new folders."""
    path = user_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a folder; give a file name inside it")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder} does not exist: create it first, or "
                                         "choose a path in an existing folder")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"the folder {folder} is not writable: choose another path")
    return path


# The formats matplotlib's Agg, PDF, PS and SVG back ends write, named by the file's extension.
FIGURE_FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "tif", "tiff", "webp", "eps", "ps")


def figure_file(path: str) -> str:
    """``output_file`` for a figure: the extension picks the format, so it must be one we can write."""
    extension = os.path.splitext(path)[1].lstrip(".").lower()
    if extension not in FIGURE_FORMATS:
        raise argparse.ArgumentTypeError(f"{path}: the figure's format comes from its extension; end the name in "
                                         f".png, .pdf or .svg (or one of {', '.join(FIGURE_FORMATS[3:])})")
    return output_file(path)


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


def add_bool_flag(parser: argparse.ArgumentParser, *names: str, default: Optional[bool], help: str,
                  default_text: Optional[str] = None) -> None:
    """``--flag`` alone means True; ``--flag False`` / ``--flag True`` are parsed properly.
    ``default_text`` says what an unset flag (default None) means."""
    parser.add_argument(*names, type=str2bool, nargs="?", const=True, default=default,
                        metavar="BOOL", help=f"{help} (default: {default_text or default})")


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's own line breaks and adds "(default: X)" to every option whose help
    does not already say what its default is (a None default means "chosen elsewhere", and its
    help says by what)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = isinstance(action.default, (list, tuple)) and not action.default
        if ("default" not in text and action.option_strings and action.nargs != 0 and not empty
                and action.default not in (None, argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text.strip()


def end_quietly_when_output_closes() -> None:
    """A table script piped into ``head`` ends quietly once its reader is gone, as command-line
    tools do, instead of printing a BrokenPipeError traceback (POSIX; elsewhere a no-op)."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit code 2, naming a flag as
    the user spelled it (``--batch_size``, not argparse's ``-b/--batch_size/--batch-size``); its
    help shows every default (DefaultsHelpFormatter)."""

    _typed: Sequence[str] = ()

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_output_argument(self, flag: str, figure: bool = False, **kwargs: Any) -> None:
        """A file the script writes (``output_file``). An existing file is refused unless ``--force``
        (added with the first output flag) is given: nothing written before is replaced silently.
        A ``figure``'s extension must name a format the plot can be saved in, checked before the
        work whose result it draws."""
        outputs = getattr(self, "_outputs", [])
        if not outputs:
            self.add_argument("--force", action="store_true",
                              help="replace the files named by the output flags if they exist")
        action = self.add_argument(flag, type=figure_file if figure else output_file, **kwargs)
        self._outputs = outputs + [(flag, action.dest)]

    def parse_known_args(self, args=None, namespace=None):
        self._typed = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(args, namespace)
        for flag, dest in getattr(self, "_outputs", []):
            path = getattr(namespace, dest, None)
            if path and os.path.lexists(path) and not namespace.force:
                self.error(f"{flag} {path} exists: choose another path, or pass --force to replace it")
        return namespace, extras

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {self._as_typed(message)}\n")

    def _as_typed(self, message: str) -> str:
        match = re.match(r"argument (\S+/\S+): ", message)
        if match is None:
            return message
        for name in match.group(1).split("/"):
            short = len(name) == 2 and not name.startswith("--")  # -b64 is -b 64
            if any(token == name or token.startswith(name + "=") or (short and token.startswith(name))
                   for token in self._typed):
                return message.replace(match.group(1), name, 1)
        return message


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

    # The valid values of each field and the flag that sets it; utils/cli.py gives the same
    # Number to the flag as its argparse type, so the range is written once.
    LIMITS: ClassVar[Dict[str, Tuple[str, Number]]] = {
        "lr": ("--lr", POSITIVE), "momentum": ("--momentum", BELOW_ONE),
        "weight_decay": ("--wd/--weight_decay", NON_NEGATIVE), "epochs": ("--epochs", POSITIVE_INT),
        "warmup_epochs": ("--warmup_epochs", NON_NEGATIVE_INT), "gamma": ("--lr_gamma", POSITIVE),
    }

    def __post_init__(self):
        check_limits(self)
        for milestone in self.milestones:
            NON_NEGATIVE_INT.check("--schedule", milestone)
        if self.cosine:
            return  # the step decays are unused (utils.schedule.warmup_cosine_lr)
        # What utils.schedule.warmup_step_lr requires, refused here, before any run folder exists.
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"--schedule must list increasing epochs, got {' '.join(map(str, self.milestones))}: "
                              f"use --schedule {' '.join(map(str, sorted(set(self.milestones))))}")
        if self.milestones and self.milestones[0] < self.warmup_epochs:
            raise ConfigError(f"--schedule {' '.join(map(str, self.milestones))} decays the lr inside the "
                              f"{self.warmup_epochs} warm-up epochs (--warmup_epochs): start the schedule at "
                              f"epoch {self.warmup_epochs} or later, or lower --warmup_epochs")


@dataclass(frozen=True)
class Recipe:
    """What the optimisation flags mean when a command leaves them out: one paper's recipe.

    Each method's command line declares one (methods.base.MethodCommandLine.recipe), so an
    omitted --lr means the lr of the paper whose method this is, and ``--help`` lists them.
    """

    lr: float
    weight_decay: float
    epochs: int
    warmup_epochs: int
    cos: bool
    schedule: Tuple[int, ...]  # step-decay epochs, used when cos is False
    lr_gamma: float
    batch_size: int
    aug: Tuple[str, ...]  # training augmentation recipe per view
    seed: int


# --amp: autocast precision; auto picks the device's native one (utils.engine.resolve_amp).
AMP_CHOICES = ("auto", "none", "bf16", "fp16")
# --gpu of every entry script (utils.dist.setup_devices reads it).
GPU_HELP = "GPU id, or ids like 0,1,2,3 for DataParallel (default: GPU 0 if CUDA is available, else the CPU)"
# --aug_backend: batched tensor augmentation on the device, the per-image PIL pipeline, or tensor
# for in-memory data and PIL for image files.
AUG_BACKENDS = ("auto", "tensor", "pil")
# --compile_mode: torch.compile's modes; reduce-overhead also captures CUDA graphs (GPUs only).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# --select_on: the split whose improvement chooses best.pth (and LCSL's teacher).
SELECTION_SPLITS = ("val", "test")


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
    compile_mode: str = "default"  # torch.compile's mode (COMPILE_MODES) when compile is on
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
    overwrite: bool = False  # delete the run already in out_dir before starting (else it is never reused)

    LIMITS: ClassVar[Dict[str, Tuple[str, Number]]] = {
        "seed": ("--seed", SEED), "workers": ("--workers", NON_NEGATIVE_INT),
        "limit_batches": ("--limit_batches", POSITIVE_INT), "log_interval": ("--log_interval", POSITIVE_INT),
        "eval_interval": ("--eval_interval", POSITIVE_INT), "test_interval": ("--test_interval", POSITIVE_INT),
    }

    def __post_init__(self):
        check_limits(self)
        if self.amp not in AMP_CHOICES:
            raise ConfigError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got '{self.amp}'")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"--compile_mode must be one of {', '.join(COMPILE_MODES)}, got '{self.compile_mode}'")
        if self.aug_backend not in AUG_BACKENDS:
            raise ConfigError(f"--aug_backend must be one of {', '.join(AUG_BACKENDS)}, got '{self.aug_backend}'")
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite deletes the run in --out_dir and --resume continues it: pass one of them")


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
    # Imbalance of the pseudo-labelled subset; the command line fills in REFERENCE_IMB_FACTOR_UNLABEL
    # when --unlabeled is given without it (None in the configs of earlier runs meant --imb_factor).
    imb_factor_unlabel: Optional[float] = None
    unlabel_size_factor: float = 5.0  # pseudo-labelled images per labelled image

    LIMITS: ClassVar[Dict[str, Tuple[str, Number]]] = {
        "batch_size": ("-b/--batch_size", POSITIVE_INT), "head_scale": ("--head_scale", POSITIVE),
        "eval_posthoc_tau": ("--posthoc_tau", NON_NEGATIVE), "eval_tau_norm": ("--tau_norm", NON_NEGATIVE),
        "imb_factor_unlabel": ("--imb_factor_unlabel", FRACTION),
        "unlabel_size_factor": ("--unlabel_size_factor", POSITIVE),
    }

    def __post_init__(self):
        check_limits(self)
        if self.select_on is not None and self.select_on not in SELECTION_SPLITS:
            raise ConfigError(f"--select_on must be one of {', '.join(SELECTION_SPLITS)}, got '{self.select_on}'")
        if self.unlabeled is None and self.imb_factor_unlabel is not None:
            raise ConfigError("--imb_factor_unlabel needs --unlabeled FILE (a pseudo-label file)")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(values: Dict[str, Any]) -> "TrainConfig":
        from datasets.base import DataOptions

        values = dict(values)
        values["data"] = DataOptions(**values["data"])
        values["optim"] = OptimConfig(**{**values["optim"],
                                         "milestones": tuple(values["optim"]["milestones"])})
        values["run"] = RunConfig(**values["run"])
        values["train_aug"] = tuple(values["train_aug"])
        return TrainConfig(**values)


# --imb_factor_unlabel when --unlabeled comes without it: the default of the semi-self reference's
# train_semi.py (rho_U = 100), whatever --imb_factor is.
REFERENCE_IMB_FACTOR_UNLABEL = 0.01


# What a run's config.json records beside its configuration: the commit, the command line that
# started it with the folder it ran in, and every change of --epochs by a continuation (never
# compared between runs, never part of a recipe).
RUN_RECORD_FIELDS = ("git_commit", "command", "command_dir", "epochs_changed")


# Option field -> the flag that sets it, per registered method (filled when the methods package
# is imported), so that messages about a run's configuration name flags, not internal fields.
METHOD_OPTION_FLAGS: Dict[str, Dict[str, str]] = {}


# Fields outside the LIMITS tables that one flag sets to the field's own value. The method and
# its head are not among them: --method ldam_drw sets method 'erm' with an LDAM loss, --use_norm
# True sets head 'normed', so messages name those fields as they are stored.
FIELD_FLAGS = {"dataset": "--dataset", "arch": "--arch", "train_aug": "--aug", "sampler": "--sampler",
               "select_on": "--select_on", "pretrained_model": "--pretrained_model", "unlabeled": "--unlabeled",
               "method_options.loss": "--loss_type", "method_options.train_rule": "--train_rule",
               "optim.cosine": "--cos", "optim.milestones": "--schedule", "optim.nesterov": "--nesterov"}


def flag_of(method: str, field: str) -> str:
    """The flag behind a dotted config field (``method_options.threshold`` -> ``--lambda_init`` for
    LCSL, ``optim.lr`` -> ``--lr``); the field itself where no single flag sets it."""
    group, _, key = field.rpartition(".")
    if group == "method_options" and key in METHOD_OPTION_FLAGS.get(method, {}):
        return METHOD_OPTION_FLAGS[method][key]
    if field in FIELD_FLAGS:
        return FIELD_FLAGS[field]
    if group in ("data", "run"):  # every data and run option is set by the flag of its own name
        flag = f"--{key}"
    else:
        limits = {"optim": OptimConfig.LIMITS, "": TrainConfig.LIMITS}.get(group, {})
        flag = limits.get(key, (None, None))[0]
    return flag or field
