"""Evidence runs that travel: a pinned commit's code to a GPU machine, its run folders back, and
each finished run's record into ``results/``.

    python scripts/evidence_runs.py pin --commit 337892f                 # here: .device/pinned.tar.gz
    python scripts/evidence_runs.py tree --into .device_cache/pinned      # there: that commit's files
    python scripts/evidence_runs.py pack runs/evidence OUT_DIR            # there: run folders -> tar files
    python scripts/evidence_runs.py restore OUT_DIR/*.tar --into runs/evidence  # here: and back
    python scripts/evidence_runs.py collect runs/evidence results/cifar10_lt_r100  # here: finished records

The pinned code is a ``git archive`` of the commit, so a run there records ``git_commit:
unknown`` (no git metadata); ``pack`` writes the archive's commit in its place in config.json and
results.json, and in nothing else. ``pack`` splits the run folders over at most ``--max_files``
tar files of at most ``--max_mb`` each and ``--max_total_mb`` together (what a device machine
sends back): one with every run's records (config, results, log, per-class statistics,
tensorboard), the others with the checkpoints of runs that did not finish, so ``--resume auto``
continues them elsewhere, and of finished self-supervised stage-1 runs, which the next stage
starts from. Other finished runs travel without checkpoints. ``restore`` and ``collect`` never
overwrite a file: ``restore`` places whole runs only (a run folder that exists here with other
files is named and left as it is, so no folder mixes two moments of a run), ``collect`` names a
record that differs and keeps it.

Only the standard library (and the toolkit's torch-free ``utils.config``, for one-line flag
errors) is imported, so ``tree`` and ``pack`` run before anything is installed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zlib
from typing import Dict, Iterable, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from utils.config import POSITIVE, POSITIVE_INT, OneLineErrorParser  # noqa: E402  (standard library only)

PINNED = os.path.join(ROOT, ".device", "pinned.tar.gz")
STAMPED = ("config.json", "results.json")  # the files whose git_commit says which code ran
# What results/ keeps of a finished run: the log too, for the precision --amp auto became and
# each epoch's numbers.
RECORDS = ("config.json", "results.json", "per_class.csv", "log.txt")
STAGING = ".restoring"  # restore writes <run>.restoring, then renames it to <run>
SKIPPED = (".run.lock",)  # the lock belongs to the process that held it
SELF_SUPERVISED = ("rotation", "moco")  # stage-1 methods: a later run starts from their last.pth
RESULTS_TAR = "runs_records.tar"
CHECKPOINTS_TAR = "runs_checkpoints_{}.tar"


class EvidenceError(Exception):
    """A wrong input; the message names it and the fix."""


# ---- pin (here) / tree (there) ------------------------------------------------------------------
def pin(args: argparse.Namespace) -> None:
    def git(*command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *command], cwd=args.repo, capture_output=True)

    resolved = git("rev-parse", "--verify", "--quiet", f"{args.commit}^{{commit}}")
    if resolved.returncode != 0:
        raise EvidenceError(f"--commit {args.commit}: not a commit of the repository at {args.repo}")
    commit = resolved.stdout.decode().strip()
    archive = git("archive", "--format=tar.gz", commit)
    if archive.returncode != 0:
        raise EvidenceError(f"git archive {commit} failed: {archive.stderr.decode().strip()}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".tmp", "wb") as stream:
        stream.write(archive.stdout)
    os.replace(args.out + ".tmp", args.out)
    print(f"wrote {args.out}: the files of commit {commit[:7]} ({len(archive.stdout) / 2 ** 20:.1f} MB)")


def archive_commit(path: str) -> str:
    """The commit ``git archive`` wrote into the archive's global header."""
    with tarfile.open(path) as archive:
        commit = archive.pax_headers.get("comment", "")
    if len(commit) != 40:
        raise EvidenceError(f"{path} is not a git archive of one commit: run 'python scripts/evidence_runs.py pin'")
    return commit


def tree(args: argparse.Namespace) -> None:
    if not os.path.isfile(args.archive):
        raise EvidenceError(f"{args.archive} is missing: run 'python scripts/evidence_runs.py pin --commit REV' "
                            "where the repository's history is")
    commit = archive_commit(args.archive)
    stamp = os.path.join(args.into, ".pinned_commit")
    if os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as stream:
            held = stream.read().strip()
        if held == commit:
            print(f"{args.into} already holds commit {commit[:7]}")
            return
        shutil.rmtree(args.into)  # another commit's tree, extracted here before: replaced
    elif os.path.exists(args.into) and os.listdir(args.into):
        raise EvidenceError(f"--into {args.into} holds other files: remove it or choose an empty folder")
    with tarfile.open(args.archive) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(args.into, filter="data")  # no absolute paths, links out or device files
        else:  # Python before 3.8.17 / 3.11.4: the same rules by hand
            for member in archive.getmembers():
                name = os.path.normpath(member.name)
                if os.path.isabs(name) or name.startswith("..") or not (member.isfile() or member.isdir()):
                    raise EvidenceError(f"{args.archive}: member {member.name!r} is not a plain file inside it")
            archive.extractall(args.into)
    with open(stamp, "w", encoding="utf-8") as stream:
        stream.write(commit + "\n")
    print(f"{args.into}: the files of commit {commit[:7]}")


