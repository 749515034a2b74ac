"""Backbone initialisation from a pre-trained checkpoint (``--pretrained_model``).

The self-supervised pre-training (SSP) of Yang & Xu, "Rethinking the Value of Labels for
Improving Class-Imbalanced Learning" (NeurIPS 2020), Sec. 4: stage 1 learns a backbone without
labels (rotation, MoCo v2), stage 2 trains any long-tailed method from it with a fresh classifier.
Also the first half of decoupled training (cRT), whose backbone comes from a finished run.

Accepted files: an ltkit checkpoint of any method (its ``model.backbone`` is taken), a raw state
dict, or a dict holding one under ``state_dict`` (MoCo and the paper's checkpoints) or
``state_dict_best['feat_model']`` (the paper's ImageNet-LT stage checkpoints), each read without
running code from it (``utils.checkpoint.read_torch_file``; MoCo's and the papers' ``.pth.tar``
files need no --trust_checkpoint). Wrapper prefixes
(``module.`` from DataParallel / DDP, ``_orig_mod.`` from torch.compile) are stripped and the
sub-tree of the backbone is selected (``encoder_q.`` of MoCo, ``model.`` / ``backbone.`` of
ltkit), so the keys become the backbone's own (torchvision's names for ResNet-50).

The load must be complete: every backbone tensor must come from the file with its shape, and the
only tensors of the file left over must be classifier / projection ones (``fc``, ``linear``,
``head``, ``classifier``, ``projector``), so the network's only untouched parameters are exactly
its classifier head. The paper's code loaded with ``strict=False`` and, on DataParallel keys,
silently loaded nothing (docs/semi_self.md#loading-pre-trained-weights); here that is an error.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from utils.checkpoint import (FORMAT_NAME, CheckpointError, UnsafeCheckpointError, is_self_supervised, read_torch_file,
                              resolve_checkpoint_path)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Sub-trees that hold the backbone, tried in this order: MoCo's query encoder, an ltkit method's
# network, an ltkit Classifier's trunk, the paper's ImageNet-LT stage model.
SUBTREE_PREFIXES = ("encoder_q.", "model.", "backbone.", "feat_model.")
# Top-level names of classifier / projection layers, which stage 2 re-initialises.
CLASSIFIER_NAMES = ("fc", "linear", "head", "classifier", "projector")


def is_self_supervised_start(path: str, depth: int = 0) -> bool:
    """Whether a ``--pretrained_model`` start carries self-supervised pre-training: an ltkit
    rotation / MoCo checkpoint, an ltkit run descended from one through its own
    ``--pretrained_model`` (cRT on a CE+SSP run), or a foreign file, taken to be the papers' MoCo or
    stage checkpoints. cRT on a plain supervised run is not SSP, and its run is not labelled so.
    A start that can no longer be read (a resumed run whose stage-1 folder moved) counts as SSP:
    loading it reports the problem when it is actually needed. A file refused as unsafe stops here,
    before anything is written (this runs before the run folder is made)."""
    try:
        payload = read_torch_file(resolve_checkpoint_path(path, prefer="last.pth"), "--pretrained_model")
    except UnsafeCheckpointError:
        raise
    except CheckpointError:
        return True
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT_NAME):
        return True
    if is_self_supervised(payload):
        return True
    parent = _field(payload, "config", "pretrained_model")
    return isinstance(parent, str) and bool(parent) and (depth >= 8 or is_self_supervised_start(parent, depth + 1))


def _field(payload: Mapping[str, Any], *keys: str) -> Any:
    """payload[k1][k2]... or None where a level is missing or not a dict (a damaged header)."""
    value: Any = payload
    for key in keys:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def training_progress(payload: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
    """(completed epochs, planned epochs) of an ltkit checkpoint, None where either is unknown."""
    done, planned = payload.get("epoch"), _field(payload, "config", "optim", "epochs")
    if isinstance(done, int) and isinstance(planned, int):
        return done, planned
    return None


def read_weights(path: str) -> Tuple[Dict[str, torch.Tensor], str, Optional[Tuple[int, int]]]:
    """The tensors of a checkpoint file (or run folder, whose last.pth is used), what it was, and
    for an ltkit checkpoint its (completed, planned) epochs."""
    path = resolve_checkpoint_path(path, prefer="last.pth")
    payload = read_torch_file(path, "--pretrained_model")
    kind, progress = "state dict", None
    if isinstance(payload, dict) and payload.get("format") == FORMAT_NAME:
        progress = training_progress(payload)
        method = payload.get("method")
        payload, kind = payload.get("state_dict"), f"ltkit {method if isinstance(method, str) else 'unnamed'} checkpoint"
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict_best"), dict):
        payload, kind = payload["state_dict_best"].get("feat_model", {}), "stage checkpoint (feat_model)"
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload, kind = payload["state_dict"], "checkpoint with a state_dict"
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"--pretrained_model {path}: no state dict inside ({type(payload).__name__})")
    tensors = {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    return tensors, kind, progress


def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def backbone_keys(state: Mapping[str, torch.Tensor], target_keys: List[str]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Renames checkpoint keys to the backbone's: strips wrappers, then narrows to the backbone's
    sub-tree while one is present (a prefix the backbone itself uses is never stripped).

    Returns the renamed tensors and the prefixes that were selected, for the log line.
    """
    state = {_strip_wrappers(k): v for k, v in state.items()}
    selected: List[str] = []
    narrowed = True
    while narrowed:
        narrowed = False
        for prefix in SUBTREE_PREFIXES:
            if any(k.startswith(prefix) for k in target_keys):
                continue
            if any(k.startswith(prefix) for k in state):
                state = {_strip_wrappers(k[len(prefix):]): v for k, v in state.items() if k.startswith(prefix)}
                selected.append(prefix)
                narrowed = True
                break
    return state, selected


