"""Every paper-table script runs commands that the entry scripts accept.

The scripts are executed with a stand-in `python` on PATH that records its arguments, then each
recorded main.py / train_LCSL.py command is parsed and turned into a TrainConfig, so a renamed
flag or a contradictory combination in a script fails here rather than hours into a run.
"""
import fcntl
import glob
import json
import os
import re
import stat
import subprocess
import sys
import tarfile

import pytest

import main as main_script
import train_LCSL as lcsl_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# device_check.sh, device_evidence.sh and quickstart.sh are no paper-table rows; their own tests
# run them for real.
SCRIPTS = sorted(s for s in glob.glob(os.path.join(ROOT, "scripts", "*.sh"))
                 if not s.endswith(("device_check.sh", "device_evidence.sh", "quickstart.sh")))


def python_shim(tmp_path, body):
    """A stand-in `python` (a bash script of ``body``) first on PATH; the environment to run with,
    CALL_LOG naming tmp_path/calls.txt for the shim to write to."""
    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text("#!/usr/bin/env bash\n" + body)
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "CALL_LOG": str(tmp_path / "calls.txt")}


def recorded_commands(script, tmp_path):
    log = tmp_path / "calls.txt"
    env = {**python_shim(tmp_path, 'for a in "$@"; do printf "%s\\n" "$a" >> "$CALL_LOG"; done\n'
                                   'printf "@@END@@\\n" >> "$CALL_LOG"\n'),
           "SEEDS": "0 1", "ROOT_LOG": str(tmp_path / "log")}
    result = subprocess.run(["bash", script], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    calls, current = [], []
    for line in log.read_text().splitlines():
        if line == "@@END@@":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return calls


@pytest.mark.parametrize("script", SCRIPTS, ids=[os.path.basename(s) for s in SCRIPTS])
def test_script_commands_parse(script, tmp_path):
    calls = recorded_commands(script, tmp_path)
    assert calls, f"{script} ran no training command"
    entry_points = {"main.py": main_script, "train_LCSL.py": lcsl_script}
    trained = 0
    for call in calls:
        if call[0] == "-c":  # a one-line helper computation inside the script
            continue
        entry = os.path.basename(call[0])
        if entry not in entry_points:
            assert entry in ("gen_pseudolabels.py", "test.py"), call[:3]
            continue
        module = entry_points[entry]
        args = module.get_args_parser().parse_args(call[1:])
        config = module.build_config(args)[0]
        assert config.optim.epochs >= 1
        trained += 1
    assert trained > 0
    # SEEDS="0 1" must repeat every row for both seeds.
    assert any("--seed" in call for call in calls)


def test_fair_comparison_picks_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("DATASETS", "cifar10")
    monkeypatch.setenv("METHODS", "ldam_drw ce_ssp")
    calls = recorded_commands(os.path.join(ROOT, "scripts", "fair_comparison_cifar.sh"), tmp_path)
    methods = [(call[call.index("--method") + 1] if "--method" in call else "lcsl", call[call.index("--seed") + 1])
               for call in calls]
    # ce_ssp brings the rotation run it starts from; SEEDS="0 1" repeats both; CIFAR-100 is skipped.
    assert methods == [("ldam_drw", "0"), ("rotation", "0"), ("ce", "0"),
                       ("ldam_drw", "1"), ("rotation", "1"), ("ce", "1")]
    assert all(call[call.index("--dataset") + 1] == "cifar10" for call in calls)


def test_evidence_queue_skips_finished_and_claimed_jobs_and_takes_over_dead_claims(tmp_path):
    root = tmp_path / "log"
    (root / "ce_cifar10_seed0").mkdir(parents=True)
    (root / "ce_cifar10_seed0" / "results.json").write_text("{}")  # finished: never touched again
    (root / ".claims").mkdir()
    # A claim is the kernel's lock on the job's file: this test holds BCCL's, as a live lane
    # would; LCSL's file names this (live) process, as a dead lane's file may name a process
    # that took its number, but nobody holds it, so a lane takes it over.
    (root / ".claims" / "lcsl_s0.lock").write_text(f"lane {os.getpid()} on here since 2026-12-01 10:00:00\n")
    with open(root / ".claims" / "bccl_s0.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        calls = recorded_commands(os.path.join(ROOT, "scripts", "evidence_cifar10.sh"), tmp_path)
        with open(root / ".claims" / "lcsl_s0.lock") as released:  # nothing holds it once the lane is done
            fcntl.flock(released, fcntl.LOCK_EX | fcntl.LOCK_NB)
    outs = [call[call.index("--out_dir") + 1].rsplit("/", 1)[1] for call in calls if "--out_dir" in call]
    assert outs[:4] == ["lcsl_cifar10_seed0", "lcsl_wd5e-4_cifar10_seed0", "lcsl_alpha0_cifar10_seed0",
                        "ldam_drw_cifar10_seed0"]
    assert "ce_cifar10_seed0" not in outs and "bccl_cifar10_seed0" not in outs
    assert outs.count("ce_ssp_cifar10_seed1") == 1 and outs.index("rotation_cifar10_seed1") < outs.index(
        "ce_ssp_cifar10_seed1")
    assert outs[-2:] == ["semi_r50_ce_seed0", "semi_r50_ce_du_rhoU50_seed0"]
    # Every run once: 3 LCSL variants, 5 runs per seed, LCSL seeds 1 and 2, the two semi runs,
    # less the finished CE and the claimed BCCL.
    assert len(outs) == 3 + 3 * 5 + 2 + 2 - 2
    wd = calls[1]
    assert wd[wd.index("--weight_decay", wd.index("--weight_decay") + 1) + 1] == "5e-4"  # the last one wins


def test_an_evidence_run_keeps_its_claim_while_it_trains(tmp_path):
    # The training process holds the claim it inherited: another lane started meanwhile must not
    # take the job, even if the lane that started it is gone.
    probe = tmp_path / "probe.py"
    probe.write_text("import fcntl, os, sys\n"
                     "path = os.path.realpath(os.path.join(os.environ['ROOT_LOG'], '.claims', 'lcsl_s0.lock'))\n"
                     "fds = '/proc/self/fd'\n"
                     "inherited = any(os.path.realpath(os.path.join(fds, fd)) == path for fd in os.listdir(fds))\n"
                     "with open(path) as other:\n"
                     "    try:\n"
                     "        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
                     "        print('free', inherited)\n"
                     "    except BlockingIOError:\n"
                     "        print('held', inherited)\n")
    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text(f'#!/usr/bin/env bash\n"{sys.executable}" "{probe}" >> "$CALL_LOG"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "CALL_LOG": str(tmp_path / "calls.txt"),
           "ROOT_LOG": str(tmp_path / "log"), "ONLY": "lcsl_s0"}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "evidence_cifar10.sh")], cwd=str(tmp_path),
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # Held, and through a descriptor the run itself has open (not only its lane's).
    assert (tmp_path / "calls.txt").read_text() == "held True\n"


