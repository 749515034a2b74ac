"""Fault injection for what a continuation may write: an explicit --resume never replaces
another run or a newer state of its own run, folders that cannot be locked or are files are one
line, a bad --pretrained_model leaves no folder, and --which best never scores last.pth."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import main as main_script
from test_faults_runs import ROOT, argv, config_for, guarded, snapshot, train
from utils.cli import run_guarded
from utils.checkpoint import CheckpointError, load_checkpoint, read_torch_file


@pytest.fixture
def two_epoch_run(cifar10_root, tmp_path):
    """A finished two-epoch CE run whose best.pth is an epoch older than its last.pth."""
    run = str(tmp_path / "run")
    train(cifar10_root.root, "--out_dir", run, "--epochs", "2")
    best = load_checkpoint(os.path.join(run, "best.pth"))
    if best["epoch"] == 2:  # make the older state explicit whatever epoch selection picked
        shutil.copy(os.path.join(run, "last.pth"), os.path.join(run, "snapshot.pth"))
    return run


def test_resume_from_a_file_in_another_runs_folder_is_refused(two_epoch_run, cifar10_root, tmp_path, capsys):
    other = str(tmp_path / "other")
    train(cifar10_root.root, "--out_dir", other, "--lr", "0.05")  # a different run
    planted = os.path.join(other, "ce_snapshot.pth")
    shutil.copy(os.path.join(two_epoch_run, "last.pth"), planted)
    before = snapshot(other)
    code, err = guarded(capsys, cifar10_root.root, "--epochs", "3", "--resume", planted)
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "holds another run" in err and "lr=0.05" in err
    assert snapshot(other) == before


def test_resume_from_an_older_file_of_the_run_is_refused(two_epoch_run, cifar10_root, capsys):
    older = os.path.join(two_epoch_run, "snapshot.pth")
    if not os.path.exists(older):
        older = os.path.join(two_epoch_run, "best.pth")
    before = snapshot(two_epoch_run)
    code, err = guarded(capsys, cifar10_root.root, "--epochs", "3", "--resume", older)
    assert code == 2 and err.strip().count("\n") == 0
    assert "newer" in err and "last.pth" in err
    assert snapshot(two_epoch_run) == before


def test_resume_with_fewer_epochs_than_trained_is_refused(two_epoch_run, cifar10_root, capsys):
    os.remove(os.path.join(two_epoch_run, "results.json"))  # an unfinished-looking run
    before = snapshot(two_epoch_run)
    code, err = guarded(capsys, cifar10_root.root, "--epochs", "1", "--resume", two_epoch_run)
    assert code == 2 and "--epochs 1" in err and "--epochs 2 or more" in err
    assert snapshot(two_epoch_run) == before


def test_explicit_resume_of_a_finished_run_changes_nothing(two_epoch_run, cifar10_root, capsys):
    before = snapshot(two_epoch_run)
    code, err = guarded(capsys, cifar10_root.root, "--epochs", "2", "--resume", two_epoch_run)
    assert code == 0 and err == ""
    assert snapshot(two_epoch_run) == before


def test_out_dir_that_is_a_file_is_one_line(cifar10_root, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out_dir in (str(afile), str(afile / "sub")):
        code, err = guarded(capsys, cifar10_root.root, "--out_dir", out_dir)
        assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
        assert str(afile) in err
    assert afile.read_text() == "keep me"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root's setpriv to drop the capability that ignores file permissions")
def test_a_read_only_run_folder_is_one_line(two_epoch_run, cifar10_root, tmp_path):
    """Another user's (or an archived) run: its lock file cannot be opened for writing."""
    for base, folders, files in os.walk(two_epoch_run):
        for name in folders + files:
            os.chmod(os.path.join(base, name), 0o555 if name in folders else 0o444)
    os.chmod(two_epoch_run, 0o555)
    common = ["--dataset", "cifar10", "--data_root", cifar10_root.root, "--imb_factor", "0.1", "--method", "ce",
              "-b", "16", "--limit_batches", "2", "--workers", "0", "--progress", "False", "--download", "False",
              "--amp", "none", "--out_dir", two_epoch_run]
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    try:
        for extra, expected in ((["--epochs", "2", "--resume", "auto"], 0), (["--epochs", "3", "--resume", "auto"], 2),
                                (["--epochs", "2", "--overwrite"], 2)):
            result = subprocess.run(drop + [sys.executable, os.path.join(ROOT, "main.py"), *common, *extra],
                                    capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
            assert result.returncode == expected, result.stderr[-2000:]
            assert "Traceback" not in result.stderr and result.stderr.strip().count("\n") == 0
    finally:
        for base, folders, files in os.walk(two_epoch_run):
            os.chmod(base, 0o755)


def test_a_bad_pretrained_model_leaves_no_run_folder(cifar10_root, tmp_path, capsys):
    run = tmp_path / "run"
    for bad in (str(tmp_path / "nothere.pth"), str(tmp_path / "garbage.pth")):
        if bad.endswith("garbage.pth"):
            with open(bad, "wb") as stream:
                stream.write(b"not a checkpoint at all")
        code, err = guarded(capsys, cifar10_root.root, "--out_dir", str(run), "--pretrained_model", bad)
        assert code == 2 and err.strip().count("\n") == 0 and bad in err
        assert not run.exists()
    assert "--pretrained_model" in guarded(capsys, cifar10_root.root, "--out_dir", str(run), "--pretrained_model",
                                           str(tmp_path / "nothere.pth"))[1]


def test_which_best_never_scores_last(two_epoch_run):
    os.remove(os.path.join(two_epoch_run, "best.pth"))
    with pytest.raises(CheckpointError, match="no best.pth in run folder .*--which last"):
        load_checkpoint(two_epoch_run, prefer="best.pth", exact=True)
    assert load_checkpoint(two_epoch_run, prefer="last.pth", exact=True)["epoch"] == 2
    # With neither file (a folder of copied results) nothing else is offered.
    os.remove(os.path.join(two_epoch_run, "last.pth"))
    for prefer in ("best.pth", "last.pth"):
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(two_epoch_run, prefer=prefer, exact=True)
        assert str(caught.value) == (f"no checkpoint (best.pth / last.pth) in run folder {two_epoch_run} "
                                     "(it holds results.json: checkpoints stay in the run's own folder)")


def test_a_json_file_is_not_a_checkpoint_and_trust_is_not_suggested(two_epoch_run):
    with pytest.raises(CheckpointError) as caught:
        read_torch_file(os.path.join(two_epoch_run, "config.json"))
    message = str(caught.value)
    assert "not a torch" in message and "--trust_checkpoint" not in message and "\n" not in message


def test_resume_without_the_runs_flags_names_every_differing_flag_before_the_data(
        two_epoch_run, cifar10_root, tmp_path, capsys, monkeypatch):
    # A bare `--resume RUN` takes the defaults for every other flag (this run's were --dataset
    # cifar10 --imb_factor 0.1 --method ce ...). The refusal comes before any data is read (the
    # default --data_root does not exist, and would have been the first error), names the
    # method first and every other differing flag, and quotes the command that started the run.
    from utils.run_folder import started_as

    main_args = argv(cifar10_root.root, "--out_dir", str(tmp_path / "quoted"))
    monkeypatch.setattr(sys, "argv", ["/somewhere/main.py", *main_args])
    config = config_for(cifar10_root.root)
    # the script as it was named (a path that works from the folder the command ran in)
    assert started_as(config) == {"command": "python /somewhere/main.py " + " ".join(main_args),
                                  "command_dir": os.getcwd()}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert started_as(config)["command"].startswith("torchrun --nproc_per_node=2 --nnodes=2 /somewhere/main.py --dataset")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(sys, "argv", ["-c"])  # a library call records no command
    assert started_as(config) == {}

    with open(os.path.join(two_epoch_run, "config.json")) as stream:
        saved = json.load(stream)
    saved.update(command="python main.py --imb_factor 0.1 --method ce --out_dir run", command_dir="/home/me")
    with open(os.path.join(two_epoch_run, "config.json"), "w") as stream:
        json.dump(saved, stream)
    before = snapshot(two_epoch_run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # ./data is not there
    args = main_script.get_args_parser().parse_args(["--resume", two_epoch_run, "--epochs", "3"])
    capsys.readouterr()
    code = run_guarded("main.py", lambda: main_script.main(args))
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "the checkpoint was trained with other settings (method='erm' there, 'bccl' here; " in err
    for difference in ("--imb_factor=0.1 there, 0.01 here", "-b/--batch_size=16 there, 128 here",
                       "--amp='none' there, 'auto' here"):
        assert difference in err, difference
    assert err.strip().endswith("; the run was started in /home/me as: python main.py --imb_factor 0.1 --method ce "
                                "--out_dir run")
    assert os.listdir(elsewhere) == [] and snapshot(two_epoch_run) == before
    # --resume auto with the run's --out_dir is checked before the data as well.
    args = main_script.get_args_parser().parse_args(["--resume", "auto", "--out_dir", two_epoch_run])
    assert run_guarded("main.py", lambda: main_script.main(args)) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings (method='erm' there, 'bccl' here; " in err
    assert "started in /home/me as: python main.py" in err and os.listdir(elsewhere) == []
    # A finished run named with fewer --epochs than it trained is left as it is, as before: the
    # early check does not read its checkpoint.
    code, err = guarded(capsys, cifar10_root.root, "--resume", two_epoch_run, "--epochs", "1")
    assert code == 0 and err == "" and snapshot(two_epoch_run) == before


def test_the_started_as_hint_never_quotes_another_runs_command(cifar10_root, tmp_path, capsys):
    # A checkpoint copied into the folder of another run (whose config.json has its own command)
    # is refused for its own settings, without quoting the folder's command line.
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    train(cifar10_root.root, "--out_dir", first)
    train(cifar10_root.root, "--out_dir", second, "--lr", "0.05")
    with open(os.path.join(second, "config.json")) as stream:
        saved = json.load(stream)
    saved["command"] = "python main.py --lr 0.05"
    with open(os.path.join(second, "config.json"), "w") as stream:
        json.dump(saved, stream)
    shutil.copy(os.path.join(first, "last.pth"), os.path.join(second, "last.pth"))
    os.remove(os.path.join(second, "results.json"))
    code, err = guarded(capsys, cifar10_root.root, "--resume", second, "--lr", "0.05", "--epochs", "2")
    assert code == 2 and "holds another run (--lr=0.05 in its config.json, 0.1 in the checkpoint)" in err
    assert "was started" not in err


def test_a_pseudo_labelled_run_saved_before_its_imbalance_was_recorded_compares_as_it_trained():
    # Older configs saved imb_factor_unlabel null for "the same as --imb_factor": compared with
    # a command that names that imbalance, nothing differs; with today's default 0.01, it does.
    from utils.run_folder import config_differences

    def config(*extra):
        args = main_script.get_args_parser().parse_args(["--method", "ce", "--imb_factor", "0.02", "--unlabeled",
                                                         "d_u.npz", *extra])
        return main_script.build_config(args)[0]

    saved = {**json.loads(json.dumps(config().to_dict())), "imb_factor_unlabel": None}
    assert config_differences(config("--imb_factor_unlabel", "0.02"), saved) == []
    assert config_differences(config(), saved) == [("--imb_factor_unlabel", 0.02, 0.01)]
