"""Results stay what they claim: one prediction rule for every number, test.py scores a checkpoint
exactly as the training log did and only on the run's own data, and a bad evaluation image stops
a run before its first epoch with one line (also from DataLoader workers)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_ranks, write_image_lists
from datasets import DataOptions, DatasetError, build_dataset
from datasets.augment import build_transform
from datasets.base import ImageSource, LongTailData
from datasets.loaders import (build_eval_loader, build_eval_loaders, build_train_loader,
                              check_evaluation_images, unreadable_image)
from utils import dist
from utils.checkpoint import load_checkpoint
from utils.engine import DeviceInputs, evaluate, resolve_amp
from utils.metrics import predicted_class, summarize, target_rank, topk_accuracy
from utils.runner import run_training

import main as main_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = dist.DeviceContext(torch.device("cpu"))


def load_test_script():
    """The repository's test.py as a module (the name ``test`` is also a standard-library package)."""
    spec = importlib.util.spec_from_file_location("ltkit_test_script", os.path.join(ROOT, "test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- one prediction rule ------------------------------------------------------------------------
# Two samples per class (a balanced set); ties everywhere, as bf16 logits produce them. With ties
# going to the lower class index the predictions are 0, 1, 0, 1, 2, 0, 0, 3: right for samples
# 0, 3, 4 and 7, one per class, so top-1 = mean per-class accuracy = 50.
TIED = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0], [0.0, 5.0, 1.0, 5.0],
                     [0.0, 0.0, 4.0, 4.0], [4.0, 0.0, 4.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 7.0]])
TIED_TARGETS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_ties_go_to_the_lower_class_and_every_number_uses_that_prediction():
    assert predicted_class(TIED).tolist() == [0, 1, 0, 1, 2, 0, 0, 3]
    summary = summarize(TIED, TIED_TARGETS, [50, 30, 10, 5])
    assert summary["top1"] == 50.0 and summary["mean_per_class"] == 50.0
    assert summary["per_class"] == [50.0, 50.0, 50.0, 50.0]
    assert (summary["medium"], summary["few"]) == (50.0, 50.0)  # 50, 30 medium; 10, 5 few
    # NaN never wins a row, and an all-NaN row predicts class 0 like an all-equal one.
    nan = float("nan")
    assert predicted_class(torch.tensor([[nan, 1.0, 2.0], [nan, nan, nan]])).tolist() == [2, 0]


def test_topk_ranks_ties_by_class_index():
    flat = torch.ones(3, 7)  # every class tied: class c has rank c
    targets = torch.tensor([0, 4, 6])
    assert target_rank(flat, targets).tolist() == [0, 4, 6]
    assert topk_accuracy(flat, targets) == {1: pytest.approx(100 / 3), 5: pytest.approx(200 / 3)}
    # Rank 0 is exactly "the prediction is the target", for any logits.
    logits = torch.randn(200, 5).round(decimals=0)  # many ties
    labels = torch.randint(0, 5, (200,))
    assert torch.equal(target_rank(logits, labels) == 0, predicted_class(logits) == labels)


def test_training_evaluation_reports_the_same_numbers_as_summarize():
    # Images carry their row of TIED in the first pixel; the "network" looks the logits up, in
    # batches of 3 as the evaluation loader gives them, and through bf16 as autocast would.
    pixels = np.zeros((8, 2, 2, 3), dtype=np.uint8)
    pixels[:, 0, 0, 0] = np.arange(8)
    source = ImageSource(TIED_TARGETS.numpy(), array=pixels)
    data = LongTailData("tied", 4, source, source, [50, 30, 10, 5], (0.0,) * 3, (1 / 255,) * 3, 2)
    loader = build_eval_loaders(data, 3, batch_size=3)["test"]

    def predict(images):
        return TIED.bfloat16()[images[:, 0, 0, 0].round().long()]

    reported = evaluate(predict, loader, DeviceInputs(data.mean, data.std, CPU.device), CPU, data.train_counts)
    assert reported == summarize(TIED, TIED_TARGETS, data.train_counts)
    assert reported["top1"] == reported["mean_per_class"] == 50.0


def tiny_config(data_root, out_dir, *extra):
    args = ["--dataset", "cifar10", "--data_root", data_root, "--imb_factor", "0.1", "--method", "ce",
            "--epochs", "1", "--limit_batches", "2", "-b", "16", "--workers", "0", "--progress", "False",
            "--download", "False", "--out_dir", out_dir, *extra]
    return main_script.build_config(main_script.get_args_parser().parse_args(args))[0]


def run_test_script(*args):
    script = load_test_script()
    script.main(script.get_args_parser().parse_args(list(args)))


