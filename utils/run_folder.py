"""One run per folder: where a command trains, and whether it may.

A folder that holds a run (any of RUN_MARKERS) is only ever continued (--resume), skipped
(--resume auto on a finished run) or emptied on request (--overwrite); every decision is made
before anything is written, so a refused command leaves the folder exactly as it was. While a run
is alive it holds an exclusive lock on the folder, so a second process cannot share it.
"""
from __future__ import annotations

import dataclasses
import fcntl
import glob
import itertools
import json
import os
import shlex
import shutil
import socket
import sys
import time
import zipfile
from typing import Any, Dict, List, Optional, Tuple

from utils.checkpoint import is_temporary_checkpoint, load_checkpoint, resolve_checkpoint_path
from utils.config import ConfigError, TrainConfig, flag_of
from utils.logger import PER_CLASS_FILE

# Any of these in a folder means a run was started there.
RUN_MARKERS = ("config.json", "log.txt", "last.pth", "best.pth", "results.json")
# Everything a run writes into its folder: what --overwrite deletes (other files are left alone).
RUN_OUTPUTS = RUN_MARKERS + (PER_CLASS_FILE, "tb")
# flock target: the kernel drops the lock when its process exits, however it exits (kill -9
# included), so a dead run never leaves its folder locked. The file itself is never deleted:
# unlinking a lock file lets two processes lock two different inodes of one name.
LOCK_FILE = ".run.lock"


def run_markers(run_dir: str) -> List[str]:
    """The files in `run_dir` that show a run was started there (empty: the folder is free)."""
    return [name for name in RUN_MARKERS if os.path.exists(os.path.join(run_dir, name))]


def _is_temporary(name: str) -> bool:
    # Checkpoints (save_atomic) and JSON / CSV files (logger.write_json, forget_per_class_after as
    # <name>.tmp) are written under a temporary name and renamed: a kill in between leaves them.
    return is_temporary_checkpoint(name) or name in {f"{n}.tmp" for n in RUN_OUTPUTS}


def remove_orphaned_temporaries(run_dir: str) -> List[str]:
    """Deletes half-written files that an interrupted write left; only call it while holding the
    folder's lock, when no other process can be writing them. Returns the names removed."""
    removed = []
    for name in sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []:
        path = os.path.join(run_dir, name)
        if _is_temporary(name) and os.path.isfile(path):
            os.remove(path)
            removed.append(name)
    return removed


