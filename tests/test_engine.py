"""The engine end to end: run folder contents, test.py, checkpoints, resume, NaN stops, DDP."""
import copy
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import FlatBackbone, QuietLogger, run_entry, run_ranks
from datasets.base import ImageSource, LongTailData
from datasets.loaders import build_eval_loader, build_train_loader
from datasets.augment import build_transform, build_views
from methods import METHODS, build_method
from models import Classifier, build_model
from utils import cli, dist
from utils.checkpoint import CheckpointError, load_checkpoint, save_atomic
from utils.config import ConfigError, OptimConfig, RunConfig, TrainConfig
from utils.engine import DeviceInputs, NonFiniteLossError, fit
from utils.engine import runs_natively as engine_native
from utils.runner import run_training

import main as main_script
import test as test_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_args(data_root, out_dir, *extra):
    return ["--dataset", "cifar10", "--data_root", data_root, "--imb_factor", "0.1", "--method", "ce",
            "--epochs", "2", "-b", "16", "--workers", "0", "--progress", "False", "--download", "False",
            "--out_dir", out_dir, *extra]


def config_for(data_root, out_dir, *extra):
    config, _ = main_script.build_config(main_script.get_args_parser().parse_args(tiny_args(data_root, out_dir, *extra)))
    return config


@pytest.mark.slow
def test_main_then_test_script(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    result = subprocess.run([sys.executable, "main.py", *tiny_args(cifar10_root.root, run)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("config.json", "log.txt", "last.pth", "best.pth", "results.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(run, "tb")))
    results = json.load(open(os.path.join(run, "results.json")))
    assert results["last"]["epoch"] == 2 and 0.0 <= results["last"]["top1"] <= 100.0
    assert results["last"]["group_sizes"] == {"many": 0, "medium": 3, "few": 7}  # counts 40, 31, 24, 18 ... 4
    assert results["last"]["many"] is None  # an empty group is n/a, never 0
    assert "TEST set" in results["best_on_test"]["rule"]
    assert len(results["last"]["per_class"]) == 10

    out_json = str(tmp_path / "eval.json")
    result = subprocess.run([sys.executable, "test.py", "--path", run, "--json", out_json,
                             "--data_root", cifar10_root.root, "--tta_flip", "--tau_norm", "1.0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "many" in result.stdout and "n/a" in result.stdout
    summary = json.load(open(out_json))
    assert summary["num_samples"] == 40 and summary["epoch"] == 2


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_test_script_rejects_bad_files_in_one_line(tmp_path, content, capsys):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    # In-process; test_faults_loading refuses a file through a real test.py process.
    code, _, err = run_entry(test_script, "test.py", ["--path", str(path)], capsys)
    assert code == 2 and "Traceback" not in err
    assert str(path) in err and err.strip().count("\n") == 0


def test_foreign_torch_file_is_refused(tmp_path):
    path = str(tmp_path / "foreign.pth")
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not an ltkit checkpoint"):
        load_checkpoint(path)


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    save_atomic({"format": "ltkit-checkpoint", "epoch": 1}, path)

    def broken_save(obj, stream):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="last.pth: disk full"):
        save_atomic({"format": "ltkit-checkpoint", "epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]  # no temporary file left behind


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_a_checkpoint_write_waits_for_the_file(tmp_path, monkeypatch, signum):
    # A scheduler's SIGTERM or Ctrl-C arriving inside torch.save used to leave its zip writer
    # half-written: the run then ended with "cannot write checkpoint" (exit 2) instead of the
    # interruption. The write now completes and the interruption follows it.
    path = str(tmp_path / "last.pth")
    real_save = torch.save

    def save_then_signal(obj, stream):
        os.kill(os.getpid(), signum)  # delivered in the middle of the write
        real_save(obj, stream)

    monkeypatch.setattr(torch, "save", save_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, cli._raise_terminated)
    try:
        with pytest.raises(cli.Terminated if signum == signal.SIGTERM else KeyboardInterrupt):
            save_atomic({"format": "ltkit-checkpoint", "epoch": 3}, path)
    finally:
        signal.signal(signal.SIGTERM, before)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["epoch"] == 3 and os.listdir(tmp_path) == ["last.pth"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_while_best_pth_is_written_waits_for_last_pth_too(cifar10_root, tmp_path, monkeypatch):
    # Ctrl-C in the middle of the improving epoch's best.pth: last.pth of the same epoch is still
    # written, so a resume never retrains an epoch whose weights best.pth already holds.
    import utils.checkpoint as checkpoint

    run = str(tmp_path / "run")
    real_save, calls = torch.save, []

    def save_then_signal(obj, stream):
        calls.append(obj["epoch"])
        if len(calls) == 1:  # the first file of epoch 1: best.pth
            os.kill(os.getpid(), signal.SIGINT)
        real_save(obj, stream)

    monkeypatch.setattr(torch, "save", save_then_signal)
    with pytest.raises(KeyboardInterrupt):
        run_training(config_for(cifar10_root.root, run, "--epochs", "2", "--limit_batches", "1"), "ce")
    monkeypatch.undo()
    assert calls == [1, 1]
    assert [checkpoint.load_checkpoint(os.path.join(run, name))["epoch"] for name in ("best.pth", "last.pth")] == [1, 1]


def test_a_scheduler_stop_after_ctrl_c_during_a_write_still_ends_as_a_stop():
    # Ctrl-C then a scheduler's SIGTERM while a checkpoint is written: the run must end as
    # terminated (exit 143), not as interrupted, once the file is complete.
    from utils.checkpoint import signals_deferred

    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, cli._raise_terminated)
    try:
        with pytest.raises(cli.Terminated):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_kill_and_resume_reproduces_the_uninterrupted_run(cifar10_root, tmp_path):
    straight = str(tmp_path / "straight")
    run_training(config_for(cifar10_root.root, straight), "ce")
    interrupted = str(tmp_path / "interrupted")
    run_training(config_for(cifar10_root.root, interrupted, "--epochs", "1"), "ce")
    # The continuation restores model, optimiser momentum, RNG states and the epoch counter.
    run_training(config_for(cifar10_root.root, interrupted, "--resume", "auto"), "ce")
    a = load_checkpoint(os.path.join(straight, "last.pth"))
    b = load_checkpoint(os.path.join(interrupted, "last.pth"))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["records"]["last"]["top1"] == b["records"]["last"]["top1"]


@pytest.mark.parametrize("earlier,amp", [({"fp16": 1}, "auto"), (None, "auto"), (None, "none")])
def test_a_continuation_in_another_precision_is_recorded(cifar10_root, tmp_path, earlier, amp):
    # `--amp auto` is bf16 on a machine with native bf16 and fp32 on one without: a run continued
    # on another machine changes precision. Simulated by rewriting epoch 1's count (fp16 is never
    # what --amp auto gives on a CPU), or by removing it (a checkpoint from before the count:
    # unknown under auto, the explicit --amp's otherwise).
    run = str(tmp_path / "run")
    first = run_training(config_for(cifar10_root.root, run, "--epochs", "1", "--amp", amp), "ce")
    here = first["precision"]
    assert first["precision_epochs"] == {here: 1} and here in ("none", "bf16")
    path = os.path.join(run, "last.pth")
    checkpoint = torch.load(path, weights_only=False)
    if earlier is None:
        del checkpoint["records"]["precision_epochs"]
    else:
        checkpoint["records"]["precision_epochs"] = earlier
    torch.save(checkpoint, path)
    results = run_training(config_for(cifar10_root.root, run, "--resume", "auto", "--amp", amp), "ce")
    log = open(os.path.join(run, "log.txt")).read()
    if earlier is None and amp == "none":
        assert results["precision"] == "none" and results["precision_epochs"] == {"none": 2}
    elif earlier is None:
        assert results["precision"] == "unknown" and results["precision_epochs"] == {"unrecorded": 1, here: 1}
        assert "note: this run trained" not in log
    else:
        assert results["precision"] == "mixed" and results["precision_epochs"] == {"fp16": 1, here: 1}
        assert f"note: this run trained 1 epoch(s) in fp16; --amp auto here is {here}" in log


def test_test_script_scores_in_the_precision_the_run_trained_in(cifar10_root, tmp_path, capsys, monkeypatch):
    # The run is `--amp auto`; on another machine auto may mean another precision, so test.py
    # takes the one recorded with the checkpoint's epoch (set to bf16 here: the run's machine had
    # native bf16) where this device runs it natively, else auto with a note; --amp overrides.
    from utils import engine

    run = str(tmp_path / "run")
    results = run_training(config_for(cifar10_root.root, run, "--epochs", "1"), "ce")
    path = os.path.join(run, "last.pth")
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["records"]["precision"] == results["precision"]
    checkpoint["records"]["precision"] = "bf16"
    torch.save(checkpoint, path)
    monkeypatch.setattr(engine, "runs_natively", lambda precision, device: True)
    code, out, _ = run_entry(test_script, "test.py", ["--path", run, "--workers", "0"], capsys)
    assert code == 0 and "precision: bf16 (what the run's --amp auto trained in)" in out
    monkeypatch.setattr(engine, "runs_natively", lambda precision, device: precision == "none")
    code, out, _ = run_entry(test_script, "test.py", ["--path", run, "--workers", "0"], capsys)
    assert code == 0 and "(the run's --amp auto trained in bf16, which this device emulates: --amp bf16 evaluates" in out
    code, out, _ = run_entry(test_script, "test.py", ["--path", run, "--workers", "0", "--amp", "none"], capsys)
    assert code == 0 and "precision: none (--amp)" in out


def test_test_script_labels_each_checkpoint_file_for_what_it_is(cifar10_root, tmp_path, capsys):
    # last.pth: the last epoch; best.pth: what the run selected, by its rule; a copied snapshot:
    # only its file name and epoch (no selection made it). --plot's axis names the split scored.
    import shutil

    run = str(tmp_path / "run")
    run_training(config_for(cifar10_root.root, run, "--epochs", "1", "--limit_batches", "1"), "ce")
    shutil.copy(os.path.join(run, "last.pth"), os.path.join(run, "snapshot.pth"))
    expected = {"last.pth": "(epoch 1, last epoch)", "best.pth": "(epoch 1, selected: best ",
                "snapshot.pth": "(epoch 1, the file snapshot.pth)"}
    for name, label in expected.items():
        code, out, _ = run_entry(test_script, "test.py", ["--path", os.path.join(run, name), "--workers", "0"], capsys)
        assert code == 0 and label in out, (name, out)
    from matplotlib.axes import Axes

    labels = []
    real = Axes.set_ylabel
    try:
        Axes.set_ylabel = lambda axis, text, *a, **k: labels.append(text) or real(axis, text, *a, **k)
        test_script.plot_per_class(str(tmp_path / "p.png"), {"per_class": [50.0, 40.0], "top1": 45.0}, [10, 5], "val")
    finally:
        Axes.set_ylabel = real
    assert labels == ["val accuracy (%)"] and os.path.isfile(tmp_path / "p.png")


def test_test_script_writes_the_confusion_matrix_and_says_where_the_tail_went(cifar10_root, tmp_path, capsys):
    import csv

    run = str(tmp_path / "run")
    run_training(config_for(cifar10_root.root, run, "--epochs", "1"), "ce")
    out, summary_path = tmp_path / "confusion.csv", tmp_path / "summary.json"
    code, printed, _ = run_entry(test_script, "test.py", ["--path", run, "--workers", "0", "--confusion", str(out),
                                                          "--json", str(summary_path)], capsys)
    assert code == 0
    summary = json.loads(summary_path.read_text())
    with open(out, newline="") as stream:
        rows = list(csv.reader(stream))
    names = [f"class_{c:02d}" for c in range(10)]  # the fixture's label names
    assert rows[0] == ["true \\ predicted"] + [f"{c} {name}" for c, name in enumerate(names)]
    matrix = [[int(count) for count in row[1:]] for row in rows[1:]]
    assert matrix == summary["confusion"] and [row[0] for row in rows[1:]] == rows[0][1:]
    # The fixture's test split has 4 images per class; the diagonal is each class's accuracy.
    assert all(sum(row) == 4 for row in matrix)
    assert [100.0 * matrix[c][c] / 4 for c in range(10)] == pytest.approx(summary["per_class"])
    lines = printed.splitlines()
    start = lines.index("where the images of the 5 classes with the fewest training images went "
                        "(share of the class's images):")
    with open(os.path.join(run, "results.json")) as stream:
        counts = json.load(stream)["train_counts"]
    smallest = sorted(range(10), key=lambda c: (counts[c], c))[:5]
    for line, c in zip(lines[start + 1:start + 6], smallest):
        assert line.startswith(f"  {c} {names[c]} ({counts[c]} training images): "
                               f"{25.0 * matrix[c][c]:.2f} % right"), line
    with pytest.raises(SystemExit) as refused:  # never overwritten without --force
        test_script.get_args_parser().parse_args(["--path", run, "--confusion", str(out)])
    assert refused.value.code == 2 and f"--confusion {out} exists" in capsys.readouterr().err


@pytest.mark.parametrize("bf16_native", [True, False])
def test_native_precisions(monkeypatch, bf16_native):
    # Both kinds of CPU, whichever this one is: --amp auto is bf16 only where it runs natively.
    from utils.engine import resolve_amp

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: bf16_native)
    cpu = torch.device("cpu")
    assert engine_native("none", cpu) and not engine_native("fp16", cpu)
    assert (engine_native("bf16", cpu), resolve_amp("auto", cpu)) == (bf16_native, "bf16" if bf16_native else "none")


def test_resume_with_other_flags_is_refused(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    run_training(config_for(cifar10_root.root, run, "--epochs", "1"), "ce")
    with pytest.raises(ConfigError, match="--resume .*arch"):
        run_training(config_for(cifar10_root.root, run, "--resume", "auto", "--arch", "resnet34_cifar"), "ce")
    with pytest.raises(ConfigError, match="--resume .*seed"):
        run_training(config_for(cifar10_root.root, run, "--resume", "auto", "--seed", "1"), "ce")
    with pytest.raises(ConfigError, match="--resume .*lr"):
        run_training(config_for(cifar10_root.root, run, "--resume", "auto", "--lr", "0.05"), "ce")


def test_non_finite_loss_stops_and_keeps_last_checkpoint(cifar10_root, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    from methods.erm import ERM

    original = ERM.training_step

    def poisoned(self, images, targets, epoch, indices=None):
        out = original(self, images, targets, epoch, indices)
        if epoch == 1:
            out["loss"] = out["loss"] * float("nan")
            out["parts"] = {"loss/ce": out["loss"].detach()}
        return out

    monkeypatch.setattr(ERM, "training_step", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1 .*loss/ce"):
        run_training(config_for(cifar10_root.root, run), "ce")
    assert load_checkpoint(os.path.join(run, "last.pth"))["epoch"] == 1


# ---- DDP (gloo, 2 CPU processes) equals one process on the same global batch --------------------
def _tiny_data():
    rng = np.random.default_rng(0)
    train = ImageSource(rng.integers(0, 4, 48), array=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8))
    test = ImageSource(rng.integers(0, 4, 20), array=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    counts = np.bincount(train.targets, minlength=4).tolist()
    return LongTailData("tiny", 4, train, test, counts, (0.5,) * 3, (0.25,) * 3, 8)


def _tiny_val():
    rng = np.random.default_rng(1)
    return ImageSource(rng.integers(0, 4, 14), array=rng.integers(0, 256, (14, 8, 8, 3), dtype=np.uint8))


def _train_tiny(ctx, out, with_val=False):
    """Two epochs at lr 0.5 on the test split; with_val: five epochs, selection on a validation
    split and the test set scored only when --test_interval 3 or a validation gain asks for it."""
    torch.manual_seed(0)
    data = _tiny_data()
    method = build_method("erm", Classifier(FlatBackbone(), nn.Linear(8, 4)), data.train_counts)
    method.wrap(lambda net: dist.wrap_network(net, ctx), lambda net: net)
    config = TrainConfig(script="test", dataset="tiny", data=__import__("datasets").DataOptions(), arch="flat",
                         head="linear", head_scale=None, method="erm", method_options={}, batch_size=8,
                         train_aug=("test",), aug_options={}, sampler=None, sampler_options={},
                         select_on="val" if with_val else "test",
                         optim=OptimConfig(lr=0.5, epochs=5 if with_val else 2, warmup_epochs=0, milestones=()),
                         # fp32: bf16 autocast (--amp auto on CPUs with native bf16) rounds batches of
                         # 4 and 8 differently, and the comparison is about gradient averaging.
                         run=RunConfig(progress=False, workers=0, amp="none", test_interval=3 if with_val else 1))
    per_rank = config.batch_size // ctx.world_size
    loaders = {"train": build_train_loader(data.train, build_transform("test", "cifar", 8), per_rank,
                                           seed=0, rank=ctx.rank, world_size=ctx.world_size),
               "test": build_eval_loader(data.test, None, 6, rank=ctx.rank, world_size=ctx.world_size)}
    if with_val:
        loaders["val"] = build_eval_loader(_tiny_val(), None, 4, rank=ctx.rank, world_size=ctx.world_size)
    records = fit(config, method, data, ctx, loaders, DeviceInputs(data.mean, data.std, ctx.device), QuietLogger(),
                  lambda *a: None)
    if ctx.is_main:
        torch.save({"state": method.model.state_dict(), "top1": records["last"]["top1"],
                    "nll": records["last"]["nll"], "records": records}, out)


def _ddp_worker(rank, world, port, out, with_val=False):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = dist.setup_devices(None, backend="gloo")
    try:
        _train_tiny(ctx, out, with_val)
    finally:
        dist.cleanup()


def _download_worker(rank, world, port, root, marks):
    """Builds CIFAR-10 into an empty root under DDP with the network faked: first with --download
    False (every rank must stop with the refusal), then with it (each download leaves a mark)."""
    import types

    import torchvision.datasets.utils as tv_utils

    from conftest import write_cifar
    from datasets import DataOptions, DatasetError
    from utils.run import build_data_rank_zero_first

    def fake_download(url, folder, filename=None, md5=None):
        open(os.path.join(marks, f"download.{rank}"), "w").close()
        with open(os.path.join(folder, filename), "wb") as stream:
            stream.write(b"archive")

    tv_utils.download_url = fake_download
    tv_utils.extract_archive = lambda archive, to_path: write_cifar(to_path, 10, 5, 1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = dist.setup_devices(None, backend="gloo")
    try:
        offline = types.SimpleNamespace(dataset="cifar10", data=DataOptions(data_root=root, download=False))
        try:
            build_data_rank_zero_first(offline, ctx)
        except DatasetError as error:
            assert "download is off" in str(error)
            open(os.path.join(marks, f"refused.{rank}"), "w").close()
        online = types.SimpleNamespace(dataset="cifar10", data=DataOptions(data_root=root, imb_factor=1.0))
        assert build_data_rank_zero_first(online, ctx).train_counts == [5] * 10
    finally:
        dist.cleanup()


def test_under_ddp_rank_zero_downloads_and_the_others_read_what_it_fetched(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    _spawn_two(_download_worker, str(tmp_path / "data"), str(marks))
    assert sorted(os.listdir(marks)) == ["download.0", "refused.0", "refused.1"]


def _spawn_two(worker, *args):
    """worker(rank, 2, port, *args) in two gloo processes on a free local port."""
    run_ranks(worker, *args, world_size=2)


def _train_tiny_ddp(out, with_val=False):
    """_train_tiny in two gloo processes."""
    _spawn_two(_ddp_worker, out, with_val)


def test_ddp_gloo_matches_single_process(tmp_path):
    single = str(tmp_path / "single.pt")
    _train_tiny(dist.DeviceContext(torch.device("cpu")), single)
    ddp = str(tmp_path / "ddp.pt")
    _train_tiny_ddp(ddp)
    a, b = torch.load(single), torch.load(ddp)
    for key in a["state"]:
        torch.testing.assert_close(a["state"][key], b["state"][key], rtol=1e-4, atol=1e-5)  # float summation order differs
    assert a["top1"] == b["top1"] and a["nll"] == pytest.approx(b["nll"], rel=1e-5)


def test_ddp_validation_selection_and_test_interval_agree_with_single_process(tmp_path):
    # Every rank must take the same "score the test set now?" decision (the test pass is a
    # collective); the decision rests on the all-reduced validation top-1, so DDP reproduces the
    # single process's test epochs and selected epoch.
    single = str(tmp_path / "single.pt")
    _train_tiny(dist.DeviceContext(torch.device("cpu")), single, with_val=True)
    ddp = str(tmp_path / "ddp.pt")
    _train_tiny_ddp(ddp, with_val=True)
    a, b = torch.load(single)["records"], torch.load(ddp)["records"]
    assert 2 <= a["test_evaluations"] < 5  # the interval skipped some epochs, the last was scored
    assert a["test_evaluations"] == b["test_evaluations"]
    for key in ("best_on_val", "last", "last_val"):
        assert a[key]["epoch"] == b[key]["epoch"] and a[key]["top1"] == pytest.approx(b[key]["top1"])
    assert a["best_on_val"]["selection_score"] == pytest.approx(b["best_on_val"]["selection_score"])


def test_bf16_channels_last_and_gpu_flag_without_cuda(cifar10_root, tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, on any machine
    run = str(tmp_path / "run")
    # bf16 autocast is emulated (slow) on CPUs without native support: two steps are enough here.
    results = run_training(config_for(cifar10_root.root, run, "--epochs", "1", "--amp", "bf16", "--limit_batches", "2",
                                      "--channels_last", "--gpu", "0", "--tau_norm", "1.0",
                                      "--posthoc_tau", "1.0", "--tta_flip"), "ce")
    assert np.isfinite(results["last"]["nll"]) and results["precision"] == "bf16"
    for key in ("last_flip_tta", "last_posthoc_la_tau1", "last_tau_norm1"):
        assert 0.0 <= results[key]["top1"] <= 100.0 and results[key]["rule"].startswith("last epoch")
    assert capfd.readouterr().err.count("CUDA is not available") == 1


def test_selection_split_is_resolved_from_the_data(cifar10_root, tmp_path):
    with pytest.raises(ConfigError, match="--select_on val needs a validation split"):
        run_training(config_for(cifar10_root.root, str(tmp_path / "a"), "--select_on", "val"), "ce")
    results = run_training(config_for(cifar10_root.root, str(tmp_path / "b"), "--epochs", "1",
                                      "--val_per_class", "2"), "ce")
    assert results["selected_checkpoint"]["rule"] == "best top-1 on the val split"
    # The validation-selected entry reports the TEST accuracy of that epoch (40 test images).
    assert results["best_on_val"]["num_samples"] == 40 and results["best_on_val"]["selection_metric"] == "top1"
    # Timings are labelled with the hardware: CPU model and thread count, or GPU count and model.
    threads = torch.get_num_threads()
    expected = f"1 x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else \
        f"({threads} thread{'s' * (threads != 1)})"
    assert results["hardware"].endswith(expected)
    # --amp auto is recorded as what it became here: bf16 only where the device runs it natively.
    from utils.engine import resolve_amp
    assert results["precision"] == resolve_amp("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def test_test_interval_scores_the_test_set_only_when_needed(cifar10_root, tmp_path, monkeypatch):
    from utils import engine
    from utils.config import ConfigError

    seen = []  # (split, top1) per evaluation, in order; the test split has 40 images

    def spy(*args, **kwargs):
        summary = real_evaluate(*args, **kwargs)
        seen.append(("test" if summary["num_samples"] == 40 else "val", summary["top1"]))
        return summary

    real_evaluate = engine.evaluate
    monkeypatch.setattr(engine, "evaluate", spy)
    # A vanishing learning rate keeps the validation top-1 (nearly) flat, so most epochs need no
    # test. Evaluations every 2 epochs (and after the last): 2, 4, 6, 8, 9. Two training batches an
    # epoch: the schedule of evaluations is the subject, not the training.
    results = run_training(config_for(cifar10_root.root, str(tmp_path / "run"), "--epochs", "9",
                                      "--val_per_class", "2", "--test_interval", "3", "--eval_interval", "2",
                                      "--lr", "1e-12", "--warmup_epochs", "0", "--limit_batches", "2"), "ce")
    rounds, best_val, last_tested = [], -1.0, 0
    for split, top1 in seen:
        if split == "val":
            rounds.append({"val": top1})
        else:
            rounds[-1]["test"] = top1
    assert len(rounds) == 5
    for epoch, scores in zip((2, 4, 6, 8, 9), rounds):
        # 3 epochs since the last test (not a multiple of 3: evaluations fall on even epochs), an
        # improved validation top-1, or the last epoch.
        due = epoch - last_tested >= 3 or epoch == 9 or scores["val"] > best_val
        assert ("test" in scores) == due, (epoch, rounds)
        best_val = max(best_val, scores["val"])
        last_tested = epoch if due else last_tested
    skipped = sum("test" not in scores for scores in rounds)
    assert skipped >= 1 and results["last"]["epoch"] == 9 and results["last"]["top1"] == rounds[-1]["test"]
    assert results["best_on_val"]["top1"] == rounds[results["best_on_val"]["epoch"] // 2 - 1]["test"]
    assert f"over the {5 - skipped} epochs whose test set was evaluated" in results["best_on_test"]["rule"]
    with pytest.raises(ConfigError, match="--test_interval 3 needs --select_on val"):
        run_training(config_for(cifar10_root.root, str(tmp_path / "other"), "--test_interval", "3"), "ce")


def test_run_never_writes_into_its_pretrained_input(cifar10_root, tmp_path):
    source = str(tmp_path / "source")
    run_training(config_for(cifar10_root.root, source, "--epochs", "1"), "ce")
    before = open(os.path.join(source, "config.json")).read()
    with pytest.raises(ConfigError, match="--pretrained_model"):
        run_training(config_for(cifar10_root.root, source, "--pretrained_model", source), "ce")
    assert open(os.path.join(source, "config.json")).read() == before


def test_amp_auto_resolves_per_device(monkeypatch):
    from utils.engine import make_scaler, resolve_amp

    cpu = torch.device("cpu")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve_amp("auto", cpu) == ("bf16" if native else "none")
    assert resolve_amp("fp16", cpu) == "fp16" and resolve_amp("none", torch.device("cuda")) == "none"
    # bf16 only where it is in hardware (Ampere, capability 8.0, and later): V100 (7.0) and T4
    # (7.5) emulate it, and torch.cuda.is_bf16_supported() says yes there too.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    for capability, expected in (((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_amp("auto", torch.device("cuda")) == expected
        assert engine_native("bf16", torch.device("cuda")) == (expected == "bf16")
        assert engine_native("fp16", torch.device("cuda"))
    assert not make_scaler(cpu, "auto").is_enabled() and not make_scaler(cpu, "fp16").is_enabled()
    defaults = main_script.get_args_parser().parse_args([])
    assert defaults.amp == "auto" and defaults.channels_last is True


def test_compile_with_data_parallel_is_refused(cifar10_root, tmp_path, monkeypatch):
    from utils.config import ConfigError

    # Two GPU ids make a DataParallel context; the refusal must come before any model is built.
    monkeypatch.setattr(dist, "setup_devices",
                        lambda gpu: dist.DeviceContext(torch.device("cpu"), data_parallel_ids=[0, 1]))
    with pytest.raises(ConfigError, match="--compile.*DataParallel.*torchrun"):
        run_training(config_for(cifar10_root.root, str(tmp_path / "run"), "--compile", "--gpu", "0,1"), "ce")
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("flags,mode", [(("--compile",), "default"),
                                        (("--compile_mode", "reduce-overhead"), "reduce-overhead"),
                                        (("--compile", "--compile_mode", "max-autotune"), "max-autotune")])
def test_compile_mode_reaches_torch_compile(cifar10_root, tmp_path, monkeypatch, flags, mode):
    # --compile_mode implies --compile; the mode is handed to torch.compile for the training
    # network only (evaluation stays eager), and a run continued with another mode is the same run.
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, **kwargs: compiled.append(kwargs) or net)
    run = str(tmp_path / "run")
    config = config_for(cifar10_root.root, run, "--epochs", "1", "--limit_batches", "1", *flags)
    assert config.run.compile and config.run.compile_mode == mode
    run_training(config, "ce")
    assert compiled == [{"mode": mode}]
    other = "default" if mode != "default" else "reduce-overhead"
    resumed = run_training(config_for(cifar10_root.root, run, "--epochs", "2", "--limit_batches", "1",
                                      "--compile_mode", other, "--resume", "auto"), "ce")
    assert resumed["last"]["epoch"] == 2 and compiled[-1] == {"mode": other}


def test_a_continuation_with_another_epochs_rewrites_config_json_keeping_the_old_number(cifar10_root, tmp_path):
    # config.json says how long the run trains (run_status and make_table read it); the number it
    # said before stays in epochs_changed, with the epoch the change took effect after.
    run = str(tmp_path / "run")
    run_training(config_for(cifar10_root.root, run, "--epochs", "1", "--limit_batches", "1"), "ce")
    with open(os.path.join(run, "config.json")) as stream:
        first = json.load(stream)
    assert first["optim"]["epochs"] == 1 and "epochs_changed" not in first
    resumed = run_training(config_for(cifar10_root.root, run, "--epochs", "2", "--limit_batches", "1",
                                      "--resume", "auto"), "ce")
    assert resumed["last"]["epoch"] == 2
    with open(os.path.join(run, "config.json")) as stream:
        second = json.load(stream)
    changes = second.pop("epochs_changed")
    assert [(c["from"], c["to"], c["after_epoch"]) for c in changes] == [(1, 2, 1)]
    assert second == {**first, "optim": {**first["optim"], "epochs": 2}}
    with open(os.path.join(run, "log.txt")) as stream:
        assert "--epochs 1 -> 2 from epoch 1 on (config.json updated" in stream.read()
    # The same number again changes nothing; a third length adds to the list.
    run_training(config_for(cifar10_root.root, run, "--epochs", "2", "--resume", "auto"), "ce")
    with open(os.path.join(run, "config.json")) as stream:
        assert json.load(stream)["epochs_changed"] == changes
    run_training(config_for(cifar10_root.root, run, "--epochs", "3", "--limit_batches", "1", "--resume", "auto"), "ce")
    with open(os.path.join(run, "config.json")) as stream:
        third = json.load(stream)
    assert third["optim"]["epochs"] == 3
    assert [(c["from"], c["to"], c["after_epoch"]) for c in third["epochs_changed"]] == [(1, 2, 1), (2, 3, 2)]


def test_compile_mode_is_checked():
    with pytest.raises(SystemExit):
        main_script.get_args_parser().parse_args(["--compile_mode", "fast"])
    from utils.config import ConfigError
    with pytest.raises(ConfigError, match="--compile_mode must be one of default, reduce-overhead, max-autotune"):
        RunConfig(compile_mode="fast")


# ---- DDP: an interrupted and resumed run equals the uninterrupted one, for every method ----------
# Small settings so each method runs its own machinery (BCCL's k-means after epoch 1, LCSL's teacher
# labels from epoch 2, MoCo's queue) within two epochs on 8 px images.
RESUME_OPTIONS = {"bccl": {"feat_dim": 8, "queue_size": 6, "num_centroids": 2, "warmup_epochs": 1, "kmeans_every": 1},
                  "moco": {"dim": 4, "queue_size": 8, "bn_splits": 2}, "lcsl": {"arch": "resnet32", "select_on": "test"}}


def _fit_method(ctx, name, epochs, resume=None):
    """Trains `name` on tiny data with a random crop + flip recipe (drawn from the global torch
    generator, as the PIL pipeline without workers does) and returns its state, its records
    and the last.pth payload it would have written, as the runner does: only rank 0's."""
    torch.manual_seed(0)
    data = _tiny_data()
    method = build_method(name, build_model("resnet32", 4), data.train_counts, **RESUME_OPTIONS.get(name, {}))
    if resume is not None:
        method.load_state_dict(resume["state_dict"], strict=True)
    method.wrap(lambda net: dist.wrap_network(net, ctx), lambda net: net)
    config = TrainConfig(script="test", dataset="tiny", data=__import__("datasets").DataOptions(), arch="resnet32",
                         head="linear", head_scale=None, method=name, method_options={}, batch_size=8,
                         train_aug=("standard",), aug_options={}, sampler=None, sampler_options={}, select_on="test",
                         optim=OptimConfig(lr=0.1, epochs=epochs, warmup_epochs=0, milestones=()),
                         run=RunConfig(progress=False, workers=0, amp="none", seed=3))
    per_rank = config.batch_size // ctx.world_size
    views = build_views(["standard"] * method.num_views, "cifar", 8)
    loaders = {"train": build_train_loader(data.train, views, per_rank, seed=3, rank=ctx.rank,
                                           world_size=ctx.world_size, drop_last=True),
               "test": build_eval_loader(data.test, None, 6, rank=ctx.rank, world_size=ctx.world_size)}
    saved = {}

    def save_checkpoint(file, epoch, optimizer, scaler, records):
        saved[file] = copy.deepcopy({"state_dict": method.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scaler": scaler.state_dict(), "records": records, "epoch": epoch,
                                     "path": file})

    records = fit(config, method, data, ctx, loaders, DeviceInputs(data.mean, data.std, ctx.device), QuietLogger(),
                  save_checkpoint, resume=resume)
    return method.state_dict(), records, dist.broadcast_object(saved.get("last.pth"))


def _resume_worker(rank, world, port, names, folder):
    """For each method: the uninterrupted run, a run stopped after epoch 1, and its continuation.
    All methods in one pair of processes: starting processes costs more than these tiny runs."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = dist.setup_devices(None, backend="gloo")
    try:
        for name in names:
            straight, straight_records, _ = _fit_method(ctx, name, epochs=2)
            _, _, checkpoint = _fit_method(ctx, name, epochs=1)  # "killed" after epoch 1
            # A new process starts with generators in another state; the run must not depend on it.
            torch.manual_seed(1234 + 7 * rank)
            resumed, resumed_records, _ = _fit_method(ctx, name, epochs=2, resume=checkpoint)
            if ctx.is_main:
                torch.save({"straight": straight, "resumed": resumed,
                            "top1": (straight_records["last"]["top1"], resumed_records["last"]["top1"])},
                           os.path.join(folder, f"{name}.pt"))
    finally:
        dist.cleanup()


@pytest.fixture(scope="module")
def ddp_resume_runs(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("ddp_resume"))
    _spawn_two(_resume_worker, METHODS.names(), folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_ddp_resume_reproduces_the_uninterrupted_run(ddp_resume_runs, name):
    # Each rank draws its own augmentation and method randomness (mixup, rotations, key shuffles);
    # those streams must not depend on whether the run was resumed, so the two agree bit for bit.
    runs = torch.load(os.path.join(ddp_resume_runs, f"{name}.pt"), weights_only=False)
    straight, resumed = runs["straight"], runs["resumed"]
    assert straight.keys() == resumed.keys()
    differing = [key for key in straight if not torch.equal(straight[key], resumed[key])]
    assert not differing, f"{len(differing)} of {len(straight)} tensors differ, e.g. {differing[:3]}"
    assert runs["top1"][0] == runs["top1"][1]


def test_an_unbalanced_validation_split_names_its_short_classes():
    from datasets import DataOptions, build_dataset
    from utils.run import validation_shortfall

    # The bundled sample at ratio 100 keeps all 500 airplanes for training and leaves 201 cars.
    data = build_dataset("cifar10_sample", DataOptions(imb_factor=0.01, val_per_class=300))
    assert validation_shortfall(data, 300) == "class 0 (airplane): 0, class 1 (automobile): 201"
    balanced = build_dataset("cifar10_sample", DataOptions(imb_factor=0.01, val_per_class=20))
    assert validation_shortfall(balanced, 20) == "class 0 (airplane): 0"
    assert validation_shortfall(build_dataset("cifar10_sample", DataOptions(imb_factor=1.0, val_per_class=0)), 0) == ""


def test_fit_gives_the_schedule_the_methods_cosine_rule(tmp_path, monkeypatch):
    # LCSL and BCCL keep their warm-up formula's cosine without warm-up; fit must pass the
    # method's rule to the schedule, or --warmup_epochs 0 would silently take MoCo's formula.
    from methods.erm import ERM
    from utils import engine

    asked = []
    real = engine.learning_rate
    monkeypatch.setattr(engine, "learning_rate",
                        lambda optim, epoch, *rule: asked.append(rule) or real(optim, epoch, *rule))
    monkeypatch.setattr(ERM, "warmup_cosine_without_warmup", True)
    _train_tiny(dist.DeviceContext(torch.device("cpu")), str(tmp_path / "run.pt"))
    assert asked == [(True,), (True,)]
