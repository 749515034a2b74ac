"""scripts/evidence_runs.py: a pinned commit's files, run folders packed into size-capped tar files
and back, and finished records collected, never overwriting anything."""
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import evidence_runs  # noqa: E402


def git(repo, *command):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    folder = tmp_path / "repo"
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "job.sh").write_text("echo first\n")
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "first")
    return folder


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(content, bytes) else "w") as stream:
        stream.write(content)


def test_pin_and_tree_give_the_commits_files_and_refuse_a_foreign_folder(repo, tmp_path, capsys):
    first = git(repo, "rev-parse", "HEAD")
    archive = str(tmp_path / "pinned.tar.gz")
    assert evidence_runs.main(["pin", "--commit", first[:7], "--repo", str(repo), "--out", archive]) == 0
    assert evidence_runs.archive_commit(archive) == first
    (repo / "scripts" / "job.sh").write_text("echo second\n")  # a later commit must not leak in
    git(repo, "commit", "-q", "-am", "second")
    tree = tmp_path / "tree"
    assert evidence_runs.main(["tree", "--archive", archive, "--into", str(tree)]) == 0
    assert (tree / "scripts" / "job.sh").read_text() == "echo first\n"
    assert (tree / ".pinned_commit").read_text().strip() == first
    assert evidence_runs.main(["tree", "--archive", archive, "--into", str(tree)]) == 0
    assert "already holds commit " + first[:7] in capsys.readouterr().out
    # Another pin replaces a tree this command extracted, never a folder it did not make.
    second_archive = str(tmp_path / "second.tar.gz")
    assert evidence_runs.main(["pin", "--commit", "HEAD", "--repo", str(repo), "--out", second_archive]) == 0
    assert evidence_runs.main(["tree", "--archive", second_archive, "--into", str(tree)]) == 0
    assert (tree / "scripts" / "job.sh").read_text() == "echo second\n"
    foreign = tmp_path / "foreign"
    write(str(foreign / "notes.txt"), "mine")
    capsys.readouterr()
    assert evidence_runs.main(["tree", "--archive", archive, "--into", str(foreign)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--into" in error and (foreign / "notes.txt").read_text() == "mine"
    assert evidence_runs.main(["pin", "--commit", "nosuchrev", "--repo", str(repo), "--out", archive]) == 2
    assert "--commit nosuchrev" in capsys.readouterr().err


def make_runs(root):
    """One finished run and three unfinished ones with 8,000-byte checkpoint files."""
    finished = os.path.join(root, "ce_cifar10_seed0")
    write(os.path.join(finished, "config.json"), json.dumps({"git_commit": "unknown", "lr": 0.1}))
    write(os.path.join(finished, "results.json"), json.dumps({"git_commit": "unknown", "last": {"top1": 66.0}}))
    write(os.path.join(finished, "last.pth"), b"w" * 1000)
    write(os.path.join(finished, "tb", "events.out"), b"e" * 10)
    write(os.path.join(finished, ".run.lock"), "pid")
    for name, files in (("bccl_cifar10_seed0", 2), ("lcsl_cifar10_seed0", 2), ("big_cifar10_seed0", 5)):
        folder = os.path.join(root, name)
        write(os.path.join(folder, "config.json"), json.dumps({"git_commit": "0123abc"}))
        write(os.path.join(folder, "log.txt"), "epoch 1\n")
        for i in range(files):
            write(os.path.join(folder, f"part{i}.pth"), bytes([i]) * 8000)


def members(path):
    with tarfile.open(path) as archive:
        return sorted(archive.getnames())


def test_pack_stamps_unknown_commits_and_splits_checkpoints_by_whole_runs(tmp_path, capsys):
    root, out = str(tmp_path / "runs"), str(tmp_path / "out")
    make_runs(root)
    assert evidence_runs.main(["pack", root, out, "--commit", "abcdef0123456789", "--max_files", "3",
                               "--max_mb", str(30000 / 2 ** 20)]) == 0
    printed = capsys.readouterr().out
    # Two 8,000-byte checkpoints make a 20,480-byte tar file, two runs' 40,960: against a 30,000-byte
    # cap one run per file, two files beside the records; the five-file run fits none and is named.
    assert sorted(os.listdir(out)) == ["runs_checkpoints_1.tar", "runs_checkpoints_2.tar", "runs_records.tar"]
    assert "checkpoints left out (over 3 files of" in printed and printed.rstrip().endswith("big_cifar10_seed0")
    assert members(os.path.join(out, "runs_records.tar")) == [
        "bccl_cifar10_seed0/config.json", "bccl_cifar10_seed0/log.txt", "big_cifar10_seed0/config.json",
        "big_cifar10_seed0/log.txt", "ce_cifar10_seed0/config.json", "ce_cifar10_seed0/results.json",
        "ce_cifar10_seed0/tb/events.out", "lcsl_cifar10_seed0/config.json", "lcsl_cifar10_seed0/log.txt"]
    assert members(os.path.join(out, "runs_checkpoints_1.tar")) == ["bccl_cifar10_seed0/part0.pth",
                                                                    "bccl_cifar10_seed0/part1.pth"]
    assert members(os.path.join(out, "runs_checkpoints_2.tar")) == ["lcsl_cifar10_seed0/part0.pth",
                                                                    "lcsl_cifar10_seed0/part1.pth"]
    assert [os.path.getsize(os.path.join(out, f"runs_checkpoints_{i}.tar")) for i in (1, 2)] == [20480, 20480]
    # 'unknown' becomes the pin's short commit; a recorded commit is kept.
    for name in ("config.json", "results.json"):
        assert json.load(open(os.path.join(root, "ce_cifar10_seed0", name)))["git_commit"] == "abcdef0"
    assert json.load(open(os.path.join(root, "bccl_cifar10_seed0", "config.json")))["git_commit"] == "0123abc"


def test_restore_and_collect_never_overwrite(tmp_path, capsys):
    root, out, back, results = (str(tmp_path / n) for n in ("runs", "out", "back", "results"))
    make_runs(root)
    assert evidence_runs.main(["pack", root, out]) == 0
    archives = sorted(os.path.join(out, n) for n in os.listdir(out))
    assert evidence_runs.main(["restore", *archives, "--into", back]) == 0
    restored = open(os.path.join(back, "lcsl_cifar10_seed0", "part1.pth"), "rb").read()
    assert restored == bytes([1]) * 8000
    assert not os.path.exists(os.path.join(back, "ce_cifar10_seed0", "last.pth"))  # finished: records only
    assert evidence_runs.main(["restore", *archives, "--into", back]) == 0  # the same files again: fine
    changed = os.path.join(back, "bccl_cifar10_seed0", "log.txt")
    write(changed, "epoch 1\nepoch 2\n")  # the run went on here
    capsys.readouterr()
    assert evidence_runs.main(["restore", *archives, "--into", back]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "(bccl_cifar10_seed0)" in error and open(changed).read() == "epoch 1\nepoch 2\n"
    assert not os.path.exists(os.path.join(back, "bccl_cifar10_seed0.restoring"))

    assert evidence_runs.main(["collect", back, results]) == 0
    assert sorted(os.listdir(results)) == ["ce_cifar10_seed0"]  # the only finished run
    assert sorted(os.listdir(os.path.join(results, "ce_cifar10_seed0"))) == ["config.json", "results.json"]
    assert evidence_runs.main(["collect", back, results]) == 0
    assert "collected 0 finished runs" in capsys.readouterr().out
    write(os.path.join(back, "ce_cifar10_seed0", "results.json"), "{}")
    assert evidence_runs.main(["collect", back, results]) == 2
    kept = json.load(open(os.path.join(results, "ce_cifar10_seed0", "results.json")))
    assert kept["last"]["top1"] == 66.0 and "differ from the run folder's" in capsys.readouterr().err


def test_restore_refuses_members_outside_the_folder(tmp_path, capsys):
    evil = str(tmp_path / "evil.tar")
    payload = tmp_path / "payload"
    payload.write_text("x")
    with tarfile.open(evil, "w") as archive:
        archive.add(str(payload), arcname="../escaped.txt")
    assert evidence_runs.main(["restore", evil, "--into", str(tmp_path / "into")]) == 2
    assert not (tmp_path / "escaped.txt").exists() and "not a file inside a run folder" in capsys.readouterr().err


def two_moments_packed(tmp_path):
    """Packs (in <moment>/out) of one LCSL run at two moments: stopped at epoch 5, and finished."""
    early, late = tmp_path / "early", tmp_path / "late"
    for root, epochs, done in ((early, 5, False), (late, 200, True)):
        run = root / "runs" / "lcsl_cifar10_seed0"
        write(str(run / "config.json"), "{}")
        write(str(run / "log.txt"), f"{epochs} epochs\n")
        write(str(run / "last.pth"), bytes([epochs]) * 100)
        if done:
            write(str(run / "results.json"), json.dumps({"method": "lcsl", "last": {"epoch": 200}}))
        assert evidence_runs.main(["pack", str(root / "runs"), str(root / "out")]) == 0
    return early, late


def test_a_later_moment_of_a_run_never_mixes_with_an_earlier_one(tmp_path, capsys):
    # Call 1 returns a run stopped at epoch 5; call 2 on the same machine finishes it. Restoring
    # call 2 over call 1's folder would keep the old log beside the new results: the folder is
    # left whole instead, and call 2's run restores into another folder.
    early, late = two_moments_packed(tmp_path)
    here = str(tmp_path / "here")
    assert evidence_runs.main(["restore", str(early / "out" / "runs_records.tar"),
                               str(early / "out" / "runs_checkpoints_1.tar"), "--into", here]) == 0
    assert evidence_runs.main(["restore", str(late / "out" / "runs_records.tar"), "--into", here]) == 2
    run = os.path.join(here, "lcsl_cifar10_seed0")
    assert sorted(os.listdir(run)) == ["config.json", "last.pth", "log.txt"] and open(
        os.path.join(run, "log.txt")).read() == "5 epochs\n"
    assert "(lcsl_cifar10_seed0)" in capsys.readouterr().err


def test_packs_of_two_moments_given_together_are_refused(tmp_path, capsys):
    # The early pack's checkpoint beside the late pack's results would make one folder of two
    # moments: given both at once, restore refuses and writes nothing.
    early, late = two_moments_packed(tmp_path)
    here = tmp_path / "here"
    capsys.readouterr()
    archives = [str(early / "out" / "runs_checkpoints_1.tar"), str(early / "out" / "runs_records.tar"),
                str(late / "out" / "runs_records.tar")]
    assert evidence_runs.main(["restore", *archives, "--into", str(here)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "hold different versions of lcsl_cifar10_seed0/log.txt" in error
    assert not here.exists() or os.listdir(here) == []
    # The same file in two archives (one pack restored twice over) is no conflict.
    assert evidence_runs.main(["restore", *archives[:2], archives[1], "--into", str(here)]) == 0
    assert open(here / "lcsl_cifar10_seed0" / "log.txt").read() == "5 epochs\n"


def test_collect_adds_whole_runs_and_skips_a_staging_folder(tmp_path, capsys):
    root, results = tmp_path / "runs", tmp_path / "results"
    run = root / "ce_cifar10_seed0"
    write(str(run / "config.json"), "{}")
    write(str(run / "results.json"), json.dumps({"last": {"top1": 66.0}}))
    write(str(run / "log.txt"), "the log\n")
    # An interrupted restore's staging copy of a finished run is not a second run.
    shutil.copytree(str(run), str(root / "bccl_cifar10_seed0.restoring"))
    # results/ holds another version of this run's results.json and no log: nothing is added
    # beside it (the log of one moment next to the results of another).
    write(str(results / "ce_cifar10_seed0" / "results.json"), json.dumps({"last": {"top1": 60.0}}))
    capsys.readouterr()
    assert evidence_runs.main(["collect", str(root), str(results)]) == 2
    assert "differ from the run folder's" in capsys.readouterr().err
    assert sorted(os.listdir(results)) == ["ce_cifar10_seed0"]
    assert os.listdir(results / "ce_cifar10_seed0") == ["results.json"]


def test_a_finished_run_being_extended_travels_with_its_checkpoint(tmp_path):
    root = tmp_path / "runs"
    run = root / "ce_cifar10_seed0"
    write(str(run / "results.json"), json.dumps({"method": "erm", "last": {"epoch": 200}}))
    write(str(run / "config.json"), json.dumps({"optim": {"epochs": 200}}))
    assert not evidence_runs.needs_weights(str(root), "ce_cifar10_seed0")
    write(str(run / "config.json"), json.dumps({"optim": {"epochs": 300}, "epochs_changed": [{"from": 200}]}))
    assert evidence_runs.needs_weights(str(root), "ce_cifar10_seed0")


def test_finished_stage_one_runs_keep_their_weights_and_the_total_is_capped(tmp_path, capsys):
    root, out = tmp_path / "runs", str(tmp_path / "out")
    rotation = root / "rotation_cifar10_seed1"  # finished; ce_ssp_cifar10_seed1 starts from it
    write(str(rotation / "config.json"), "{}")
    write(str(rotation / "results.json"), json.dumps({"method": "rotation"}))
    write(str(rotation / "last.pth"), b"r" * 8000)
    for name in ("bccl_cifar10_seed1", "lcsl_cifar10_seed1"):  # unfinished, 20,480-byte tar each
        write(str(root / name / "config.json"), "{}")
        write(str(root / name / "last.pth"), b"w" * 18000)
    # 15 MB per file but 50,000 bytes in all: the records (10,240 bytes) and one file with two
    # runs' checkpoints (30,720) fit; the third run's would pass the total.
    assert evidence_runs.main(["pack", str(root), out, "--max_total_mb", str(50000 / 2 ** 20)]) == 0
    printed = capsys.readouterr().out
    assert members(os.path.join(out, "runs_checkpoints_1.tar")) == ["bccl_cifar10_seed1/last.pth",
                                                                    "rotation_cifar10_seed1/last.pth"]
    assert "checkpoints left out" in printed and printed.rstrip().endswith("lcsl_cifar10_seed1")
    assert sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out)) <= 50000


def test_pack_never_replaces_an_earlier_pack_and_a_failed_pack_leaves_nothing(tmp_path, capsys):
    root, out = str(tmp_path / "runs"), str(tmp_path / "out")
    make_runs(root)
    assert evidence_runs.main(["pack", root, out]) == 0
    before = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)}
    capsys.readouterr()
    assert evidence_runs.main(["pack", root, out]) == 2
    assert "holds an earlier pack (runs_checkpoints_1.tar, runs_records.tar)" in capsys.readouterr().err
    assert {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)} == before
    # Records over the cap: the records file was written, then refused; neither it nor the folder stays.
    fresh = str(tmp_path / "fresh")
    assert evidence_runs.main(["pack", root, fresh, "--max_mb", "0.001"]) == 2
    assert "is over 0.001 MB" in capsys.readouterr().err and not os.path.exists(fresh)