def test_evidence_queue_only_runs_the_named_jobs_in_queue_order(tmp_path, monkeypatch):
    monkeypatch.setenv("ONLY", "ldam_drw_s1 ce_s0 ce_ssp_s2")
    calls = recorded_commands(os.path.join(ROOT, "scripts", "evidence_cifar10.sh"), tmp_path)
    outs = [call[call.index("--out_dir") + 1].rsplit("/", 1)[1] for call in calls]
    assert outs == ["ce_cifar10_seed0", "ldam_drw_cifar10_seed1", "rotation_cifar10_seed2", "ce_ssp_cifar10_seed2"]


def test_an_evidence_job_stops_at_its_first_failed_stage(tmp_path):
    # The base CE run of the semi job and the rotation run of CE + SSP fail: nothing that would
    # start from their unfinished results runs (no pseudo-labels, no CE + D_U, no CE from a
    # half-trained backbone), and the lane says the job failed and goes on to its next job.
    log = tmp_path / "calls.txt"
    env = {**python_shim(tmp_path, 'printf "%s\\n" "$*" >> "$CALL_LOG"\n'
                                   'case "$*" in *semi_r50_ce_seed0*|*rotation_cifar10_seed1*) exit 1;; esac\n'),
           "ROOT_LOG": str(tmp_path / "log"), "ONLY": "ce_ssp_s1 semi_s0 ce_s2"}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "evidence_cifar10.sh")], cwd=str(tmp_path),
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert [call.split("--out_dir ")[1].split()[0].rsplit("/", 1)[1] for call in calls] == [
        "rotation_cifar10_seed1", "ce_cifar10_seed2", "semi_r50_ce_seed0"]
    assert result.stdout.count("FAILED") == 2


