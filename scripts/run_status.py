"""Where long runs stand: one Markdown row per run folder, read from the files a run writes.

    python scripts/run_status.py runs/evidence [more folders...]

Every folder holding a ``config.json`` is a run (searched below each folder given). A row says
how many epochs the log has (of the configured number), whether the run finished (it has
``results.json``), is running (a process on this host holds its folder lock) or stopped, the
last validation and test top-1 the log printed (with their epochs), the median wall time of its
last epochs and what that median makes of the epochs left. The median skips the gaps between
sessions (a stop and a ``--resume auto``), so a run continued days later still gets a fair
estimate; on a shared machine it is only as steady as the machine.

Nothing is written and no lock is probed (taking a lock, even for an instant, could refuse a run
that starts at that moment): a holder on another host is reported as such, not checked.
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
    runs = []
    for root in roots:
        if not os.path.isdir(root):
            raise StatusError(f"{root} is not a folder (give the folder that holds the run folders)")
        for folder, subfolders, files in os.walk(root):
            if "config.json" in files:
                runs.append(folder)
                subfolders[:] = []  # a run's tb/ is not another run
            subfolders.sort()
    return sorted(runs)


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
    """'running (process N)' while a process of this host holds the run's folder lock, 'held by
    ...' when the lock file names another host's process; None when nobody holds it.

    A stopped run's lock file keeps its last holder's line, and that process number may since
    belong to another program, so the holder is what the kernel lists as holding the flock on
    that very file (/proc/locks); only where no such list exists is the named process's being
    alive taken as the answer."""
    path = os.path.join(run, LOCK_FILE)
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            matched = HOLDER.match(stream.readline().strip())
        lock = os.stat(path)
    except OSError:
        return None
    pid = int(matched.group(1)) if matched else None
    if matched and matched.group(2) != socket.gethostname():
        return f"held by process {pid} on host {matched.group(2)}"
    flocks = held_flocks()
    if flocks is not None:
        device = (os.major(lock.st_dev), os.minor(lock.st_dev))
        for holder, major, minor, inode in flocks:
            # Some file systems (overlays) list another device number than stat gives: then the
            # inode and the named process must both agree.
            if inode == lock.st_ino and ((major, minor) == device or holder == pid):
                return f"running (process {holder})"
        return None
    if pid is None:
        return None
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return f"running (process {pid})"


def method_name(config: dict) -> str:
    """The method, with the loss and re-weighting rule for ERM (``erm: ldam, drw``): CE and
    LDAM-DRW runs are both ``erm`` in config.json."""
    name = str(config.get("method", "?"))
    options = config.get("method_options") if isinstance(config.get("method_options"), dict) else {}
    parts = [str(options[key]) for key in ("loss", "train_rule")
             if key in options and str(options[key]).lower() not in ("none", "")]
    return f"{name}: {', '.join(parts)}" if parts else name


def run_status(run: str) -> RunStatus:
    config = read_config(run)
    optim = config.get("optim") if isinstance(config.get("optim"), dict) else {}
    options = config.get("run") if isinstance(config.get("run"), dict) else {}
    status = RunStatus(folder=run, method=method_name(config), seed=options.get("seed"),
                       epochs_total=optim.get("epochs"))
    log = os.path.join(run, "log.txt")
    if os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as stream:
            status.epochs_logged, status.scores, durations = parse_log(stream.readlines())
        if durations:
            status.epoch_seconds = statistics.median(durations[-RECENT_EPOCHS:])
    if os.path.isfile(os.path.join(run, "results.json")):
        status.state = "finished"
    else:
        status.state = holder_state(run) or ("stopped" if status.epochs_logged else "not started")
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
        scores = [f"{s.scores[split][1]:.2f} (epoch {s.scores[split][0]})" if split in s.scores else "-"
                  for split in ("val", "test")]
        per_epoch = format_duration(s.epoch_seconds) if s.epoch_seconds is not None else "-"
        left = "-"
        if s.state != "finished" and s.epoch_seconds is not None and s.epochs_total:
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