@pytest.mark.parametrize("content, message", [(b"[1, 2]", "holds a list, not a run's record"),
                                              (b"\xff\xfe{", "is not a readable JSON record")],
                         ids=["list", "not-utf8"])
def test_pack_names_a_damaged_record(tmp_path, capsys, content, message):
    root, out = str(tmp_path / "runs"), str(tmp_path / "out")
    make_runs(root)
    write(os.path.join(root, "ce_cifar10_seed0", "results.json"), content)
    for commit in (["--commit", "abcdef0"], []):  # read to stamp the commit, and to decide what travels
        assert evidence_runs.main(["pack", root, out, *commit]) == 2
        err = capsys.readouterr().err
        assert message in err and "ce_cifar10_seed0" in err and err.count("\n") == 1 and not os.path.exists(out)


def test_restore_names_a_truncated_archive_and_flags_are_checked(tmp_path, capsys):
    root, out = str(tmp_path / "runs"), str(tmp_path / "out")
    make_runs(root)
    assert evidence_runs.main(["pack", root, out]) == 0
    archive = os.path.join(out, "runs_checkpoints_1.tar")
    with open(archive, "r+b") as stream:
        stream.truncate(700)
    capsys.readouterr()
    into = str(tmp_path / "into")
    assert evidence_runs.main(["restore", os.path.join(out, "runs_records.tar"), archive, "--into", into]) == 2
    err = capsys.readouterr().err
    assert f"{archive} is not a complete tar file" in err and err.count("\n") == 1 and not os.path.exists(into)
    for flag, value in (("--max_mb", "nan"), ("--max_mb", "-1"), ("--max_files", "0")):
        with pytest.raises(SystemExit) as stop:
            evidence_runs.main(["pack", root, str(tmp_path / "other"), flag, value])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and flag in err and err.count("\n") == 1