@pytest.mark.slow
def test_device_check_smoke_mode(tmp_path):
    """scripts/device_check.sh --smoke: every step of the GPU check on the CPU, with the bundled
    sample instead of the prepared bundle, one step per benchmark phase and one training step."""
    out = tmp_path / "check"
    script = os.path.join(ROOT, "scripts", "device_check.sh")
    result = subprocess.run(["bash", script, "--smoke", str(out)], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("install", 0), ("cuda_tests", 0), ("bench", 0), ("ce_run", 0)]
    tests = summary["cuda_tests"]  # the CUDA tests are collected and all skipped on the CPU
    assert tests["finished"] and tests["skipped"] >= 10 and tests["passed"] == tests["failed"] == tests["errors"] == 0
    methods = summary["bench"]["methods"]
    assert sorted(methods) == ["bccl", "ce", "lcsl"]
    for pipeline in ("papers", "fast"):
        # LCSL timed with its teacher: one teacher label per timed image (no untimed steps here).
        teacher = methods["lcsl"]["phases"]["teacher"][pipeline]
        assert teacher["state"]["teacher_epoch"] == 1 and teacher["state"]["teacher_labels"] == teacher["images"] > 0
        # BCCL: centroids once before timing, then no k-means in the plain epoch and one per step
        # (batch 4) in the refresh epoch.
        plain, refresh = (methods["bccl"]["phases"][p][pipeline] for p in ("plain", "refresh"))
        assert plain["state"]["kmeans_runs"] == 1 and plain["images"] > 0
        assert refresh["state"]["kmeans_runs"] == 1 + refresh["images"] // 4
    assert methods["bccl"]["schedule_epochs"] == {"plain": 181, "refresh": 19}
    assert summary["ce_run"]["epochs"] == 1 and 0.0 <= summary["ce_run"]["top1_last"] <= 100.0
    assert (out / "ce_run" / "results.json").is_file() and (out / "summary.txt").read_text() in result.stdout


@pytest.mark.slow
def test_device_evidence_smoke_mode(tmp_path):
    """scripts/device_evidence.sh --smoke: the pinned commit's evidence queue in two lanes on the
    CPU (one step per epoch on the bundled sample), taking jobs in JOBS' order (not the queue's,
    where ce_s0 comes before ldam_drw_s1), skipping a run already finished, and the run folders
    packed with the pin's commit."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout: nothing to pin")
    pinned = tmp_path / "pinned.tar.gz"
    subprocess.run([sys.executable, "scripts/evidence_runs.py", "pin", "--commit", "HEAD", "--out", str(pinned)],
                   cwd=ROOT, check=True, capture_output=True)
    done = tmp_path / "done" / "ldam_drw_cifar10_seed0"  # finished elsewhere: not run again
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    (done / "config.json").write_text("{}")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PINNED": str(pinned), "CACHE": str(tmp_path / "cache"),
           "DONE": str(tmp_path / "done"), "JOBS": "ldam_drw_s1 ce_s0 ldam_drw_s0"}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "device_evidence.sh"), "--smoke", str(out)],
                            cwd=str(tmp_path), capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["lanes.log", "runs_records.tar", "summary.txt"]
    with tarfile.open(out / "runs_records.tar") as archive:
        names = archive.getnames()
        record = json.load(archive.extractfile("ce_cifar10_seed0/results.json"))
    assert {name.split("/")[0] for name in names} == {"ce_cifar10_seed0", "ldam_drw_cifar10_seed1"}
    assert record["git_commit"] == head.stdout.strip()[:7] and record["last"]["epoch"] == 2
    started = re.findall(r"lane \d+: (\S+)$", (out / "lanes.log").read_text(), flags=re.M)
    assert started == ["ldam_drw_s1", "ce_s0"]
    assert "packed 2 finished runs (ce_cifar10_seed0, ldam_drw_cifar10_seed1)" in (out / "summary.txt").read_text()


def test_device_check_needs_an_output_folder():
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "device_check.sh")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "OUT_DIR" in result.stderr


@pytest.mark.slow  # two real main.py processes
def test_quickstart_trains_both_methods_and_prints_their_table(tmp_path):
    out = tmp_path / "quickstart"
    command = ["bash", os.path.join(ROOT, "scripts", "quickstart.sh"), str(out), "--epochs", "1", "--limit_batches", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| cifar10_sample | 100 |")]
    assert [row.split(" | ")[2] for row in rows] == ["balanced_softmax", "ce"]
    assert all("best on val" in row for row in rows)
    for method in ("ce", "balanced_softmax"):
        assert json.load(open(out / method / "results.json"))["label"] == method
        assert json.load(open(out / method / "config.json"))["method_options"]["loss"] == method
    # A second call finds both runs finished and prints the same table without training.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and [line for line in again.stdout.splitlines() if line in rows] == rows
    assert "finished" in (out / "ce.out").read_text()
