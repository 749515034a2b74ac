"""One self-describing checkpoint format, written atomically, read without running code.

A checkpoint holds everything needed to rebuild and evaluate the model without the command
line (method, model kwargs, dataset description, class counts, config) and everything needed
to continue training exactly (optimiser, scaler, RNG states, epoch, best-so-far records).

Every checkpoint read of the toolkit (``test.py --path``, ``--resume``, ``--pretrained_model``,
``scripts/gen_pseudolabels.py``) goes through ``read_torch_file``, which unpickles with
``torch.load(weights_only=True)``: plain containers, numbers, strings and tensors only, so a
crafted file cannot run code. The toolkit writes nothing else. The only extra types allowed are
the NumPy ones that real files carry: the NumPy RNG state of checkpoints written by earlier
versions of this toolkit and the NumPy scalar ``best_acc1`` of the papers' ``.pth.tar`` files
(``SAFE_NUMPY_GLOBALS``). Anything else stops with one line naming the file, the refused type and
``--trust_checkpoint``, which loads with full pickle for files the user vouches for.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import pickle
import random
import re
import reprlib
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

FORMAT_NAME = "ltkit-checkpoint"
FORMAT_VERSION = 1
# save_atomic writes to "<TEMPORARY_PREFIX><random><TEMPORARY_SUFFIX>" in the target folder and
# renames it; a file named so is never a finished checkpoint (see is_temporary_checkpoint).
TEMPORARY_PREFIX = ".tmp-"
TEMPORARY_SUFFIX = ".pth"
TRUST_FLAG = "--trust_checkpoint"


class CheckpointError(RuntimeError):
    """The file is missing, truncated, unsafe or not an ltkit checkpoint; the message says which."""


class UnsafeCheckpointError(CheckpointError):
    """The file needs a type that could run code when loaded, and --trust_checkpoint was not given."""


def is_temporary_checkpoint(name: str) -> bool:
    """Whether a file name (no folder) is a temporary file of save_atomic."""
    return name.startswith(TEMPORARY_PREFIX) and name.endswith(TEMPORARY_SUFFIX)


def _write_failure_cause(error: BaseException, folder: str) -> str:
    """The OS reason behind a failed write. torch's zip writer reports a failed write as
    "enforce fail at inline_container.cc" and keeps the OSError only as the exception context."""
    seen: Optional[BaseException] = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            if seen.errno in (errno.EACCES, errno.EPERM):
                return f"permission denied ({seen.strerror}): is the folder read-only?"
            if seen.errno == errno.EROFS:
                return "the file system is read-only"
            if seen.errno in (errno.ENOSPC, errno.EDQUOT):
                return f"the disk is full ({seen.strerror}): free some space"
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    try:
        if shutil.disk_usage(folder).free < 64 * 1024 * 1024:
            return "the disk is (nearly) full: free some space"
    except OSError:
        pass
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the block to finish, then act as they would have (SIGTERM
    first when both came). Raised inside torch.save they would leave its zip writer
    half-written, which surfaces as a write error ('unexpected pos ...') instead of the
    interruption. Outside the main thread (where handlers cannot be set) the block runs as is."""
    pending: List[int] = []
    previous: Dict[int, Any] = {}
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, lambda number, frame: pending.append(number))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(number, handler)
        if pending:
            number = signal.SIGTERM if signal.SIGTERM in pending else pending[0]
            handler = previous[number]
            if callable(handler):
                handler(number, sys._getframe())  # KeyboardInterrupt, or the run's SIGTERM handler
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), number)  # what the signal would have done: end the process