def discard_run_outputs(run_dir: str) -> List[str]:
    """--overwrite: deletes what an earlier run wrote into `run_dir` (checkpoints, results, log,
    curves, temporary files); anything else in the folder stays. Returns the names removed."""
    removed = remove_orphaned_temporaries(run_dir)
    for name in RUN_OUTPUTS:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
            removed.append(name + "/")
        elif os.path.lexists(path):  # a file, or a link (to a folder too): the link goes, never its target
            os.remove(path)
            removed.append(name)
    return removed


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def lock_holder(run_dir: str) -> Optional[str]:
    """Who holds `run_dir`'s lock ('process 123 on host h since ...'), None when nobody does.
    Changes nothing on disk, so a refused command leaves the folder exactly as it was."""
    path = os.path.join(run_dir, LOCK_FILE)
    try:
        # Read-write (never created here): on NFS an exclusive flock needs a writable descriptor.
        descriptor = os.open(path, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return None  # no lock file yet, or no folder at all (creating it fails with one line later)
    except OSError:
        # A read-only file system (EROFS) or another user's run (EACCES): no process of ours can
        # lock it, so none is running here; a command that must write there fails with one line
        # when it tries to lock it.
        return None
    try:
        if _try_lock(descriptor):
            return None  # released when the descriptor closes below
        with open(path) as stream:
            return stream.read().strip() or "another process"
    finally:
        os.close(descriptor)


class RunFolderLock:
    """An exclusive flock on ``<run>/.run.lock`` for as long as this object (or its process)
    lives; the file names the holder for the refusal message of the next process."""

    def __init__(self, run_dir: str, created: bool = False):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.created = created  # the claim made the folder (it did not exist before this command)
        self.preexisting: frozenset = frozenset()  # what the folder held once claimed and cleared
        self._descriptor: Optional[int] = None

    def acquire(self) -> None:
        """Takes the lock, or raises ConfigError naming the process that holds it."""
        os.makedirs(self.run_dir, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_lock(descriptor):
            os.close(descriptor)
            raise ConfigError(busy_message(self.run_dir, lock_holder(self.run_dir) or "another process"))
        os.ftruncate(descriptor, 0)
        holder = f"process {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.write(descriptor, holder.encode() + b"\n")
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the last descriptor drops the flock
            self._descriptor = None


def abandon_unstarted_run(lock: RunFolderLock) -> bool:
    """After a run failed before its first checkpoint (a refusal found while building its loaders,
    a bad image or a non-finite loss in epoch 1): removes what it wrote, so the folder is free
    for the corrected command, not a half-made run that --out_dir then refuses. The whole folder
    goes when the claim made it; otherwise only the run files this command created, so nothing
    that was there before it (an earlier attempt's log, a tb/ folder of the user's) is lost. A
    folder holding a checkpoint is left as it is (a run continued from a copied checkpoint keeps
    everything it found: it was all there before). Call while the lock is held and the log
    closed; returns whether anything was removed."""
    run_dir = lock.run_dir
    checkpointed = any(os.path.exists(os.path.join(run_dir, name)) for name in ("last.pth", "best.pth", "results.json"))
    if checkpointed:
        return False
    if lock.created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return True
    removed = False
    for name in RUN_OUTPUTS:
        path = os.path.join(run_dir, name)
        if name in lock.preexisting or not os.path.lexists(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed = True
    return removed


def busy_message(run_dir: str, holder: str) -> str:
    return (f"run folder {run_dir} is in use by {holder}: wait for that run to end (or stop it), "
            "or choose another --out_dir")


def default_run_name(config: TrainConfig, label: str) -> str:
    ratio = round(1 / config.data.imb_factor) if config.data.imb_factor > 0 else 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{config.dataset}_{config.data.imb_type}{ratio}_{label}_{config.arch}_s{config.run.seed}_{stamp}"


# Fields a continuation may change: where files are, how the run executes and reports, and the
# number of epochs (to extend a run). Everything else must equal the checkpoint's config.
RESUMABLE_CHANGES = {
    "run": {"resume", "gpu", "workers", "progress", "out_dir", "root_log", "log_interval", "eval_interval",
            "test_interval", "limit_batches", "compile", "compile_mode", "tta_flip", "overwrite"},
    "data": {"data_root", "split_dir", "train_list", "val_list", "test_list", "download"},
    "optim": {"epochs"},
    "": {"eval_posthoc_tau", "eval_tau_norm", "script"},
}


def _flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    # Compared field by field, so a field a newer version added (absent from an older run's
    # config.json, e.g. an option a method now declares with the value it always used) matches.
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key in ("run", "data", "optim", "method_options"):
            flat.update(_flatten(value, key))
        else:
            flat[(prefix, key)] = value
    return flat


def config_differences(config: TrainConfig, saved: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """(field, saved value, this command's value) for every field a continuation may not change."""
    return _differences(config.method, config.to_dict(), saved)


def _as_recorded_today(saved: Dict[str, Any]) -> Dict[str, Any]:
    """A saved configuration in today's terms: a pseudo-labelled run from before
    --imb_factor_unlabel was written into the config saved null for "the same as --imb_factor"."""
    data = saved.get("data")
    if saved.get("unlabeled") and saved.get("imb_factor_unlabel") is None and isinstance(data, dict):
        return {**saved, "imb_factor_unlabel": data.get("imb_factor")}
    return saved


def _differences(method: str, current: Dict[str, Any], saved: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    saved_flat = _flatten(json.loads(json.dumps(_as_recorded_today(saved))))
    differences = []
    for (group, key), value in _flatten(json.loads(json.dumps(current))).items():
        if key in RESUMABLE_CHANGES.get(group, ()) or saved_flat.get((group, key), value) == value:
            continue
        differences.append((flag_of(method, f"{group}.{key}" if group else key), saved_flat[(group, key)], value))
    return differences


def other_settings_error(path: str, differences: List[Tuple[str, Any, Any]]) -> ConfigError:
    """The refusal of a continuation whose command differs from the checkpoint's settings (the
    checkpoint being its folder's run: check_checkpoint_is_folders_run)."""
    return ConfigError(f"--resume {path}: the checkpoint was trained with other settings "
                       f"({describe_differences(differences)}); continue a run with its own flags"
                       + started_as_hint(os.path.dirname(path) or "."))


def started_as(config: TrainConfig) -> Dict[str, str]:
    """config.json's record of the command line that started a run and the folder it ran in
    (relative paths are relative to it), when this process is that entry script (not a test or
    a library call), so a refusal can show the flags to repeat."""
    if os.path.basename(sys.argv[0]) != config.script:
        return {}
    launcher = ["python"]
    if os.environ.get("LOCAL_WORLD_SIZE") and os.environ.get("WORLD_SIZE"):  # started by torchrun
        per_node, world = int(os.environ["LOCAL_WORLD_SIZE"]), int(os.environ["WORLD_SIZE"])
        launcher = ["torchrun", f"--nproc_per_node={per_node}"] + ([f"--nnodes={world // per_node}"]
                                                                 if world > per_node else [])
    return {"command": shlex.join([*launcher, *sys.argv]), "command_dir": os.getcwd()}


def config_with_new_epochs(saved: Dict[str, Any], epochs: int, after_epoch: int,
                           command: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """config.json for a continuation that changed --epochs (a finished run extended, or a
    stopped one given another length): the new number, with every earlier one kept under
    ``epochs_changed`` (what it was, from which epoch on, the command that changed it), so the
    file says how long the run trains and nothing it said before is lost. None when the number
    is the same, or the file has no ``optim.epochs`` to update."""
    optim = saved.get("optim")
    if not isinstance(optim, dict) or not isinstance(optim.get("epochs"), int) or optim["epochs"] == epochs:
        return None
    change = {"from": optim["epochs"], "to": epochs, "after_epoch": after_epoch,
              "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if command:
        change["command"] = command
    history = saved.get("epochs_changed")
    return {**saved, "optim": {**optim, "epochs": epochs},
            "epochs_changed": [*(history if isinstance(history, list) else []), change]}


def started_as_hint(run_dir: str) -> str:
    """'; the run was started (in DIR) as: python main.py ...', from the folder's config.json, or ''
    when unrecorded. Callers have checked that the folder's run is the one refused."""
    saved = saved_run_config(run_dir, from_checkpoint=False) or {}
    command = saved.get("command")
    if not isinstance(command, str):
        return ""
    where = saved.get("command_dir")
    return f"; the run was started{f' in {where}' if isinstance(where, str) else ''} as: {command}"


def describe_differences(differences: List[Tuple[str, Any, Any]], there: str = "there", here: str = "here") -> str:
    """Every difference in one phrase, the method first (another method also changes the
    options it derives, such as LDAM's --head_scale), so one refusal names all there is to fix."""
    ordered = sorted(differences, key=lambda item: item[0] != "method")
    return "; ".join(f"{flag}={old!r} {there}, {new!r} {here}" for flag, old, new in ordered)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a command will do with its run folder."""

    run_dir: Optional[str]  # None: a new folder under --root_log, named when it is created
    # 'new', 'continue' (from `resume`), 'restart' (this configuration's run stopped before its
    # first checkpoint), 'overwrite' (--overwrite), 'finished' (--resume auto: nothing left to do)
    action: str
    resume: Optional[str] = None  # the checkpoint a 'continue' starts from
    markers: Tuple[str, ...] = ()  # run files present when planned; re-checked under the lock


def _refuse_if_busy(run_dir: str) -> None:
    holder = lock_holder(run_dir)
    if holder is not None:
        raise ConfigError(busy_message(run_dir, holder))


def saved_run_config(run_dir: str, from_checkpoint: bool = True) -> Optional[Dict[str, Any]]:
    """The configuration of the run in `run_dir`: config.json, else (a folder from before
    config.json was written first) its last.pth; None when neither can be read."""
    try:
        with open(os.path.join(run_dir, "config.json")) as stream:
            saved = json.load(stream)
        if isinstance(saved, dict):  # JSON of another shape is as unreadable as none
            return saved
    except (OSError, ValueError):
        pass
    last = os.path.join(run_dir, "last.pth")
    return load_checkpoint(last)["config"] if from_checkpoint and os.path.isfile(last) else None


def _is_finished(run_dir: str, config: TrainConfig) -> bool:
    """results.json reports the last of this command's epochs (a run extended with a larger
    --epochs is unfinished again; a half-written results.json counts as unfinished)."""
    try:
        with open(os.path.join(run_dir, "results.json")) as stream:
            return int(json.load(stream)["last"]["epoch"]) >= config.optim.epochs
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _existing_run(run_dir: str, config: TrainConfig, markers: List[str]) -> RunPlan:
    """A folder whose run has this configuration: skip it, continue it, or start it again."""
    if _is_finished(run_dir, config):
        return RunPlan(run_dir, "finished", markers=tuple(markers))
    last = os.path.join(run_dir, "last.pth")
    if os.path.isfile(last):
        return RunPlan(run_dir, "continue", resume=last, markers=tuple(markers))
    return RunPlan(run_dir, "restart", markers=tuple(markers))


def _runs_like_this(config: TrainConfig, label: str) -> List[str]:
    """Folders under --root_log named like this command's runs whose config.json equals this
    configuration (less what a continuation may change), newest first."""
    stem = default_run_name(config, label).rsplit("_", 1)[0]
    folders = [f for f in glob.glob(os.path.join(config.run.root_log, stem + "_*")) if os.path.isdir(f)]
    matching = []
    for folder in sorted(folders, key=os.path.getmtime, reverse=True):
        saved = saved_run_config(folder, from_checkpoint=False)
        if saved is not None and not config_differences(config, saved):
            matching.append(folder)
    return matching


def _plan_auto(config: TrainConfig, label: str) -> RunPlan:
    """`--resume auto`: this exact configuration's unfinished run if there is one (with --out_dir:
    the run there, which must have this configuration), a finished one is left as it is,
    otherwise a new run."""
    out_dir = config.run.out_dir
    if out_dir:
        _refuse_if_busy(out_dir)
        markers = run_markers(out_dir)
        if not markers:
            return RunPlan(out_dir, "new")
        saved = saved_run_config(out_dir)
        if saved is None:
            raise ConfigError(f"--resume auto: {out_dir} holds run files ({', '.join(markers)}) but no readable "
                              "config.json to compare with: choose another --out_dir, or drop --resume and "
                              "pass --overwrite to delete them")
        differences = config_differences(config, saved)
        if differences:
            raise ConfigError(f"--resume auto: {out_dir} holds a run with other settings ({describe_differences(differences)}"
                              "): choose another --out_dir for this configuration, continue that run with its "
                              "own flags, or drop --resume and pass --overwrite to delete it" + started_as_hint(out_dir))
        return _existing_run(out_dir, config, markers)
    plans = [_existing_run(folder, config, run_markers(folder)) for folder in _runs_like_this(config, label)]
    for action in ("continue", "restart", "finished"):
        for plan in plans:
            if plan.action == action:
                _refuse_if_busy(plan.run_dir)
                return plan
    return RunPlan(None, "new")


def plan_run_folder(config: TrainConfig, label: str) -> RunPlan:
    """Where this command trains and whether it may: changes nothing on disk, so a refused
    command leaves every folder exactly as it was. A folder that holds a run is only ever
    continued (--resume), skipped (--resume auto on a finished run) or emptied (--overwrite)."""
    run = config.run
    if run.out_dir and os.path.exists(run.out_dir) and not os.path.isdir(run.out_dir):
        raise ConfigError(f"--out_dir {run.out_dir} is a file, not a folder: choose another --out_dir")
    if run.resume == "auto":
        return _plan_auto(config, label)
    if run.resume:
        path = resolve_checkpoint_path(run.resume, prefer="last.pth")
        run_dir = os.path.dirname(path) or "."
        if run.out_dir and os.path.abspath(run.out_dir) != os.path.abspath(run_dir):
            raise ConfigError(f"--resume {run.resume} continues the run in {run_dir}, but --out_dir names "
                              f"{run.out_dir}: drop --out_dir (the run continues in its own folder), or copy "
                              f"the folder to {run.out_dir} and resume from there")
        _refuse_if_busy(run_dir)
        _check_resume_folder(run.resume, path, run_dir, config)
        markers = tuple(run_markers(run_dir))
        if _is_finished(run_dir, config):
            return RunPlan(run_dir, "finished", markers=markers)
        return RunPlan(run_dir, "continue", resume=path, markers=markers)
    if not run.out_dir:
        return RunPlan(None, "new")
    _refuse_if_busy(run.out_dir)
    markers = run_markers(run.out_dir)
    if not markers:
        return RunPlan(run.out_dir, "new")
    if run.overwrite:
        return RunPlan(run.out_dir, "overwrite", markers=tuple(markers))
    raise ConfigError(f"--out_dir {run.out_dir} already holds a run ({', '.join(markers)}): continue it with "
                      "--resume auto, choose another --out_dir, or pass --overwrite to delete its files and "
                      "start again")


def check_is_checkpoint(flag_value: str, path: str) -> None:
    if not zipfile.is_zipfile(path):  # every checkpoint ltkit writes is a torch zip archive
        raise ConfigError(f"--resume {flag_value}: {path} is not a checkpoint: resume from the run folder or "
                          "its last.pth")


def check_checkpoint_is_folders_run(flag_value: str, path: str, trained: Dict[str, Any]) -> None:
    """A checkpoint copied into another run's folder would overwrite that run if continued."""
    run_dir = os.path.dirname(path) or "."
    saved = saved_run_config(run_dir, from_checkpoint=False)
    foreign = _differences(trained.get("method", ""), trained, saved) if saved is not None else []
    if foreign:
        raise ConfigError(f"--resume {flag_value}: its folder {run_dir} holds another run ("
                          f"{describe_differences(foreign, 'in its config.json', 'in the checkpoint')}) that "
                          "continuing would overwrite: copy the checkpoint into a folder of its own and resume "
                          "from there")


def _check_resume_folder(flag_value: str, path: str, run_dir: str, config: TrainConfig) -> None:
    """A continuation writes last.pth, best.pth, results.json and log.txt of the checkpoint's
    folder, so that folder must hold this run, and the file must be its newest state: resuming an
    older file (best.pth, a copied snapshot) would silently replace the later epochs."""
    check_is_checkpoint(flag_value, path)
    saved = saved_run_config(run_dir, from_checkpoint=False)
    if saved is not None and config_differences(config, saved):
        # Either the file is another run's, or this command's flags are not the run's: the
        # checkpoint's own settings (read only on the way to a refusal) tell which.
        trained = load_checkpoint(path, prefer="last.pth")["config"]
        check_checkpoint_is_folders_run(flag_value, path, trained)
        raise other_settings_error(path, config_differences(config, trained))
    last = os.path.join(run_dir, "last.pth")
    if os.path.isfile(last) and not os.path.samefile(last, path):
        raise ConfigError(f"--resume {flag_value}: {run_dir} holds this run's newer {last}, which continuing "
                          f"from {os.path.basename(path)} would replace: resume from {last} (or the folder), "
                          "or copy the file into a folder of its own to branch from it")


def _new_run_folder(config: TrainConfig, label: str) -> str:
    """Creates a fresh folder under --root_log; mkdir is atomic, so two runs started in the
    same second get two folders (the second with a -2 suffix)."""
    base = os.path.join(config.run.root_log, default_run_name(config, label))
    os.makedirs(config.run.root_log, exist_ok=True)
    for attempt in itertools.count(1):
        path = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def claim_run_folder(plan: RunPlan, config: TrainConfig, label: str) -> Tuple[str, RunFolderLock, List[str]]:
    """Locks the planned folder for this process's lifetime, checks that no other process wrote
    into it since the plan, and clears what the plan discards. Returns the folder, the held lock
    and the lines to log once the log file is open."""
    try:
        created = plan.run_dir is None or not os.path.isdir(plan.run_dir)
        run_dir = plan.run_dir or _new_run_folder(config, label)
        lock = RunFolderLock(run_dir, created=created)
        lock.acquire()
    except OSError as error:  # a read-only or missing parent, a full disk
        raise ConfigError(f"cannot create or lock the run folder under {plan.run_dir or config.run.root_log}: "
                          f"{error.strerror or error}; choose another --out_dir or --root_log") from None
    try:
        if tuple(run_markers(run_dir)) != plan.markers:
            raise ConfigError(f"run folder {run_dir} changed while this run was starting (another process "
                              "wrote into it): run the command again")
        notes = _clear_for(plan, run_dir)
        lock.preexisting = frozenset(os.listdir(run_dir))
    except BaseException:
        lock.release()
        raise
    return run_dir, lock, notes


def _clear_for(plan: RunPlan, run_dir: str) -> List[str]:
    if plan.action == "overwrite":
        removed = discard_run_outputs(run_dir)
        return [f"--overwrite: deleted the earlier run's files in {run_dir}: {', '.join(removed)}"]
    notes = []
    # Only a folder that holds a run can hold the temporaries of its interrupted writes; in a new
    # run's folder (an --out_dir the user made) a file of such a name is the user's.
    removed = remove_orphaned_temporaries(run_dir) if plan.action != "new" else []
    if removed:
        notes.append(f"removed {len(removed)} temporary file(s) an interrupted write left in {run_dir}: "
                     f"{', '.join(removed)}")
    if plan.action == "restart":
        notes.append(f"{run_dir} holds this configuration's run, stopped before its first checkpoint: "
                     "starting it again from epoch 1")
    return notes
