"""The contract between a training method and the engine.

A method is an ``nn.Module`` that owns the network and any state it needs (queues, centroids,
teachers, class priors) as sub-modules or buffers, so checkpoints and ``.to(device)`` cover it.
The engine never branches on the method: it calls the hooks below and logs whatever named loss
parts ``training_step`` returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Type

import torch
import torch.nn as nn

from methods.options import MethodOptions
from utils.config import ConfigError, Recipe
from utils.registry import Registry

METHODS = Registry("method")

StepOutput = Dict[str, Any]  # {'loss': scalar tensor, 'logits': (B, C) or None, 'parts': {name: scalar}}


class Method(nn.Module):
    """Base class: plain supervised prediction with the wrapped network.

    Subclasses set ``name`` (the registry key) and ``Options`` (their hyper-parameters, see
    methods/options.py) and implement ``training_step``. The constructor takes the options as
    keyword arguments; ``init_kwargs`` gives them back, so a checkpoint can rebuild the method.
    """

    name = "method"
    # Names of extra per-view recipes the method wants from the data pipeline, e.g. two views.
    num_views = 1
    # Pre-training without labels (rotation, MoCo): its checkpoint starts a "+ SSP" run and is
    # never a classifier to pseudo-label with.
    self_supervised = False
    # The summary key (utils.metrics.summarize) whose improvement on the selection split
    # (--select_on) makes an epoch the run's best.pth.
    selection_metric = "top1"
    # Whether the tau-normalised classifier (--tau_norm) keeps the trained bias: Kang et al.'s
    # tau-normalisation drops it; a method whose paper normalises its layer in place keeps it.
    tau_norm_keeps_bias = False
    # Whether --cos keeps the warm-up formula's cosine, cos(pi (e - W + 1) / (E - W + 1)), also
    # when --warmup_epochs is 0 (LCSL's and BCCL's adjust_learning_rate); otherwise a run without
    # warm-up takes MoCo's and the decoupling code's cos(pi e / E), which starts at the base lr.
    warmup_cosine_without_warmup = False
    Options: Type[MethodOptions] = MethodOptions

    def __init__(self, model: nn.Module, class_counts: Sequence[int], **options: Any):
        super().__init__()
        self.options = self.Options(**options)  # validated here, whoever builds the method
        self.model = model
        self.register_buffer("class_counts", torch.as_tensor(list(class_counts), dtype=torch.long))
        # What the step calls: the model itself, or its DataParallel / DDP wrapper. Kept outside
        # the module tree so the state dict holds the unwrapped weights only.
        object.__setattr__(self, "_network", None)
        object.__setattr__(self, "_eval_network", None)  # what predict() calls, see wrap()

    @property
    def init_kwargs(self) -> Dict[str, Any]:
        return self.options.as_kwargs()

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    # ---- parallelism -------------------------------------------------------------------------
    def trainable_network(self) -> nn.Module:
        """The module whose forward pass carries gradients (wrapped by DataParallel / DDP)."""
        return self.model

    def wrap(self, wrap_train: Callable[[nn.Module], nn.Module],
             wrap_eval: Callable[[nn.Module], nn.Module]) -> None:
        """`wrap_train` gives DDP / DataParallel / compile for the trained network; `wrap_eval`
        gives DataParallel (or nothing) for forward-only networks such as a frozen teacher, which
        DDP cannot wrap. Subclasses with such networks extend this."""
        object.__setattr__(self, "_network", wrap_train(self.trainable_network()))
        # Evaluation splits batches over DataParallel's GPUs too. It never goes through DDP
        # (evaluation shards may differ in length between ranks, and DDP's forward would wait for
        # the others) nor torch.compile (evaluation batches differ in size and mode).
        classifier = self.classifier()
        if isinstance(self._network, nn.DataParallel) and classifier is self.trainable_network():
            object.__setattr__(self, "_eval_network", self._network)
        else:
            object.__setattr__(self, "_eval_network", wrap_eval(classifier))

    def network(self, *args, **kwargs):
        net = self._network if self._network is not None else self.trainable_network()
        return net(*args, **kwargs)

    # ---- optimisation --------------------------------------------------------------------------
    def optim_parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.trainable_network().parameters() if p.requires_grad]

    def training_step(self, images, targets: torch.Tensor, epoch: int,
                      indices: Optional[torch.Tensor] = None) -> StepOutput:
        raise NotImplementedError

    # ---- hooks -----------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (re-weighting schedules, teacher normalisation)."""

    def on_epoch_end(self, epoch: int, evaluations: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
        """Called after each evaluation with the summaries of the splits scored this epoch
        ('val' when there is one; 'test' unless --test_interval skipped it); may return records."""
        return {}

    def epoch_statistics(self) -> Dict[str, torch.Tensor]:
        """Per-class vectors (C values each) describing the epoch just trained, summed over DDP
        ranks; the engine writes them to the run's per_class.csv and tensorboard."""
        return {}

    # ---- evaluation -------------------------------------------------------------------------------
    def classifier(self) -> nn.Module:
        """The image -> logits network evaluated by test.py (unwrapped)."""
        return self.model

    @property
    def logit_scale(self) -> float:
        """The factor between the classifier's output and the logits the method trains the
        softmax of (LDAM's s = 30 on its cosine head, applied inside the loss). Evaluation
        multiplies by it: the argmax is the same either way, but probabilities (ECE, NLL,
        pseudo-label confidences) and post-hoc logit adjustment must see the trained scale."""
        return 1.0

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation; runs through the DataParallel wrapper when there is one."""
        net = self._eval_network if self._eval_network is not None else self.classifier()
        logits = net(images)
        # In float32: a product rounded to bf16 could tie two logits that were not tied.
        return logits if self.logit_scale == 1.0 else logits.float() * self.logit_scale


# ---- command line ------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodChoice:
    """What a method's command line decides from the parsed flags."""

    method: str  # METHODS name
    options: MethodOptions  # the method's hyper-parameters, validated
    label: str  # readable part of the run folder's name
    recipe: Recipe  # what the optimisation flags the user left out mean
    head: str = "linear"
    head_scale: Optional[float] = None
    sampler: Optional[str] = None
    sampler_options: Dict[str, Any] = field(default_factory=dict)
    drop_last: bool = False
    aug_options: Dict[str, Any] = field(default_factory=dict)


class MethodCommandLine:
    """The command line of the methods main.py exposes: one instance per method module,
    registered in ``METHOD_CLIS``.

    ``names`` are its --method values; its flags are its ``Options``' flags (plus any
    ``add_extra_arguments`` declares), in one argument group; ``recipe`` fills the optimisation
    flags left out; ``choose`` turns parsed flags into a ``MethodChoice``.
    """

    names: Tuple[str, ...] = ()
    title = ""  # the --help group
    Options: Type[MethodOptions] = MethodOptions
    recipe: Recipe
    # Datasets whose paper recipe differs from ``recipe`` (listed in --help as "<method> on <dataset>").
    dataset_recipes: Dict[str, Recipe] = {}
    # The re-balancing flags (--loss_type, --train_rule, --sampler) it reads; main.py refuses
    # them for the other methods rather than ignore them.
    erm_flags: Tuple[str, ...] = ()

    def claims(self, args) -> bool:
        return args.method in self.names

    def add_arguments(self, parser) -> None:
        group = parser.add_argument_group(self.title)
        self.Options.add_arguments(group)
        self.add_extra_arguments(group)

    def add_extra_arguments(self, group) -> None:
        """Flags the method reads that are not its own options (loss or sampler settings)."""

    def choose(self, args) -> MethodChoice:
        raise NotImplementedError

    def refuse_cosine_head(self, args, why: str) -> None:
        """For methods that train a linear classifier: --use_norm / --head_scale are errors."""
        if args.use_norm or args.head_scale is not None:
            raise ConfigError(f"--method {self.names[0]} {why}: drop --use_norm / --head_scale")


# Command-line modules of the methods main.py exposes, name -> MethodCommandLine.
METHOD_CLIS = Registry("method command line")
