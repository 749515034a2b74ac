"""Fault injection for run folders: a folder holds one run, a live run locks it, --resume and
--resume auto never write somewhere unexpected, interrupted writes are cleaned up, and a
diverged run keeps only finite checkpoints. Tiny synthetic CIFAR-10, one or two short epochs."""
import errno
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import main as main_script
from conftest import run_ranks
from methods.erm import ERM
from utils import dist
from utils.checkpoint import load_checkpoint
from utils.cli import run_guarded
from utils.config import ConfigError
from utils.run_folder import LOCK_FILE, RunFolderLock
from utils.runner import run_training
from utils.training import DivergedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def argv(data_root, *extra):
    return ["--dataset", "cifar10", "--data_root", data_root, "--imb_factor", "0.1", "--method", "ce",
            "--epochs", "1", "-b", "16", "--limit_batches", "2", "--workers", "0", "--progress", "False",
            "--download", "False", "--amp", "none", *extra]


def config_for(data_root, *extra):
    return main_script.build_config(main_script.get_args_parser().parse_args(argv(data_root, *extra)))[0]


def train(data_root, *extra):
    return run_training(config_for(data_root, *extra), "ce")


def guarded(capsys, data_root, *extra):
    """main.py's body as the command line runs it: (exit code, stderr)."""
    args = main_script.get_args_parser().parse_args(argv(data_root, *extra))
    capsys.readouterr()
    code = run_guarded("main.py", lambda: main_script.main(args))
    return code, capsys.readouterr().err


def snapshot(folder):
    """Every file below `folder` (hidden ones included) with its bytes."""
    files = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as stream:
                files[os.path.relpath(path, folder)] = stream.read()
    return files


def log_of(run):
    with open(os.path.join(run, "log.txt")) as stream:
        return stream.read()


