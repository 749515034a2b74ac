"""One self-describing checkpoint format, written atomically.

A checkpoint holds everything needed to rebuild and evaluate the model without the command
line (method, model kwargs, dataset description, class counts, config) and everything needed
to continue training exactly (optimiser, scaler, RNG states, epoch, best-so-far records).
"""
from __future__ import annotations

import os
import random
import subprocess
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch

FORMAT_NAME = "ltkit-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """The file is missing, truncated or not an ltkit checkpoint; the message says which."""


def save_atomic(payload: Dict[str, Any], path: str) -> None:
    """Writes to a temporary file in the same folder, then renames, so a crash never leaves a
    half-written checkpoint where a good one was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def resolve_checkpoint_path(path: str, prefer: str = "best.pth") -> str:
    """Accepts a checkpoint file or a run folder (then `prefer`, falling back to last.pth)."""
    if os.path.isdir(path):
        for name in (prefer, "last.pth", "best.pth"):
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise CheckpointError(f"no checkpoint (best.pth / last.pth) in run folder {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str, prefer: str = "best.pth") -> Dict[str, Any]:
    """Loads and validates an ltkit checkpoint on the CPU."""
    path = resolve_checkpoint_path(path, prefer)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated zip, pickle garbage, wrong file type
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or not a torch "
                              f"file ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not an ltkit checkpoint (no '{FORMAT_NAME}' header); "
                              "for foreign weights use --pretrained_model")
    if payload.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload['version']}, newer than this "
                              f"code's {FORMAT_VERSION}: update ltkit")
    payload["path"] = path
    return payload


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def git_commit(default: str = "unknown") -> str:
    """The code version that produced a result (short SHA, '+dirty' when uncommitted)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return default
    return (sha + ("+dirty" if dirty else "")) if sha else default


def build_payload(*, method_name: str, method_kwargs: Dict[str, Any], model_kwargs: Dict[str, Any],
                  dataset: Dict[str, Any], config: Dict[str, Any], state_dict: Dict[str, Any],
                  epoch: int, optimizer: Optional[Dict[str, Any]] = None,
                  scaler: Optional[Dict[str, Any]] = None, records: Optional[Dict[str, Any]] = None,
                  rng: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The one checkpoint layout; `epoch` counts completed epochs."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "method": method_name,
        "method_kwargs": method_kwargs,
        "model_kwargs": model_kwargs,
        "dataset": dataset,
        "config": config,
        "state_dict": state_dict,
        "epoch": epoch,
        "optimizer": optimizer,
        "scaler": scaler,
        "records": records or {},
        "rng": rng,
        "git_commit": git_commit(),
    }