# ---- pack (there) -------------------------------------------------------------------------------
def run_folders(root: str) -> List[str]:
    """Folders under ``root`` (one level) holding a run: a config.json."""
    if not os.path.isdir(root):
        raise EvidenceError(f"{root} is not a folder")
    # A restore's staging folder (<run>.restoring, left by an interrupted restore) is not a run.
    return sorted(name for name in os.listdir(root) if os.path.isfile(os.path.join(root, name, "config.json"))
                  and not name.endswith(STAGING))


def read_record(path: str) -> Dict:
    """A run's config.json or results.json; EvidenceError names a damaged one."""
    try:
        with open(path, encoding="utf-8") as stream:
            record = json.load(stream)
    except ValueError as error:  # not UTF-8, not JSON
        raise EvidenceError(f"{path} is not a readable JSON record ({type(error).__name__}): the run "
                            "folder is damaged; move it out of the folder to pack") from None
    if not isinstance(record, dict):
        raise EvidenceError(f"{path} holds a {type(record).__name__}, not a run's record: the run folder is "
                            "damaged; move it out of the folder to pack")
    return record


def stamp_commit(path: str, commit: str) -> bool:
    """Writes ``commit`` as the git_commit of a JSON record that says 'unknown'; True if changed."""
    record = read_record(path)
    if record.get("git_commit") != "unknown":
        return False
    record["git_commit"] = commit
    with open(path + ".tmp", "w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=2)
        stream.write("\n")
    os.replace(path + ".tmp", path)
    return True


def folder_files(root: str, run: str) -> Iterable[Tuple[str, str]]:
    """(path on disk, name in the archive) of every file of one run folder."""
    for parent, _, files in os.walk(os.path.join(root, run)):
        for name in sorted(files):
            if name in SKIPPED or name.endswith(".tmp"):
                continue
            path = os.path.join(parent, name)
            yield path, os.path.relpath(path, root)


def needs_weights(root: str, run: str) -> bool:
    """A run whose checkpoints travel: one that did not finish (to continue it), or a finished
    self-supervised stage-1 run (rotation, MoCo), whose last.pth the next stage starts from."""
    results = os.path.join(root, run, "results.json")
    if not os.path.isfile(results):
        return True
    record = read_record(results)
    # A finished run being extended (config.json now asks for more epochs than results.json
    # reports) is unfinished again: it travels with the checkpoint it continues from.
    optim = read_record(os.path.join(root, run, "config.json")).get("optim")
    last = record.get("last")
    planned = optim.get("epochs") if isinstance(optim, dict) else None
    reported = last.get("epoch") if isinstance(last, dict) else None
    if isinstance(planned, int) and isinstance(reported, int) and reported < planned:
        return True
    return record.get("method") in SELF_SUPERVISED


def pack(args: argparse.Namespace) -> None:
    commit = args.commit[:7] if args.commit else None
    limit = int(args.max_mb * 2 ** 20)
    budget = int(args.max_total_mb * 2 ** 20)
    earlier = [name for name in (os.listdir(args.out_dir) if os.path.isdir(args.out_dir) else [])
               if name == RESULTS_TAR or (name.startswith("runs_checkpoints_") and name.endswith(".tar"))]
    if earlier:
        raise EvidenceError(f"{args.out_dir} holds an earlier pack ({', '.join(sorted(earlier))}): give a new or "
                            "empty folder")
    created = not os.path.exists(args.out_dir)
    written: List[str] = []
    try:
        _pack_into(args, commit, limit, budget, written)
    except BaseException:
        for path in written:  # none of a failed pack, so no folder holds half a pack
            for leftover in (path, path + ".tmp"):
                if os.path.exists(leftover):
                    os.remove(leftover)
        if created and os.path.isdir(args.out_dir) and not os.listdir(args.out_dir):
            os.rmdir(args.out_dir)
        raise


def _pack_into(args: argparse.Namespace, commit: Optional[str], limit: int, budget: int, written: List[str]) -> None:
    os.makedirs(args.out_dir, exist_ok=True)
    records: List[Tuple[str, str]] = []
    checkpoints: List[Tuple[str, List[Tuple[str, str]]]] = []  # run -> its .pth files
    finished = []
    for run in run_folders(args.root):
        if os.path.isfile(os.path.join(args.root, run, "results.json")):
            finished.append(run)
        if commit:
            for name in STAMPED:
                path = os.path.join(args.root, run, name)
                if os.path.isfile(path):
                    stamp_commit(path, commit)
        travels = needs_weights(args.root, run)
        weights = []
        for path, name in folder_files(args.root, run):
            if name.endswith(".pth"):
                weights += [(path, name)] if travels else []
            else:
                records.append((path, name))
        if weights:
            checkpoints.append((run, weights))
    written.append(os.path.join(args.out_dir, RESULTS_TAR))
    write_tar(written[-1], records)
    total = os.path.getsize(written[0])
    if total > min(limit, budget):
        raise EvidenceError(f"{written[0]} is over {min(args.max_mb, args.max_total_mb):g} MB: the run folders "
                            "hold more than records")
    # Whole runs per file, so each file restores complete runs; the runs that do not fit are named.
    bins: List[List[Tuple[str, str]]] = []
    left_out = []
    for run, weights in checkpoints:
        size = tar_bytes(weights)
        target = next((b for b in bins if tar_bytes(b + weights) <= limit
                       and total - tar_bytes(b) + tar_bytes(b + weights) <= budget), None)
        if target is None and size <= limit and total + size <= budget and len(bins) + 1 < args.max_files:
            target = []
            bins.append(target)
        if target is None:
            left_out.append(run)
        else:
            total += tar_bytes(target + weights) - (tar_bytes(target) if target else 0)
            target.extend(weights)
    for number, members in enumerate(bins, start=1):
        written.append(os.path.join(args.out_dir, CHECKPOINTS_TAR.format(number)))
        write_tar(written[-1], members)
    carried = [run for run, _ in checkpoints if run not in left_out]
    print(f"packed {len(finished)} finished runs ({', '.join(finished) or 'none'}) and the checkpoints of "
          f"{len(carried)} runs ({', '.join(carried) or 'none'}) into "
          f"{', '.join(os.path.basename(p) for p in written)} ({total / 2 ** 20:.1f} MB)"
          + (f"; checkpoints left out (over {args.max_files} files of {args.max_mb:g} MB, "
             f"{args.max_total_mb:g} MB in all): {', '.join(left_out)}" if left_out else ""))


def tar_bytes(members: List[Tuple[str, str]]) -> int:
    """Size of the tar file write_tar makes of ``members``: a 512-byte header per file, its data
    padded to 512, the end marker, all padded to 10,240. A name over 100 bytes also takes
    a GNU long-name header and its blocks."""
    block, record = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
    size = 2 * block
    for path, name in members:
        size += block + -(-os.path.getsize(path) // block) * block
        encoded = len(name.encode("utf-8"))
        if encoded > tarfile.LENGTH_NAME:
            size += block + -(-(encoded + 1) // block) * block
    return -(-size // record) * record


def write_tar(path: str, members: List[Tuple[str, str]]) -> str:
    with tarfile.open(path + ".tmp", "w", format=tarfile.GNU_FORMAT) as archive:
        for source, name in members:
            archive.add(source, arcname=name, recursive=False)
    os.replace(path + ".tmp", path)
    return path


# ---- restore / collect (here) -------------------------------------------------------------------
def same_content(path: str, data: bytes) -> bool:
    with open(path, "rb") as stream:
        return stream.read() == data


def place(path: str, data: bytes, conflicts: List[str]) -> bool:
    """Writes a new file; an existing one is kept (recorded as a conflict when it differs)."""
    if os.path.exists(path):
        if not same_content(path, data):
            conflicts.append(path)
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as stream:
        stream.write(data)
    os.replace(path + ".tmp", path)
    return True


def read_runs(archives: List[str]) -> Dict[str, Dict[str, bytes]]:
    """run folder -> {path inside the folder: content}, over every archive (a run's records and
    checkpoints travel in different files). Two archives that hold one file of a run with
    different contents (packs of two moments of the run) are refused: a folder of both would
    mix them."""
    runs: Dict[str, Dict[str, bytes]] = {}
    source: Dict[Tuple[str, str], str] = {}
    for archive_path in archives:
        try:
            with tarfile.open(archive_path) as archive:
                for member in archive.getmembers():
                    if not member.isfile():
                        continue
                    name = os.path.normpath(member.name)
                    if os.path.isabs(name) or name.startswith("..") or os.sep not in name:
                        raise EvidenceError(f"{archive_path}: member {member.name!r} is not a file inside a run "
                                            "folder")
                    run, inside = name.split(os.sep, 1)
                    data = archive.extractfile(member).read()
                    earlier = runs.setdefault(run, {}).get(inside)
                    if earlier is not None and earlier != data:
                        raise EvidenceError(f"{source[run, inside]} and {archive_path} hold different versions of "
                                            f"{run}/{inside} (packs of two moments of the run): restore them into "
                                            "different folders; nothing was restored")
                    runs[run][inside] = data
                    source.setdefault((run, inside), archive_path)
        except (tarfile.TarError, EOFError, zlib.error) as error:
            raise EvidenceError(f"{archive_path} is not a complete tar file ({error}): fetch it again; nothing "
                                "was restored") from None
    return runs


def restore(args: argparse.Namespace) -> None:
    """Whole runs or nothing: a run folder that exists here is left alone unless every file the
    archives hold for it is already there with the same content (then there is nothing to do),
    so a folder never mixes files of two moments of a run."""
    restored, kept = [], []
    for run, files in sorted(read_runs(args.archives).items()):
        folder = os.path.join(args.into, run)
        if os.path.exists(folder):
            same = all(os.path.isfile(os.path.join(folder, name)) and
                       same_content(os.path.join(folder, name), data) for name, data in files.items())
            if not same:
                kept.append(run)
            continue
        staging = folder + STAGING
        shutil.rmtree(staging, ignore_errors=True)
        for name, data in files.items():
            place(os.path.join(staging, name), data, [])
        os.replace(staging, folder)  # the run appears complete or not at all
        restored.append(run)
    print(f"restored {len(restored)} runs into {args.into}" + (f": {', '.join(restored)}" if restored else ""))
    if kept:
        raise EvidenceError(f"{len(kept)} runs exist here with other files and were left as they are "
                            f"({', '.join(kept)}): restore into another folder to compare")


def collect(args: argparse.Namespace) -> None:
    conflicts: List[str] = []
    added = []
    for run in run_folders(args.root):
        source = os.path.join(args.root, run)
        if not os.path.isfile(os.path.join(source, "results.json")):
            continue
        records = {}
        for name in RECORDS:
            path = os.path.join(source, name)
            if os.path.isfile(path):
                with open(path, "rb") as stream:
                    records[name] = stream.read()
        # Whole runs only: where one record there differs, none is added beside it.
        differing = [os.path.join(args.results, run, name) for name, data in records.items()
                     if os.path.exists(os.path.join(args.results, run, name))
                     and not same_content(os.path.join(args.results, run, name), data)]
        if differing:
            conflicts += differing
            continue
        new = sum(place(os.path.join(args.results, run, name), data, conflicts) for name, data in records.items())
        if new:
            added.append(run)
    print(f"collected {len(added)} finished runs into {args.results}" + (f": {', '.join(added)}" if added else ""))
    if conflicts:
        raise EvidenceError(f"{len(conflicts)} records in {args.results} differ from the run folder's and were left "
                            f"as they are, e.g. {conflicts[0]}")


def get_args_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(prog="evidence_runs.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("pin", help="archive one commit's files for a machine without the history")
    make.add_argument("--commit", required=True, help="the commit the evidence runs use")
    make.add_argument("--out", default=PINNED, help="archive to write (default: .device/pinned.tar.gz)")
    make.add_argument("--repo", default=ROOT, help="the repository (default: this one)")
    unpin = commands.add_parser("tree", help="extract the pinned archive")
    unpin.add_argument("--archive", default=PINNED)
    unpin.add_argument("--into", required=True, help="empty folder, or one holding the same commit")
    bag = commands.add_parser("pack", help="run folders -> size-capped tar files")
    bag.add_argument("root", help="folder holding the run folders (the evidence queue's ROOT_LOG)")
    bag.add_argument("out_dir")
    bag.add_argument("--commit", default=None, help="written as git_commit where a record says 'unknown'")
    bag.add_argument("--max_files", type=POSITIVE_INT, default=6, help="tar files at most (records + checkpoints)")
    bag.add_argument("--max_mb", type=POSITIVE, default=15.0, help="size of one tar file at most")
    bag.add_argument("--max_total_mb", type=POSITIVE, default=60.0, help="size of all tar files together at most")
    back = commands.add_parser("restore", help="tar files -> run folders, never overwriting")
    back.add_argument("archives", nargs="+")
    back.add_argument("--into", required=True)
    keep = commands.add_parser("collect", help="finished runs' config.json, results.json, per_class.csv and "
                                               "log.txt -> results/")
    keep.add_argument("root", help="folder holding the run folders")
    keep.add_argument("results", help="e.g. results/cifar10_lt_r100")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        {"pin": pin, "tree": tree, "pack": pack, "restore": restore, "collect": collect}[args.command](args)
    except (EvidenceError, OSError, tarfile.TarError, json.JSONDecodeError) as error:
        print(f"evidence_runs.py {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