@pytest.fixture
def finished_run(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    train(cifar10_root.root, "--out_dir", run)
    return run


# ---- never lose or mix runs ------------------------------------------------------------------------
def test_a_folder_holding_a_run_is_refused_and_left_byte_identical(finished_run, cifar10_root, capsys):
    before = snapshot(finished_run)
    assert {"config.json", "log.txt", "last.pth", "best.pth", "results.json"} <= set(before)
    code, err = guarded(capsys, cifar10_root.root, "--out_dir", finished_run)
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert finished_run in err and "--resume auto" in err and "--out_dir" in err and "--overwrite" in err
    assert snapshot(finished_run) == before


def test_overwrite_deletes_the_old_run_and_logs_what_it_deleted(finished_run, cifar10_root):
    old_log = log_of(finished_run)
    with open(os.path.join(finished_run, "notes.md"), "w") as stream:
        stream.write("mine")  # not a run file: --overwrite leaves it alone
    open(os.path.join(finished_run, ".tmp-killed.pth"), "wb").close()
    results = train(cifar10_root.root, "--out_dir", finished_run, "--overwrite", "--epochs", "2")
    assert results["last"]["epoch"] == 2
    log = log_of(finished_run)
    assert old_log not in log  # the new log starts afresh
    line = next(line for line in log.splitlines() if "--overwrite" in line)
    for name in (".tmp-killed.pth", "config.json", "log.txt", "last.pth", "best.pth", "results.json", "tb/"):
        assert name in line, name
    assert open(os.path.join(finished_run, "notes.md")).read() == "mine"
    assert not os.path.exists(os.path.join(finished_run, ".tmp-killed.pth"))
    assert load_checkpoint(os.path.join(finished_run, "last.pth"))["epoch"] == 2


@pytest.mark.parametrize("through_link", [False, True], ids=["same-path", "symlink"])
def test_a_run_never_writes_into_the_run_it_starts_from(finished_run, cifar10_root, tmp_path, capsys, through_link):
    before = snapshot(finished_run)
    out_dir = finished_run
    if through_link:
        out_dir = str(tmp_path / "link")
        os.symlink(finished_run, out_dir)
    code, err = guarded(capsys, cifar10_root.root, "--pretrained_model", finished_run, "--out_dir", out_dir,
                        "--overwrite")
    assert code == 2 and "is the folder of --pretrained_model" in err and err.strip().count("\n") == 0
    assert snapshot(finished_run) == before


def test_a_config_json_that_is_not_an_object_counts_as_unreadable(finished_run, cifar10_root, capsys):
    """JSON of another shape is read like a damaged config.json: the run's configuration then comes
    from its last.pth (here: the finished run, nothing to do); with no checkpoint either, refused."""
    with open(os.path.join(finished_run, "config.json"), "w") as stream:
        stream.write("[1, 2]")
    code, err = guarded(capsys, cifar10_root.root, "--out_dir", finished_run, "--resume", "auto")
    assert code == 0 and err == ""
    for name in ("last.pth", "best.pth", "results.json"):
        os.remove(os.path.join(finished_run, name))
    code, err = guarded(capsys, cifar10_root.root, "--out_dir", finished_run, "--resume", "auto")
    assert code == 2 and "no readable config.json to compare with" in err and err.strip().count("\n") == 0


def test_a_file_operation_the_machine_refuses_is_one_line(capsys):
    def body():
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/runs/x/.run.lock")

    assert run_guarded("main.py", body) == 2
    assert capsys.readouterr().err == "main.py: error: /runs/x/.run.lock: Read-only file system\n"


def test_resume_from_a_file_that_is_no_checkpoint_says_so(finished_run, cifar10_root, capsys):
    config = os.path.join(finished_run, "config.json")
    code, err = guarded(capsys, cifar10_root.root, "--resume", config, "--epochs", "2")
    assert code == 2 and f"{config} is not a checkpoint: resume from the run folder or its last.pth" in err


def test_a_validation_split_that_holds_out_nothing_names_the_cause(cifar10_root, tmp_path, capsys):
    run = str(tmp_path / "run")
    code, err = guarded(capsys, cifar10_root.root, "--imb_factor", "1", "--val_per_class", "2", "--select_on", "val",
                        "--out_dir", run)
    assert code == 2 and "--val_per_class 2 holds out nothing" in err and "--select_on test" in err
    assert not os.path.exists(run)


def test_overwrite_removes_a_link_in_the_run_folder_never_its_target(tmp_path):
    # tb/ as a link to a folder of the user's (tensorboard logs kept elsewhere): --overwrite
    # removes the link, the folder it points to keeps every file.
    from utils.run_folder import discard_run_outputs

    run, elsewhere = tmp_path / "run", tmp_path / "tensorboard"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "events.out").write_text("kept")
    (run / "config.json").write_text("{}")
    os.symlink(str(elsewhere), str(run / "tb"))
    os.symlink(str(tmp_path / "gone"), str(run / "log.txt"))  # a dangling link is removed too
    assert sorted(discard_run_outputs(str(run))) == ["config.json", "log.txt", "tb"]
    assert os.listdir(run) == [] and (elsewhere / "events.out").read_text() == "kept"


def test_overwrite_and_resume_contradict(cifar10_root, tmp_path):
    with pytest.raises(ConfigError, match="--overwrite .*--resume"):
        config_for(cifar10_root.root, "--out_dir", str(tmp_path / "run"), "--overwrite", "--resume", "auto")


def test_a_locked_folder_is_refused_naming_the_holder(cifar10_root, tmp_path, capsys):
    run = str(tmp_path / "run")
    lock = RunFolderLock(run)
    lock.acquire()  # another open file description: refused like another process would be
    try:
        before = snapshot(run)
        for extra in ((), ("--resume", "auto"), ("--overwrite",)):
            code, err = guarded(capsys, cifar10_root.root, "--out_dir", run, *extra)
            assert code == 2 and err.strip().count("\n") == 0
            assert f"run folder {run} is in use by process {os.getpid()}" in err
        assert snapshot(run) == before  # the lock file alone: nothing was written
    finally:
        lock.release()
    train(cifar10_root.root, "--out_dir", run)  # released: the folder is usable
    assert os.path.isfile(os.path.join(run, "results.json"))