def _examples(keys, count: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:count]) + (" ..." if len(keys) > count else "")


def load_pretrained(method, path: str, logger) -> Dict[str, Any]:
    """Loads ``path`` into ``method.model.backbone``; the classifier head keeps its fresh init.

    Raises ``CheckpointError`` when nothing matches, a shape differs, a backbone tensor is
    missing, or the file holds tensors that are neither backbone nor classifier / projection.
    Returns counts for the caller: loaded, ignored classifier tensors, head tensors left as built.
    """
    try:
        resolved = resolve_checkpoint_path(path, prefer="last.pth")
    except CheckpointError as error:
        raise CheckpointError(f"--pretrained_model: {error}") from None
    run_dir = getattr(logger, "run_dir", None)
    if run_dir and os.path.abspath(os.path.dirname(resolved)) == os.path.abspath(run_dir):
        raise CheckpointError(f"--pretrained_model {path} lies in this run's own folder {run_dir}: its "
                              "checkpoints would be overwritten; write the run elsewhere (--out_dir)")
    backbone = method.model.backbone
    target = backbone.state_dict()
    raw, kind, progress = read_weights(resolved)
    unfinished = progress is not None and progress[0] < progress[1]
    if unfinished and os.path.isdir(path):
        # A run folder stands for its finished result; a stage-1 run cut off by a time limit would
        # otherwise hand stage 2 a half-trained backbone without a word.
        raise CheckpointError(f"--pretrained_model {path}: that run stopped after epoch {progress[0]} of "
                              f"{progress[1]}; finish it first (re-run its command with --resume auto), or "
                              f"pass the file {resolved} to start from this epoch on purpose")
    source, selected = backbone_keys(raw, list(target))
    arch = type(backbone).__name__
    matched = [k for k in source if k in target]
    if not matched:
        raise CheckpointError(
            f"--pretrained_model {resolved}: none of its {len(raw)} tensors matches the {arch} backbone "
            f"(after stripping prefixes its keys look like '{_examples(source)}'; the backbone expects "
            f"'{_examples(target)}'); is it a checkpoint of another --arch?")
    for key in matched:
        if source[key].shape != target[key].shape:
            raise CheckpointError(f"--pretrained_model {resolved}: {key} has shape {tuple(source[key].shape)} "
                                  f"there but {tuple(target[key].shape)} in the {arch} backbone (another --arch?)")
    # BatchNorm's step counter is absent from some older files and never used by training here.
    missing = [k for k in target if k not in source and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"--pretrained_model {resolved}: {len(missing)} of the {arch} backbone's tensors "
                              f"are not in it ({_examples(missing)}); a partial load would train a half-random "
                              "network")
    leftover = [k for k in source if k not in target]
    classifier = [k for k in leftover if k.split(".", 1)[0] in CLASSIFIER_NAMES]
    unexpected = sorted(set(leftover) - set(classifier))
    if unexpected:
        raise CheckpointError(f"--pretrained_model {resolved}: {len(unexpected)} tensors are neither backbone nor "
                              f"classifier / projection ({_examples(unexpected)}); is it a checkpoint of another "
                              "--arch?")
    result = backbone.load_state_dict({k: source[k] for k in matched}, strict=False)
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    head_tensors = len(method.model.head.state_dict())
    logger.info(f"pretrained: loaded {len(matched)} tensors into the {arch} backbone from {resolved} ({kind}"
                + (f", sub-tree {''.join(selected)}" if selected else "") + f"); ignored {len(classifier)} "
                f"classifier / projection tensors; the classifier head ({head_tensors} tensors) is newly initialised")
    if unfinished:
        logger.info(f"pretrained: note that {resolved} is from epoch {progress[0]} of its run's {progress[1]}")
    return {"loaded": len(matched), "ignored": len(classifier), "head": head_tensors}
