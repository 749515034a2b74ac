"""scripts/run_status.py: where run folders stand, read from what the engine and logger write."""
import fcntl
import json
import os
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import run_status  # noqa: E402

from utils.engine import _log_epoch  # noqa: E402
from utils.run_folder import LOCK_FILE  # noqa: E402


class Lines:
    """Collects the engine's epoch messages, as RunLogger would before stamping them."""

    def __init__(self):
        self.messages = []

    def scalars(self, *args):
        pass

    def info(self, message, echo=True):
        self.messages.append(message)


def epoch_message(epoch, val=None, test=None):
    lines = Lines()
    evaluations = {split: {"top1": top1, "many": top1, "medium": 0.0, "few": None}
                   for split, top1 in (("val", val), ("test", test)) if top1 is not None}
    _log_epoch(lines, epoch - 1, 0.1, {"loss/total": 1.0, "loss/ce": 1.0, "throughput": 60.0}, evaluations)
    return lines.messages[0]


def write_run(folder, epochs_total=10, log=(), method="erm", options=None, seed=0):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as stream:
        json.dump({"method": method, "method_options": options or {"loss": "ce", "train_rule": "none"},
                   "optim": {"epochs": epochs_total}, "run": {"seed": seed}}, stream)
    start = time.mktime((2026, 12, 1, 10, 0, 0, 0, 0, -1))
    with open(os.path.join(folder, "log.txt"), "w") as stream:
        for seconds, message in log:
            stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(start + seconds))} {message}\n")


def rows(output):
    return [line for line in output.splitlines() if line.startswith("| ") and not line.startswith("| run ")]


def test_epoch_time_is_a_median_that_skips_the_gap_between_sessions(tmp_path, capsys):
    # Epochs 1-3 a minute apart, a stop, a --resume auto 970 s later, epochs 4 and 5 (90 s): the
    # median of 60, 60 and 90 is 60 s, so 5 epochs are left at 5 min. Counting the gap as an
    # epoch would give a median of 75 s.
    write_run(tmp_path / "runs" / "ce", log=[
        (0, "run folder: runs/ce"), (60, epoch_message(1, val=20.0)), (120, epoch_message(2, val=25.5, test=30.25)),
        (180, epoch_message(3, val=27.0)), (1150, "run folder: runs/ce"),
        (1151, "resumed from runs/ce/last.pth after epoch 3"), (1240, epoch_message(4, val=30.0)),
        (1330, epoch_message(5, val=31.5))])
    assert run_status.main([str(tmp_path / "runs")]) == 0
    assert rows(capsys.readouterr().out) == [
        "| ce | erm: ce | 0 | 5 of 10 | stopped | 31.50 (epoch 5) | 30.25 (epoch 2) | 60 s | 5 min |"]


def dead_pid():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def name_holder(folder, pid, host=None):
    (folder / LOCK_FILE).write_text(f"process {pid} on host {host or socket.gethostname()} since 2026-12-01 10:00:00\n")