def save_atomic(payload: Dict[str, Any], path: str) -> None:
    """Writes to a temporary file in the same folder, then renames, so a crash never leaves a
    half-written checkpoint where a good one was.

    A failed write (read-only folder, full disk) removes the temporary file, leaves the previous
    checkpoint at ``path`` as it was, and raises ``CheckpointError`` naming the file and the cause.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp_path = None
    try:
        os.makedirs(folder, exist_ok=True)
        with signals_deferred():
            handle, tmp_path = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX, dir=folder)
            with os.fdopen(handle, "wb") as stream:
                torch.save(payload, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp_path, path)
    except (OSError, RuntimeError) as error:
        _discard(tmp_path)
        raise CheckpointError(f"cannot write checkpoint {path}: {_write_failure_cause(error, folder)}; "
                              "the previous checkpoint there (if any) is unchanged") from None
    except BaseException:
        _discard(tmp_path)
        raise


def _discard(tmp_path: Optional[str]) -> None:
    if tmp_path is not None and os.path.exists(tmp_path):
        try:
            os.remove(tmp_path)
        except OSError:
            pass  # the folder turned read-only under us; the next start of the run removes it


# ---- reading ----------------------------------------------------------------------------------
# Whether this invocation was started with --trust_checkpoint. A context variable, set by the entry
# scripts around their work (``trusting``), because the permission belongs to the command, not to
# the run: it is not part of the saved config (a resume must not inherit it) and it has to reach
# every load site (resume, --pretrained_model, the run label) without threading through them.
_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("ltkit_trust_checkpoint", default=False)


def add_trust_argument(parser) -> None:
    """The one definition of --trust_checkpoint, shared by every entry that loads checkpoints."""
    from utils.config import add_bool_flag

    add_bool_flag(parser, TRUST_FLAG, "--trust-checkpoint", default=False,
                  help="load checkpoints that need types outside the safe list with full pickle "
                       "(weights_only=False): this EXECUTES code stored in the file, so use it only "
                       "for files you trust")


@contextlib.contextmanager
def trusting(enabled: bool) -> Iterator[None]:
    """Within this block, checkpoint reads use full pickle when ``enabled`` (--trust_checkpoint)."""
    token = _TRUSTED.set(bool(enabled))
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _numpy_globals() -> List[Tuple[Any, str]]:
    """NumPy array and scalar reconstruction, under the module names of NumPy 1 and 2 (a file
    names the functions as the NumPy that wrote it spelled them), and the dtype classes of the
    numeric dtypes those arrays and scalars use (torch rebuilds a dtype through its class)."""
    # The functions NumPy itself pickles arrays and scalars with, whatever module holds them here.
    reconstruct, scalar = np.zeros(0).__reduce__()[0], np.float64(0).__reduce__()[0]
    entries = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        entries += [(reconstruct, f"{module}._reconstruct"), (scalar, f"{module}.scalar")]
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25; older NumPy rebuilds dtypes without it
    if dtypes is not None:
        for code in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                     "float16", "float32", "float64"):
            kind = type(np.dtype(code))
            entries.append((kind, f"numpy.dtypes.{kind.__name__}"))
    return entries


SAFE_NUMPY_GLOBALS = _numpy_globals()


def _allow_numpy():
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5: plain weights_only only
        return contextlib.nullcontext()
    return torch.serialization.safe_globals(SAFE_NUMPY_GLOBALS)


def object_array_in(value: Any) -> Optional[str]:
    """The shape of the first NumPy array of Python objects inside ``value``, or None.

    The allowed NumPy globals let a file call ``numpy.ndarray(shape, object, buffer=...)``: an
    object array over bytes the file wrote, whose elements are pointers of its choosing; reading
    one (printing it, comparing it) dereferences them. Such an array is found without reading
    its elements (and freeing it is safe: it does not own its buffer). Containers are walked
    once each, so shared or cyclic references cost nothing extra."""
    pending, seen = [value], set()
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                return f"shape {item.shape}"
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending.extend(item)
    return None


def short_description(value: Any, limit: int = 40) -> str:
    """At most ``limit`` characters saying what ``value`` is, for error messages about damaged
    files: bounded in depth and width, so a small file of nested shared lists (whose full str
    would take hours) costs nothing."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 3, 3, 3
_SHORT.maxstring, _SHORT.maxother = 40, 40


def _refused_type(error: BaseException) -> Optional[str]:
    """The type weights_only refused, from torch's message; None when the error is another one."""
    message = str(error)
    if "Weights only load failed" not in message:
        return None
    for pattern in (r"GLOBAL ([\w.]+)", r"but got <class '([^']+)'>"):
        match = re.search(pattern, message)
        if match:
            return match.group(1)
    # Any other weights-only failure (an opcode no torch file holds, as in a JSON or text file)
    # names no type: the file is not a checkpoint, and trusting it would not help.
    return None


def read_torch_file(path: str, what: str = "checkpoint", trust: Optional[bool] = None) -> Any:
    """``torch.load`` on the CPU without running code from the file (see the module docstring).

    ``what`` names the file's role in messages (``--pretrained_model``, ``checkpoint``);
    ``trust`` (default: the --trust_checkpoint of this command) loads with full pickle instead.
    Raises ``CheckpointError`` with one line for a refused type and for an unreadable file.
    """
    trust = _TRUSTED.get() if trust is None else trust
    try:
        # torch warns about legacy (non-zip) files on stderr; the outcome is reported below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if trust:
                return torch.load(path, map_location="cpu", weights_only=False)
            with _allow_numpy():
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        forged = object_array_in(loaded)
        if forged is not None:
            raise UnsafeCheckpointError(
                f"{what} {path}: refused to use an array of Python objects ({forged}): checkpoints hold "
                "numeric arrays only, and this one's elements would be memory addresses written in the file "
                "(a damaged or crafted file)")
        return loaded
    except UnsafeCheckpointError:
        raise
    except Exception as error:  # truncated zip, pickle garbage, wrong file type, refused type
        refused = _refused_type(error) if isinstance(error, pickle.UnpicklingError) else None
        if refused is not None:
            raise UnsafeCheckpointError(
                f"{what} {path}: refused to load '{refused}' (without {TRUST_FLAG} only tensors, plain "
                f"containers and NumPy arrays load, as other types can run code when unpickled); if you "
                f"trust this file, rerun with {TRUST_FLAG}, which executes code from the file") from None
        raise CheckpointError(f"cannot read {what} {path}: it is truncated or not a torch file "
                              f"({type(error).__name__})") from None


