"""Where long runs stand: one Markdown row per run folder, read from the files a run writes.

    python scripts/run_status.py runs/evidence [more folders...]

Every folder holding a ``config.json`` is a run (searched below each folder given). A row says
how many epochs the log has (of the configured number), whether the run is running (a process on
this machine holds its folder lock), finished (its ``results.json`` reports the last logged
epoch) or stopped, the last validation and test top-1 the log printed (with their epochs), the
median wall time of its last epochs and what that median makes of the epochs left. The median skips the gaps between
sessions (a stop and a ``--resume auto``), so a run continued days later still gets a fair
estimate; on a shared machine it is only as steady as the machine.

Nothing is written and no lock is probed (taking a lock, even for an instant, could refuse a run
that starts at that moment): a holder on another host is named as the lock file names it, not
checked. A run whose files cannot be read is a row that says so.
"""
from __future__ import annotations

import json
import os
import re
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

# Runnable as ``python scripts/run_status.py`` from anywhere: make the packages importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# standard library only
from utils.config import OneLineErrorParser, end_quietly_when_output_closes  # noqa: E402

LOCK_FILE = ".run.lock"  # utils/run_folder.py's; the holder line is "process PID on host HOST since ..."
RECENT_EPOCHS = 10  # the median epoch time is taken over this many of the last epochs
# RunLogger prefixes each line with a local timestamp; the engine logs "epoch N: lr=... (X img/s)"
# then " | val top1=..." / " | test top1=..." for the splits it scored; every start logs "run folder:".
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (.*)$")
EPOCH = re.compile(r"^epoch (\d+): lr=")
SCORE = re.compile(r"\| (val|test) top1=([0-9.]+|nan)")
HOLDER = re.compile(r"^process (\d+) on host (\S+) since")


class StatusError(Exception):
    """A folder that is not there or a file that cannot be read; the message names it."""


@dataclass
class RunStatus:
    folder: str
    method: str
    seed: Optional[int]
    epochs_total: Optional[int]
    epochs_logged: int = 0
    state: str = "not started"
    scores: dict = field(default_factory=dict)  # split -> (epoch, top1)
    epoch_seconds: Optional[float] = None


def find_runs(roots: List[str]) -> List[str]:
    """Run folders below ``roots``. Symbolic links are followed (``runs/latest`` -> a run) and
    each real run is listed once, under its own name where it is found under it."""
    found: dict = {}  # real path -> the paths it was found under
    walked = set()  # real paths of the folders searched, so a link to an ancestor is no loop
    for root in roots:
        if not os.path.isdir(root):
            raise StatusError(f"{root} is not a folder (give the folder that holds the run folders)")
        for folder, subfolders, files in os.walk(root, followlinks=True):
            subfolders.sort()
            real = os.path.realpath(folder)
            if "config.json" in files:
                found.setdefault(real, []).append(folder)
                subfolders[:] = []  # a run's tb/ is not another run
            elif real in walked:
                subfolders[:] = []
            walked.add(real)
    return sorted(next((p for p in paths if os.path.realpath(p) == os.path.abspath(p)), paths[0])
                  for paths in found.values())


def read_config(run: str) -> dict:
    path = os.path.join(run, "config.json")
    try:
        with open(path, encoding="utf-8") as stream:
            config = json.load(stream)
    except ValueError as error:  # not UTF-8, not JSON
        raise StatusError(f"{path} is not readable JSON ({type(error).__name__})") from None
    if not isinstance(config, dict):
        raise StatusError(f"{path}: expected a JSON object")
    return config


def parse_log(lines: List[str]) -> Tuple[int, dict, List[float]]:
    """(last logged epoch, split -> (epoch, top1) last printed, seconds of each epoch whose
    previous epoch was logged by the same process)."""
    last_epoch, scores, durations = 0, {}, []
    previous: Optional[float] = None  # time of the previous epoch line of this process
    for line in lines:
        matched = LINE.match(line.rstrip("\n"))
        if not matched:
            continue
        stamp, message = matched.groups()
        if message.startswith("run folder:"):  # a new process: the time since the last epoch is a gap
            previous = None
            continue
        epoch = EPOCH.match(message)
        if not epoch:
            continue
        at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
        if previous is not None:
            durations.append(at - previous)
        previous = at
        last_epoch = int(epoch.group(1))
        for split, top1 in SCORE.findall(message):
            scores[split] = (last_epoch, float(top1))
    return last_epoch, scores, durations


def held_flocks() -> Optional[List[Tuple[int, int, int, int]]]:
    """(process, device major, device minor, inode) of each flock held on this machine, from
    Linux's /proc/locks; None where the kernel does not list them."""
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as stream:
            lines = stream.readlines()
    except OSError:
        return None
    held = []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 11826 fe:00:5562396 0 EOF"; a waiter's line has "->" second.
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            held.append((int(fields[4]), int(major, 16), int(minor, 16), int(inode)))
        except ValueError:
            continue
    return held