def test_finished_running_stopped_and_foreign_holders(tmp_path, capsys):
    log = [(0, "run folder: x"), (60, epoch_message(1, val=50.0, test=55.0)), (3660, epoch_message(2, test=56.0))]
    write_run(tmp_path / "done", epochs_total=2, log=log, method="lcsl", options={"alpha": 1.0})
    (tmp_path / "done" / "results.json").write_text(json.dumps({"last": {"epoch": 2, "top1": 56.0}}))
    write_run(tmp_path / "live", epochs_total=12, log=log, options={"loss": "ldam", "train_rule": "drw"})
    name_holder(tmp_path / "live", os.getpid())
    # A stopped run's lock file keeps its last holder's line; that process may be gone, or its
    # number may belong to another program now (this test process, which holds no lock there).
    write_run(tmp_path / "dead", epochs_total=12, log=log)
    name_holder(tmp_path / "dead", dead_pid())
    write_run(tmp_path / "reused", epochs_total=12, log=log)
    name_holder(tmp_path / "reused", os.getpid())
    write_run(tmp_path / "far", epochs_total=12, log=log)
    name_holder(tmp_path / "far", 7, host="elsewhere-42")
    write_run(tmp_path / "new", epochs_total=12, log=[(0, "run folder: new")])
    with open(tmp_path / "live" / LOCK_FILE, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as RunFolderLock holds it
        assert run_status.main([str(tmp_path)]) == 0
    expected = [
        "| dead | erm: ce | 0 | 2 of 12 | stopped | 50.00 (epoch 1) | 56.00 (epoch 2) | 60 min | 10.0 h |",
        "| done | lcsl | 0 | 2 of 2 | finished | 50.00 (epoch 1) | 56.00 (epoch 2) | 60 min | - |",
        "| far | erm: ce | 0 | 2 of 12 | last held on host elsewhere-42 (not checked) | 50.00 (epoch 1) "
        "| 56.00 (epoch 2) | 60 min | 10.0 h |",
        f"| live | erm: ldam, drw | 0 | 2 of 12 | running (process {os.getpid()}) | 50.00 (epoch 1) "
        "| 56.00 (epoch 2) | 60 min | 10.0 h |",
        "| new | erm: ce | 0 | 0 of 12 | not started | - | - | - | - |",
        "| reused | erm: ce | 0 | 2 of 12 | stopped | 50.00 (epoch 1) | 56.00 (epoch 2) | 60 min | 10.0 h |"]
    if run_status.held_flocks() is None:  # no /proc/locks: a live named process is all there is to go by
        expected[5] = expected[5].replace("| stopped |", f"| running (process {os.getpid()}) |")
    assert rows(capsys.readouterr().out) == expected


def test_a_finished_run_continued_with_more_epochs_is_not_finished_until_its_results_catch_up(tmp_path, capsys):
    # config.json is written when a run starts; `--resume auto --epochs 4` on a finished 2-epoch
    # run keeps it and the old results.json (last epoch 2) until the new last epoch is reported.
    log = [(0, "run folder: x"), (60, epoch_message(1, test=50.0)), (120, epoch_message(2, test=51.0)),
           (500, "run folder: x"), (600, epoch_message(3, test=52.0))]
    write_run(tmp_path / "runs" / "longer", epochs_total=2, log=log)
    (tmp_path / "runs" / "longer" / "results.json").write_text(json.dumps({"last": {"epoch": 2, "top1": 51.0}}))
    assert run_status.main([str(tmp_path / "runs")]) == 0
    assert rows(capsys.readouterr().out) == [
        "| longer | erm: ce | 0 | 3 (config.json: 2) | stopped | - | 52.00 (epoch 3) | 60 s | - |"]
    name_holder(tmp_path / "runs" / "longer", os.getpid())
    with open(tmp_path / "runs" / "longer" / LOCK_FILE, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_status.main([str(tmp_path / "runs")]) == 0
    assert f"| running (process {os.getpid()}) |" in capsys.readouterr().out
    (tmp_path / "runs" / "longer" / "results.json").write_text(json.dumps({"last": {"epoch": 3, "top1": 52.0}}))
    assert run_status.main([str(tmp_path / "runs")]) == 0
    assert "| 3 (config.json: 2) | finished |" in capsys.readouterr().out


def test_links_are_followed_once_and_an_unreadable_run_is_a_row(tmp_path, capsys):
    log = [(0, "run folder: x"), (60, epoch_message(1, test=50.0))]
    write_run(tmp_path / "runs" / "b_run", epochs_total=1, log=log)
    (tmp_path / "runs" / "a_latest").symlink_to(tmp_path / "runs" / "b_run")  # listed under its own name
    (tmp_path / "runs" / "b_run" / "up").symlink_to(tmp_path / "runs")  # a loop is walked once
    (tmp_path / "elsewhere" / "c_run").mkdir(parents=True)
    (tmp_path / "elsewhere" / "c_run" / "config.json").write_text("{not json")
    (tmp_path / "runs" / "c_link").symlink_to(tmp_path / "elsewhere")
    assert run_status.main([str(tmp_path / "runs")]) == 0
    assert rows(capsys.readouterr().out) == [
        "| b_run | erm: ce | 0 | 1 of 1 | stopped | - | 50.00 (epoch 1) | - | - |",
        f"| c_link/c_run | ? | - | 0 | unreadable: {tmp_path / 'runs' / 'c_link' / 'c_run' / 'config.json'} is not "
        "readable JSON (JSONDecodeError) | - | - | - | - |"]


def test_the_kernels_lock_list_names_the_holder(tmp_path):
    if run_status.held_flocks() is None:
        pytest.skip("no /proc/locks on this system")
    path = tmp_path / LOCK_FILE
    path.write_text("")
    stat = os.stat(path)
    with open(path, "r+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The process and the inode; some file systems list another device number than stat gives.
        assert (os.getpid(), stat.st_ino) in [(pid, inode) for pid, _, _, inode in run_status.held_flocks()]
        assert run_status.holder_state(str(tmp_path)) == f"running (process {os.getpid()})"
    assert all(inode != stat.st_ino for _, _, _, inode in run_status.held_flocks())


def test_without_a_lock_list_a_live_named_process_counts_as_running(tmp_path, monkeypatch):
    monkeypatch.setattr(run_status, "held_flocks", lambda: None)
    name_holder(tmp_path, os.getpid())
    assert run_status.holder_state(str(tmp_path)) == f"running (process {os.getpid()})"
    name_holder(tmp_path, dead_pid())
    assert run_status.holder_state(str(tmp_path)) is None


def test_a_real_run_reads_as_finished_with_its_last_test_score(cifar10_root, tmp_path, monkeypatch, capsys):
    import main as main_script
    from utils.runner import run_training

    argv = ["--dataset", "cifar10", "--data_root", cifar10_root.root, "--imb_factor", "0.1", "--method", "ldam_drw",
            "--epochs", "2", "-b", "16", "--limit_batches", "2", "--workers", "0", "--progress", "False",
            "--download", "False", "--seed", "3", "--out_dir", str(tmp_path / "runs" / "ldam")]
    monkeypatch.setattr(sys, "argv", ["main.py", *argv])
    run_training(*main_script.build_config(main_script.get_args_parser().parse_args(argv)))
    with open(tmp_path / "runs" / "ldam" / "results.json") as stream:
        last = json.load(stream)["last"]
    capsys.readouterr()
    assert run_status.main([str(tmp_path / "runs" / "ldam")]) == 0
    (row,) = rows(capsys.readouterr().out)
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:6] == ["erm: ldam, drw", "3", "2 of 2", "finished", "-"]  # no validation split here
    assert cells[6] == f"{last['top1']:.2f} (epoch 2)" and cells[8] == "-"


def test_wrong_folders_get_one_line_and_exit_2(tmp_path, capsys):
    assert run_status.main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == (f"run_status.py: error: {tmp_path / 'missing'} is not a folder "
                                       "(give the folder that holds the run folders)\n")
    assert run_status.main([str(tmp_path)]) == 2
    assert "no run folder (one with config.json)" in capsys.readouterr().err