def resolve_checkpoint_path(path: str, prefer: str = "best.pth", exact: bool = False) -> str:
    """Accepts a checkpoint file or a run folder (then `prefer`, falling back to last.pth unless
    `exact`: a command that asked for best.pth must not score last.pth without a word)."""
    if os.path.isdir(path):
        found = [name for name in (prefer, "last.pth", "best.pth") if os.path.isfile(os.path.join(path, name))]
        if not found:
            copied = " (it holds results.json: checkpoints stay in the run's own folder)" \
                if os.path.isfile(os.path.join(path, "results.json")) else ""
            raise CheckpointError(f"no checkpoint (best.pth / last.pth) in run folder {path}{copied}")
        if exact and found[0] != prefer:  # only the other one is there: offer it
            raise CheckpointError(f"no {prefer} in run folder {path}: pass the file of another checkpoint, "
                                  f"or --which {'best' if prefer == 'last.pth' else 'last'}")
        return os.path.join(path, found[0])
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str, prefer: str = "best.pth", trust: Optional[bool] = None,
                    exact: bool = False) -> Dict[str, Any]:
    """Loads and validates an ltkit checkpoint on the CPU (``read_torch_file``: no code runs)."""
    path = resolve_checkpoint_path(path, prefer, exact)
    payload = read_torch_file(path, trust=trust)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not an ltkit checkpoint (no '{FORMAT_NAME}' header); "
                              "for foreign weights use --pretrained_model")
    version = payload.get("version", 0)
    if not _is_int(version):
        raise CheckpointError(f"{path} is a damaged ltkit checkpoint: its format version is {version!r}, not a number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {payload['version']}, newer than this "
                              f"code's {FORMAT_VERSION}: update ltkit")
    for field, kind in PAYLOAD_FIELDS.items():
        value = payload.get(field)
        if not (_is_int(value) and value >= 0 if kind is int else isinstance(value, kind)):
            found = "missing" if field not in payload else f"{short_description(value)} ({type(value).__name__})"
            raise CheckpointError(f"{path} is a damaged ltkit checkpoint: its '{field}' is {found}, not "
                                  f"{'a count' if kind is int else 'a ' + kind.__name__}")
    payload["path"] = path
    return payload


# What every ltkit checkpoint holds (build_payload), checked on load so that a damaged or hand-edited
# file is named as such instead of failing deep inside whatever reads the field first.
PAYLOAD_FIELDS = {"method": str, "method_kwargs": dict, "model_kwargs": dict, "dataset": dict, "config": dict,
                  "state_dict": dict, "epoch": int}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch (CPU and every CUDA device) generator states, as plain containers
    and tensors so that the checkpoint loads with weights_only=True (NumPy's key as a list)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {"key": [int(k) for k in numpy_state["state"]["key"]],
                            "pos": int(numpy_state["state"]["pos"])}
    numpy_state["has_gauss"], numpy_state["gauss"] = int(numpy_state["has_gauss"]), float(numpy_state["gauss"])
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Takes both layouts: a dict with the key as a list (this version) and NumPy's legacy tuple
    with the key as an array (checkpoints of earlier versions)."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = {**numpy_state, "state": {"key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
                                                "pos": int(numpy_state["state"]["pos"])}}
    np.random.set_state(numpy_state)
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
                  rng: Optional[Dict[str, Any]] = None, self_supervised: bool = False) -> Dict[str, Any]:
    """The one checkpoint layout; `epoch` counts completed epochs; `self_supervised` is the
    method's own declaration (Method.self_supervised), read by ``is_self_supervised``."""
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
        "self_supervised": bool(self_supervised),
        "git_commit": git_commit(),
    }


# Checkpoints written before the methods declared it name their self-supervised method instead.
_SELF_SUPERVISED_BEFORE_DECLARED = ("rotation", "moco")


def is_self_supervised(payload: Dict[str, Any]) -> bool:
    """Whether a loaded checkpoint holds self-supervised pre-training (no trustworthy classifier
    of the dataset's classes; a run starting from it is "+ SSP")."""
    if "self_supervised" in payload:
        return bool(payload["self_supervised"])
    return payload.get("method") in _SELF_SUPERVISED_BEFORE_DECLARED