def holder_state(run: str) -> Optional[str]:
    """'running (process N)' while a process of this machine holds the run's folder lock; 'last
    held on host H (not checked)' when nothing here holds it and the lock file names another
    host; None when nobody holds it.

    A stopped run's lock file keeps its last holder's line, and that process number may since
    belong to another program (and a container's host name changes with every start), so the
    holder is what the kernel lists as holding the flock on that very file (/proc/locks); only
    where no such list exists is the named process's being alive taken as the answer."""
    path = os.path.join(run, LOCK_FILE)
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            matched = HOLDER.match(stream.readline().strip())
        lock = os.stat(path)
    except OSError:
        return None
    pid = int(matched.group(1)) if matched else None
    elsewhere = matched is not None and matched.group(2) != socket.gethostname()
    flocks = held_flocks()
    if flocks is not None:
        device = (os.major(lock.st_dev), os.minor(lock.st_dev))
        for holder, major, minor, inode in flocks:
            # Some file systems (overlays) list another device number than stat gives: then the
            # inode and the named process must both agree.
            if inode == lock.st_ino and ((major, minor) == device or holder == pid):
                return f"running (process {holder})"
    elif pid is not None and not elsewhere:
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
            return f"running (process {pid})"
        except ProcessLookupError:
            pass
        except PermissionError:
            return f"running (process {pid})"  # alive, another user's
    return f"last held on host {matched.group(2)} (not checked)" if elsewhere else None


def method_name(config: dict) -> str:
    """The method, with the loss and re-weighting rule for ERM (``erm: ldam, drw``): CE and
    LDAM-DRW runs are both ``erm`` in config.json."""
    name = str(config.get("method", "?"))
    options = config.get("method_options") if isinstance(config.get("method_options"), dict) else {}
    parts = [str(options[key]) for key in ("loss", "train_rule")
             if key in options and str(options[key]).lower() not in ("none", "")]
    return f"{name}: {', '.join(parts)}" if parts else name


def results_epoch(run: str) -> Optional[int]:
    """The last epoch results.json reports; None when it names none or cannot be read."""
    try:
        with open(os.path.join(run, "results.json"), encoding="utf-8") as stream:
            epoch = json.load(stream).get("last", {}).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def run_status(run: str) -> RunStatus:
    try:
        config = read_config(run)
        log = os.path.join(run, "log.txt")
        lines = []
        if os.path.isfile(log):
            with open(log, encoding="utf-8", errors="replace") as stream:
                lines = stream.readlines()
    except (StatusError, OSError) as error:  # one unreadable run is a row, not the end of the table
        return RunStatus(folder=run, method="?", seed=None, epochs_total=None, state=f"unreadable: {error}")
    optim = config.get("optim") if isinstance(config.get("optim"), dict) else {}
    options = config.get("run") if isinstance(config.get("run"), dict) else {}
    status = RunStatus(folder=run, method=method_name(config), seed=options.get("seed"),
                       epochs_total=optim.get("epochs"))
    status.epochs_logged, status.scores, durations = parse_log(lines)
    if durations:
        status.epoch_seconds = statistics.median(durations[-RECENT_EPOCHS:])
    holder = holder_state(run)
    finished = os.path.isfile(os.path.join(run, "results.json"))
    if holder and holder.startswith("running"):
        status.state = holder  # a finished run continued with more --epochs keeps its old results.json meanwhile
    elif finished and (results_epoch(run) or status.epochs_logged) >= status.epochs_logged:  # no epoch: taken as is
        status.state = "finished"
    else:
        status.state = holder or ("stopped" if status.epochs_logged else "not started")
    return status


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def table(statuses: List[RunStatus], root: Optional[str] = None) -> str:
    lines = ["| run | method | seed | epochs | state | last val top1 | last test top1 | per epoch | left |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in statuses:
        name = os.path.relpath(s.folder, root) if root else s.folder
        epochs = f"{s.epochs_logged} of {s.epochs_total}" if s.epochs_total else str(s.epochs_logged)
        extended = bool(s.epochs_total) and s.epochs_logged > s.epochs_total
        if extended:  # continued with more --epochs than config.json, written at the start, names
            epochs = f"{s.epochs_logged} (config.json: {s.epochs_total})"
        scores = [f"{s.scores[split][1]:.2f} (epoch {s.scores[split][0]})" if split in s.scores else "-"
                  for split in ("val", "test")]
        per_epoch = format_duration(s.epoch_seconds) if s.epoch_seconds is not None else "-"
        left = "-"
        if s.state != "finished" and s.epoch_seconds is not None and s.epochs_total and not extended:
            left = format_duration(max(s.epochs_total - s.epochs_logged, 0) * s.epoch_seconds)
        seed = "-" if s.seed is None else str(s.seed)
        lines.append(f"| {name} | {s.method} | {seed} | {epochs} | {s.state} | {scores[0]} | {scores[1]} "
                     f"| {per_epoch} | {left} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = OneLineErrorParser(prog="run_status.py", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="run folders, or folders that hold them (searched below)")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.folders)
        if not runs:
            raise StatusError(f"no run folder (one with config.json) in {', '.join(args.folders)}")
        root = args.folders[0] if len(args.folders) == 1 and runs != [args.folders[0]] else None
        print(table([run_status(run) for run in runs], root))
    except (StatusError, OSError) as error:
        print(f"run_status.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    end_quietly_when_output_closes()
    sys.exit(main())
