"""Training a built run: ``train(run) -> records``, the engine's loop with the run's checkpoints.

Checkpoints are self-describing (utils/checkpoint.py): the method and its options, the model,
the dataset description, the config, the weights, the optimiser, the scaler and the records, so
test.py, --resume and --pretrained_model need nothing else. A checkpoint never holds NaN/inf
weights: the run stops first and the files already written stay its last good state.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List

import torch

from utils import dist
from utils.checkpoint import build_payload, capture_rng_state, save_atomic
from utils.config import TrainConfig
from utils.engine import NonFiniteLossError, fit


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
    # Without a checkpoint the run's files are removed as it stops, so the same folder is free again.
    raise DivergedError(f"training diverged in epoch {epoch}: {len(bad) or 'some'} parameter/buffer tensor(s) "
                        f"hold NaN/inf{first}; stopped before writing {name}, {where}. Start again with a "
                        f"lower --lr (this run: {config.optim.lr:g})" + (" in a new run folder" if kept else ""))


def train(run) -> Dict[str, Any]:
    """Trains `run` (a utils.run.Run) to its last epoch, continuing its resumed checkpoint, and
    returns the engine's records (last, best_on_test, best_on_val, method records)."""
    config, method, ctx = run.config, run.method, run.ctx
    dataset_info = run.describe_dataset()

    def save_checkpoint(name, epoch, optimizer, scaler, records):
        state = method.state_dict()
        check_finite_state(state, epoch, name, run.run_dir, config, ctx.device)  # every rank, together
        if not ctx.is_main:
            return
        save_atomic(build_payload(
            method_name=config.method, method_kwargs=method.init_kwargs, model_kwargs=run.model_kwargs,
            dataset=dataset_info, config=config.to_dict(), state_dict=state, epoch=epoch,
            optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), records=records,
            rng=capture_rng_state(), self_supervised=method.self_supervised), os.path.join(run.run_dir, name))

    # The generators need no restoring on resume: fit re-seeds every rank's from (seed, rank,
    # epoch) at each epoch start, so a resumed run draws what the uninterrupted one drew.
    return fit(config, method, run.data, ctx, run.loaders, run.inputs, run.logger, save_checkpoint,
               resume=run.resume)