def test_test_script_reproduces_the_training_log(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    # The run's precision is the one test.py's own default (--amp auto) would not pick here, so
    # test.py must take the run's precision (and memory format, batch and prediction rule) to
    # report the log's numbers.
    amp = "none" if resolve_amp("auto", CPU.device) == "bf16" else "bf16"
    results = run_training(tiny_config(cifar10_root.root, run, "--amp", amp), "ce")
    out = str(tmp_path / "eval.json")
    run_test_script("--path", run, "--json", out, "--workers", "0")
    evaluated = json.load(open(out))
    for key in ("top1", "top5", "mean_per_class", "per_class", "many", "medium", "few", "ece", "nll", "num_samples"):
        assert evaluated[key] == results["last"][key], key
    assert evaluated["top1"] == pytest.approx(np.nanmean([v for v in evaluated["per_class"] if v is not None]))


# ---- the data a checkpoint is evaluated on --------------------------------------------------------
def test_relative_data_root_is_stored_absolute_and_used_from_anywhere(cifar10_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # cifar10_root is tmp_path/data
    run_training(tiny_config("data", "runs/r"), "ce")
    checkpoint = load_checkpoint(str(tmp_path / "runs" / "r" / "last.pth"))
    assert checkpoint["dataset"]["options"]["data_root"] == str(tmp_path / "data")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)  # an unrelated ./data where test.py runs
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    run_test_script("--path", str(tmp_path / "runs" / "r"), "--workers", "0")
    assert f"data: {tmp_path / 'data'} (recorded in the checkpoint)" in capsys.readouterr().out


def _rewrite(path, change):
    payload = torch.load(path, weights_only=False)
    change(payload)
    torch.save(payload, path)


def test_old_checkpoint_with_relative_paths_resolves_from_the_run_folder(cifar10_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_training(tiny_config("data", "runs/r"), "ce")
    last = str(tmp_path / "runs" / "r" / "last.pth")

    def make_old(payload):  # as written before paths were stored absolute
        payload["dataset"]["options"]["data_root"] = "data"

    _rewrite(last, make_old)
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    run_test_script("--path", last, "--workers", "0")
    # runs/r was made from tmp_path, so "data" meant tmp_path/data, not ./data here.
    assert f"data: {tmp_path / 'data'}" in capsys.readouterr().out

    def make_unrecoverable(payload):  # an absolute run folder says nothing about the old cwd
        payload["config"]["run"]["out_dir"] = "/somewhere/else/r"

    _rewrite(last, make_unrecoverable)
    with pytest.raises(DatasetError, match=r"relative path --data_root 'data'.*test\.py --data_root"):
        run_test_script("--path", last, "--workers", "0")


def test_missing_data_folder_is_refused_in_one_line_and_nothing_is_downloaded(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    run_training(tiny_config(cifar10_root.root, run), "ce")
    last = os.path.join(run, "last.pth")
    # The run recorded download=True; test.py must still never fetch anything.
    _rewrite(last, lambda payload: payload["dataset"]["options"].update(data_root=str(tmp_path / "gone"),
                                                                          download=True))
    result = subprocess.run([sys.executable, "test.py", "--path", last], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"data folder {tmp_path / 'gone'}" in result.stderr and "test.py --data_root" in result.stderr
    assert not os.path.exists(tmp_path / "gone")
    # An existing folder without the files: the CIFAR reader's own error, still no download.
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="download is off"):
        run_test_script("--path", last, "--data_root", str(tmp_path / "empty"))
    assert os.listdir(tmp_path / "empty") == []


# ---- bad evaluation images: found before the first epoch, reported in one line --------------------
def _damage(path, how):
    data = open(path, "rb").read()
    with open(path, "wb") as handle:
        handle.write(b"not an image at all" if how == "garbage" else data[: len(data) // 2])


def test_unreadable_image_detects_garbage_and_cut_files_but_accepts_valid_ones(tmp_path):
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for name in ("ok.jpg", "cut.jpg", "cut.png", "junk.png", "trailing.jpg"):
        picture.save(tmp_path / name)
    _damage(tmp_path / "cut.jpg", "cut")
    _damage(tmp_path / "cut.png", "cut")
    _damage(tmp_path / "junk.png", "garbage")
    with open(tmp_path / "trailing.jpg", "ab") as handle:  # bytes after the end marker: still valid
        handle.write(b"\0\0metadata")
    assert unreadable_image(str(tmp_path / "ok.jpg")) is None
    assert unreadable_image(str(tmp_path / "trailing.jpg")) is None
    for name in ("cut.jpg", "cut.png", "junk.png"):
        assert unreadable_image(str(tmp_path / name)).startswith("not a readable image"), name
    assert unreadable_image(str(tmp_path / "absent.jpg")).startswith("not found")


def test_bad_validation_image_stops_the_run_before_training(tmp_path):
    lists = write_image_lists(tmp_path, "ImageNet_LT", ["train", "val", "test"])
    bad = os.path.join(lists.data_root, "val", "c1", "1.png")
    _damage(bad, "garbage")
    config = main_script.build_config(main_script.get_args_parser().parse_args(
        ["--dataset", "imagenet_lt", "--data_root", lists.data_root, "--split_dir", lists.split_dir,
         "--method", "ce", "--arch", "resnet32", "--epochs", "1", "--workers", "0", "--progress", "False",
         "--out_dir", str(tmp_path / "run")]))[0]
    with pytest.raises(DatasetError) as caught:
        run_training(config, "ce")
    message = str(caught.value)
    assert "\n" not in message and bad in message
    assert f"entry 4 of {os.path.join(lists.split_dir, 'ImageNet_LT_val.txt')}" in message
    assert not os.path.exists(tmp_path / "run")  # nothing written


def test_test_script_notes_an_evaluation_list_changed_since_training(tmp_path, capsys):
    lists = write_image_lists(tmp_path, "ImageNet_LT", ["train", "val", "test"])
    run = str(tmp_path / "run")
    config = main_script.build_config(main_script.get_args_parser().parse_args(
        ["--dataset", "imagenet_lt", "--data_root", lists.data_root, "--split_dir", lists.split_dir,
         "--method", "ce", "--arch", "resnet32", "--epochs", "1", "--workers", "0", "--progress", "False",
         "--out_dir", run]))[0]
    run_training(config, "ce")
    capsys.readouterr()
    run_test_script("--path", run, "--workers", "0")
    assert "note: the test split" not in capsys.readouterr().out
    test_list = os.path.join(lists.split_dir, "ImageNet_LT_test.txt")
    with open(test_list) as stream:
        kept = stream.readlines()[:-2]
    with open(test_list, "w") as stream:
        stream.writelines(kept)
    run_test_script("--path", run, "--workers", "0")
    assert "note: the test split now holds 4 images, but the run was scored on 6" in capsys.readouterr().out


def _bad_list_data(tmp_path):
    lists = write_image_lists(tmp_path, "ImageNet_LT", ["train", "val", "test"])
    data = build_dataset("imagenet_lt", DataOptions(data_root=lists.data_root, split_dir=lists.split_dir))
    _damage(data.test.paths[5], "garbage")
    return lists, data


def _check_worker(rank, world, port, data, folder):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.setup_devices(None, backend="gloo")
    try:
        check_evaluation_images(data, DataOptions(data_root="unused"), rank, world)
        message = "passed"
    except DatasetError as error:
        message = str(error)
    finally:
        dist.cleanup()
    with open(os.path.join(folder, f"rank{rank}.txt"), "w") as handle:
        handle.write(message)


def test_ddp_ranks_split_the_check_and_stop_together(tmp_path):
    # Entry 6 (position 5) falls in rank 1's share; rank 0 must stop with the same line.
    _, data = _bad_list_data(tmp_path)
    run_ranks(_check_worker, data, str(tmp_path))
    messages = [open(tmp_path / f"rank{rank}.txt").read() for rank in (0, 1)]
    assert messages[0] == messages[1] and data.test.paths[5] in messages[0] and "entry 6 of" in messages[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_errors_reach_the_user_as_the_original_line(tmp_path, workers):
    _, data = _bad_list_data(tmp_path)
    transform = build_transform("test", "imagenet", 16)
    messages = []
    for loader in (build_eval_loader(data.test, transform, 2, workers=workers),
                   build_train_loader(data.test, transform, 2, workers=workers)):
        with pytest.raises(DatasetError) as caught:
            for _ in loader:
                pass
        messages.append(str(caught.value))
    for message in messages:
        assert message.startswith("cannot read image ") and data.test.paths[5] in message
        assert "\n" not in message and "Traceback" not in message


def test_main_with_workers_reports_a_bad_training_image_in_one_line(tmp_path):
    lists = write_image_lists(tmp_path, "ImageNet_LT", ["train", "val", "test"])
    bad = os.path.join(lists.data_root, "train", "c0", "2.png")
    _damage(bad, "garbage")  # training images are read during the epoch, here by a worker
    result = subprocess.run(
        [sys.executable, "main.py", "--dataset", "imagenet_lt", "--data_root", lists.data_root, "--split_dir",
         lists.split_dir, "--method", "ce", "--arch", "resnet32", "--epochs", "1", "-b", "9", "--workers", "2",
         "--progress", "False", "--amp", "none", "--out_dir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("main.py: error: cannot read image ") and bad in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
