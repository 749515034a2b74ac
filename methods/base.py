"""The contract between a training method and the engine.

A method is an ``nn.Module`` that owns the network and any state it needs (queues, centroids,
teachers, class priors) as sub-modules or buffers, so checkpoints and ``.to(device)`` cover it.
The engine never branches on the method: it calls the hooks below and logs whatever named loss
parts ``training_step`` returns.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from utils.registry import Registry

METHODS = Registry("method")

StepOutput = Dict[str, Any]  # {'loss': scalar tensor, 'logits': (B, C) or None, 'parts': {name: scalar}}


class Method(nn.Module):
    """Base class: plain supervised prediction with the wrapped network.

    Subclasses set ``name`` (the registry key) and implement ``training_step``. ``init_kwargs``
    records the constructor's keyword arguments so a checkpoint can rebuild the method.
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

    def __init__(self, model: nn.Module, class_counts: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("class_counts", torch.as_tensor(list(class_counts), dtype=torch.long))
        self.init_kwargs: Dict[str, Any] = {}
        # What the step calls: the model itself, or its DataParallel / DDP wrapper. Kept outside
        # the module tree so the state dict holds the unwrapped weights only.
        object.__setattr__(self, "_network", None)
        object.__setattr__(self, "_eval_network", None)  # what predict() calls, see wrap()

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

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for evaluation; runs through the DataParallel wrapper when there is one."""
        net = self._eval_network if self._eval_network is not None else self.classifier()
        return net(images)


# ---- command line ------------------------------------------------------------------------------
class MethodChoice:
    """What a method's command-line module decides from the parsed flags.

    ``defaults`` fills the optimisation flags the user left out (lr, weight_decay, epochs,
    warmup_epochs, cos, schedule, lr_gamma, batch_size, aug, seed), so an omitted flag means what
    it meant in the paper whose method this is.
    """

    def __init__(self, method: str, method_options: Dict[str, Any], label: str, defaults: Dict[str, Any],
                 head: str = "linear", head_scale: Optional[float] = None, sampler: Optional[str] = None,
                 sampler_options: Optional[Dict[str, Any]] = None, drop_last: bool = False,
                 aug_options: Optional[Dict[str, Any]] = None):
        self.method, self.method_options, self.label, self.defaults = method, method_options, label, defaults
        self.head, self.head_scale, self.sampler = head, head_scale, sampler
        self.sampler_options = sampler_options or {}
        self.drop_last = drop_last
        self.aug_options = aug_options or {}


# Command-line modules of the methods main.py exposes. Each entry is an object (usually a module)
# with `names` (its --method values), `add_arguments(parser)` and `choose(args) -> MethodChoice`.
METHOD_CLIS = Registry("method command line")