def test_a_lock_dies_with_its_process(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from utils.run_folder import RunFolderLock; "
                               "RunFolderLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)",
         run], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid} "):
            train(cifar10_root.root, "--out_dir", run)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    assert os.path.isfile(os.path.join(run, LOCK_FILE))  # the file stays; the kernel dropped the lock
    assert train(cifar10_root.root, "--out_dir", run)["last"]["epoch"] == 1


@pytest.mark.slow
def test_sigterm_closes_the_run_and_names_the_way_to_continue(cifar10_root, tmp_path):
    """A scheduler's or a shutting-down machine's SIGTERM: the log says where the run stopped,
    the folder is released, stderr has one line, and --resume auto continues the run."""
    run = str(tmp_path / "run")
    command = [sys.executable, "main.py", *argv(cifar10_root.root, "--out_dir", run, "--epochs", "500")]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = os.path.join(run, "log.txt")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.isfile(os.path.join(run, "last.pth"))
                                          and "epoch 2:" in open(log).read()):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err[-2000:]
    assert err.strip().splitlines() == ["main.py: terminated (SIGTERM); continue with --resume auto (or the run's "
                                        "last.pth)"]
    assert "training interrupted (SIGTERM): last.pth holds the last finished epoch; continue with --resume auto" \
        in open(log).read()
    finished = load_checkpoint(os.path.join(run, "last.pth"))["epoch"]
    assert 1 <= finished < 500  # "epoch 2:" is logged before its last.pth is written
    resumed = train(cifar10_root.root, "--out_dir", run, "--epochs", str(finished + 1), "--resume", "auto")
    assert resumed["last"]["epoch"] == finished + 1


@pytest.mark.slow
def test_two_runs_started_on_one_folder_leave_one_run(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = [[sys.executable, "main.py", *argv(cifar10_root.root, "--out_dir", run, "--seed", str(seed))]
                for seed in (1, 2)]
    processes = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for command in commands]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in outcomes) == [0, 2], outcomes
    winner = [seed for seed, (code, _) in zip((1, 2), outcomes) if code == 0][0]
    loser_err = [err for code, err in outcomes if code == 2][0]
    assert run in loser_err and loser_err.strip().count("\n") == 0
    assert json.load(open(os.path.join(run, "config.json")))["run"]["seed"] == winner
    assert json.load(open(os.path.join(run, "results.json")))["seed"] == winner
    assert log_of(run).count("run folder:") == 1  # one run's log, not two interleaved


def test_resume_into_another_out_dir_is_refused(finished_run, cifar10_root, tmp_path):
    other = str(tmp_path / "other")
    before = snapshot(finished_run)
    with pytest.raises(ConfigError, match=f"--resume {finished_run} continues the run in {finished_run}, "
                                          f"but --out_dir names {other}"):
        train(cifar10_root.root, "--resume", finished_run, "--out_dir", other, "--epochs", "2")
    assert not os.path.exists(other) and snapshot(finished_run) == before


def test_resume_auto_with_out_dir_of_another_configuration_is_refused(finished_run, cifar10_root):
    before = snapshot(finished_run)
    with pytest.raises(ConfigError, match=r"--resume auto: .* holds a run with other settings \(--lr=0.1 there, "
                                          r"0.05 here\): choose another --out_dir"):
        train(cifar10_root.root, "--out_dir", finished_run, "--resume", "auto", "--lr", "0.05")
    assert snapshot(finished_run) == before


def test_resume_auto_sweep_keeps_one_folder_per_configuration(cifar10_root, tmp_path, capsys):
    root = str(tmp_path / "log")
    sweep = {lr: train(cifar10_root.root, "--root_log", root, "--resume", "auto", "--lr", lr)["run_dir"]
             for lr in ("0.1", "0.05")}
    assert len(set(sweep.values())) == 2 and len(os.listdir(root)) == 2
    # A second pass with more epochs continues each run in its own folder.
    for lr, run in sweep.items():
        results = train(cifar10_root.root, "--root_log", root, "--resume", "auto", "--lr", lr, "--epochs", "2")
        assert results["run_dir"] == run and results["last"]["epoch"] == 2
        assert "resumed from" in log_of(run)
        assert json.load(open(os.path.join(run, "config.json")))["optim"]["lr"] == float(lr)
    # A third pass finds both finished: nothing is trained or written.
    before = {run: snapshot(run) for run in sweep.values()}
    capsys.readouterr()
    for lr, run in sweep.items():
        results = train(cifar10_root.root, "--root_log", root, "--resume", "auto", "--lr", lr, "--epochs", "2")
        assert results["run_dir"] == run and results["last"]["epoch"] == 2
    assert capsys.readouterr().out.count("finished run") == 2
    assert {run: snapshot(run) for run in sweep.values()} == before and len(os.listdir(root)) == 2
    # A new value of the swept flag starts its own run.
    third = train(cifar10_root.root, "--root_log", root, "--resume", "auto", "--lr", "0.02")["run_dir"]
    assert third not in sweep.values() and len(os.listdir(root)) == 3


def test_runs_named_in_the_same_second_get_their_own_folders(cifar10_root, tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda *a: "20260101-000000")
    root = str(tmp_path / "log")
    first = train(cifar10_root.root, "--root_log", root)["run_dir"]
    second = train(cifar10_root.root, "--root_log", root)["run_dir"]
    assert second == first + "-2"


def test_orphaned_temporary_files_are_removed_when_the_run_continues(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    train(cifar10_root.root, "--out_dir", run)
    orphans = [".tmp-a1b2c3.pth", "results.json.tmp"]  # a kill inside save_atomic / write_json
    for name in orphans:
        with open(os.path.join(run, name), "wb") as stream:
            stream.write(b"half written")
    train(cifar10_root.root, "--out_dir", run, "--resume", "auto", "--epochs", "2")
    assert not any(os.path.exists(os.path.join(run, name)) for name in orphans)
    assert f"removed 2 temporary file(s) an interrupted write left in {run}: {', '.join(orphans)}" in log_of(run)
    # An --out_dir that holds no run is the user's folder: a file there named like a temporary
    # is theirs, and stays.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "log.txt.tmp").write_text("my notes")
    train(cifar10_root.root, "--out_dir", str(mine))
    assert (mine / "log.txt.tmp").read_text() == "my notes"


def _ddp_worker(rank, world, port, data_root, run, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    outcome = {}
    try:
        outcome["epoch"] = train(data_root, "--out_dir", run)["last"]["epoch"]
        try:
            train(data_root, "--out_dir", run)  # a folder holding a run: refused on every rank
        except ConfigError as error:
            outcome["refused"] = str(error)
    finally:
        dist.cleanup()
    with open(f"{out}.{rank}", "w") as stream:
        json.dump(outcome, stream)


def test_ddp_rank_0_claims_the_folder_and_a_refusal_stops_every_rank(cifar10_root, tmp_path):
    run, out = str(tmp_path / "run"), str(tmp_path / "outcome")
    run_ranks(_ddp_worker, cifar10_root.root, run, out)
    for rank in range(2):
        outcome = json.load(open(f"{out}.{rank}"))
        assert outcome["epoch"] == 1 and outcome["refused"].startswith(f"--out_dir {run} already holds a run")
    assert log_of(run).count("run folder:") == 1 and os.path.isfile(os.path.join(run, "results.json"))


def test_lcsl_resume_auto_skips_its_finished_run_report_included(cifar10_root, tmp_path, capsys):
    import train_LCSL as lcsl_script

    run = str(tmp_path / "lcsl")
    args = lcsl_script.get_args_parser().parse_args(
        ["--dataset", "cifar10", "--data_root", cifar10_root.root, "--download", "False", "--imb_factor", "0.1",
         "--epochs", "1", "--limit_batches", "2", "--batch_size", "16", "--val_per_class", "2", "--workers", "0",
         "--progress", "False", "--amp", "none", "--out_dir", run, "--resume", "auto"])
    assert run_guarded("train_LCSL.py", lambda: lcsl_script.main(args)) == 0
    assert "selected_report" in json.load(open(os.path.join(run, "results.json")))
    before = snapshot(run)
    capsys.readouterr()
    assert run_guarded("train_LCSL.py", lambda: lcsl_script.main(args)) == 0
    out = capsys.readouterr().out
    assert "finished run" in out and "LCSL final report" not in out and snapshot(run) == before


# ---- a diverged run keeps only good checkpoints ---------------------------------------------------
def poison_after_epoch(monkeypatch, bad_epoch):
    """NaN in one BatchNorm buffer at the end of training epoch `bad_epoch` (1-based): the loss of
    that epoch was finite, so only the check before the checkpoint write can catch it."""
    seen = []
    original = ERM.epoch_statistics

    def poisoned(self):
        seen.append(1)
        if len(seen) == bad_epoch:
            self.model.backbone.bn1.running_var.fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(ERM, "epoch_statistics", poisoned)


def test_divergence_keeps_the_previous_checkpoints_and_logs_why(cifar10_root, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    poison_after_epoch(monkeypatch, bad_epoch=2)
    with pytest.raises(DivergedError, match=r"diverged in epoch 2: 1 parameter/buffer tensor\(s\) hold NaN/inf "
                                            r"\(first: model.backbone.bn1.running_var\); stopped before writing "
                                            r"last.pth"):
        train(cifar10_root.root, "--out_dir", run, "--epochs", "2", "--lr", "0.1")
    for name in ("last.pth", "best.pth"):
        payload = load_checkpoint(os.path.join(run, name))
        assert payload["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in payload["state_dict"].values() if v.is_floating_point())
    assert "training stopped: training diverged in epoch 2" in log_of(run)
    assert "lower --lr (this run: 0.1)" in log_of(run)
    assert not glob.glob(os.path.join(run, ".tmp-*")) and not os.path.exists(os.path.join(run, "results.json"))


def test_a_run_that_fails_in_its_first_epoch_leaves_no_folder_for_the_corrected_command(cifar10_root, tmp_path,
                                                                                          monkeypatch):
    run = str(tmp_path / "run")
    poison_after_epoch(monkeypatch, bad_epoch=1)
    with pytest.raises(DivergedError, match="no checkpoint was written"):
        train(cifar10_root.root, "--out_dir", run)
    assert not os.path.exists(run)  # the folder was this command's: nothing of it is left
    monkeypatch.undo()
    assert train(cifar10_root.root, "--out_dir", run)["last"]["epoch"] == 1  # no --overwrite needed


def test_a_failed_first_epoch_in_a_folder_made_beforehand_removes_only_the_run_files(cifar10_root, tmp_path,
                                                                                     monkeypatch):
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)  # the user's own: not a run marker, so the folder counts as free
    (run / "tb" / "mine.txt").write_text("mine")
    (run / "notes.txt").write_text("mine")
    poison_after_epoch(monkeypatch, bad_epoch=1)
    with pytest.raises(DivergedError):
        train(cifar10_root.root, "--out_dir", str(run))
    assert sorted(os.listdir(run)) == [LOCK_FILE, "notes.txt", "tb"] and (run / "notes.txt").read_text() == "mine"
    assert (run / "tb" / "mine.txt").read_text() == "mine"
    monkeypatch.undo()
    assert train(cifar10_root.root, "--out_dir", str(run))["last"]["epoch"] == 1  # the folder is free


def test_an_interrupted_first_epoch_keeps_its_folder_and_a_failed_restart_keeps_it_too(cifar10_root, tmp_path,
                                                                                      monkeypatch):
    """Ctrl-C is no failure: the run is kept, and --resume auto starts it again. A restart that then
    fails removes nothing the interrupted attempt wrote."""
    run = str(tmp_path / "run")

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ERM, "epoch_statistics", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cifar10_root.root, "--out_dir", run)
    assert sorted(os.listdir(run)) == [LOCK_FILE, "config.json", "log.txt", "tb"]
    assert "training interrupted (Ctrl-C): no epoch finished, so it starts again; continue with --resume auto" \
        in log_of(run)
    monkeypatch.undo()
    poison_after_epoch(monkeypatch, bad_epoch=1)
    with pytest.raises(DivergedError):
        train(cifar10_root.root, "--out_dir", run, "--resume", "auto")
    assert sorted(os.listdir(run)) == [LOCK_FILE, "config.json", "log.txt", "tb"]
    assert "training interrupted" in log_of(run)  # the first attempt's log is still there
    monkeypatch.undo()
    assert train(cifar10_root.root, "--out_dir", run, "--resume", "auto")["last"]["epoch"] == 1
    assert "stopped before its first checkpoint: starting it again from epoch 1" in log_of(run)


def test_a_continued_run_that_fails_keeps_its_folder_whole(finished_run, cifar10_root, tmp_path, monkeypatch):
    """A branch made as --resume advises (the run's files and one checkpoint copied to a folder of its
    own), continued, then failing in its first new epoch: nothing of the folder is removed."""
    import shutil

    branch = tmp_path / "branch"
    branch.mkdir()
    for name in ("config.json", "log.txt", "tb"):
        source = os.path.join(finished_run, name)
        (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, branch / name)
    shutil.copy(os.path.join(finished_run, "last.pth"), branch / "epoch1.pth")
    poison_after_epoch(monkeypatch, bad_epoch=1)  # this process's first epoch: epoch 2 of the run
    with pytest.raises(DivergedError):
        train(cifar10_root.root, "--resume", str(branch / "epoch1.pth"), "--epochs", "2")
    assert sorted(os.listdir(branch)) == [LOCK_FILE, "config.json", "epoch1.pth", "log.txt", "tb"]


@pytest.mark.parametrize("extra, flag", [
    (("--aug", "standard", "standard"), "--aug gave 2 recipes (standard standard) but the method trains on 1 view"),
    (("--randaug_n", "2"), "--randaug_n does not apply to the training recipe (--aug standard, which takes "
                           "--color_jitter)"),
    (("--method", "moco", "--moco_k", "8"), "--moco_k 8: the queue must hold a global batch of keys (-b 16)"),
], ids=["views", "recipe-option", "moco-queue"])
def test_flags_the_training_transform_or_method_cannot_use_are_refused_before_any_folder(
        cifar10_root, tmp_path, capsys, extra, flag):
    run = str(tmp_path / "run")
    code, err = guarded(capsys, cifar10_root.root, "--out_dir", run, *extra)
    assert code == 2 and err.strip().count("\n") == 0 and flag in err, err
    assert not os.path.exists(run)


@pytest.mark.parametrize("extra", [("--limit_batches", "3"), ("--limit_batches", "10")],
                         ids=["weights-non-finite", "loss-non-finite"])
def test_lr_1e6_stops_in_one_line_without_a_non_finite_checkpoint(cifar10_root, tmp_path, capsys, extra):
    """The issue's case: at --lr 1e6 the weights (3 steps) or the loss (10 steps) turn non-finite."""
    run = str(tmp_path / "run")
    code, err = guarded(capsys, cifar10_root.root, "--out_dir", run, "--lr", "1e6", "--warmup_epochs", "0", *extra)
    assert code == 2 and err.strip().count("\n") == 0 and "--lr" in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(run, "last.pth")) and not os.path.exists(os.path.join(run, "best.pth"))
    assert not os.path.exists(run)  # nothing was trained: the corrected command gets the folder
