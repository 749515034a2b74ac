"""LCSL (methods/lcsl.py, train_LCSL.py): the mask, the loss and the teacher rules against
hand-computed values, resume restoring the teacher, and the paper's README command end to end."""
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import test as test_script
import train_LCSL as script
from conftest import run_entry
from methods import build_method
from methods.lcsl import flip_averaged_logits, lcsl_loss, mix_images, self_labels
from models import build_model
from models.heads import tau_normalize_head
from utils.checkpoint import load_checkpoint
from utils.config import ConfigError
from utils.run import resume_at_start_epoch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "sample_data", "cifar10_sample")
README_COMMAND = ["--dataset=cifar100", "--batch_size=64", "--imb_factor=0.01", "--alpha=1.", "--beta=1.",
                  "--lr=0.01", "--gpu=0", "--weight_decay=5e-3", "--epochs=300", "--lambda_init=0.5"]
COUNTS = [50, 40, 30, 20, 10, 8, 6, 4, 2, 1]  # mean 17.1: classes 4..9 are the minority


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machines are small and shared; two OpenMP threads fighting for busy cores make
    these tiny batches ten times slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_script(*argv, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def parse(*argv):
    return script.get_args_parser().parse_args(list(argv))


def lcsl(counts=COUNTS, **options):
    torch.manual_seed(0)
    return build_method("lcsl", build_model("resnet32", len(counts)), counts, arch="resnet32", **options)


def ce(logits, label):
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


# ---- the mask and the loss ------------------------------------------------------------------------
def test_mask_needs_confidence_and_a_minority_class():
    minority = lcsl(counts=[10, 3, 2]).minority  # mean 5: classes 1 and 2
    assert minority.tolist() == [False, True, True]
    logits = torch.tensor([[2.0, 0.0, 0.0],   # class 0, p = e^2 / (e^2 + 2) = 0.79: majority, out
                           [0.0, 2.0, 0.0],   # class 1, p = 0.79: in
                           [0.0, 0.5, 0.0],   # class 1, p = e^.5 / (e^.5 + 2) = 0.45 < 0.5: out
                           [0.0, 0.0, 1.0]])  # class 2, p = e / (e + 2) = 0.58: in (tau = 1)
    labels, mask = self_labels(logits, tau=1.0, threshold=0.5, minority=minority)
    assert labels.tolist() == [0, 1, 1, 2] and mask.tolist() == [0.0, 1.0, 0.0, 1.0]
    # tau = 2 halves the logits: row 3 drops to p = e^.5 / (e^.5 + 2) = 0.45; row 1 keeps e / (e + 2).
    _, mask = self_labels(logits, tau=2.0, threshold=0.5, minority=minority)
    assert mask.tolist() == [0.0, 1.0, 0.0, 0.0]
    # The threshold is inclusive (>=), as in the reference's `ge`.
    confidence = torch.softmax(logits[1:2], dim=1).max()  # float32, as compared in self_labels
    above = torch.nextafter(confidence, torch.tensor(1.0))
    assert self_labels(logits[1:2], 1.0, confidence.item(), minority)[1].item() == 1.0
    assert self_labels(logits[1:2], 1.0, above.item(), minority)[1].item() == 0.0


def test_loss_matches_hand_computation():
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]], requires_grad=True)
    targets, perm, lam = torch.tensor([0, 2]), torch.tensor([1, 0]), torch.tensor(0.7)
    pseudo, mask = torch.tensor([1, 1]), torch.tensor([0.0, 1.0])
    loss, parts = lcsl_loss(logits, targets, perm, lam, pseudo, mask, alpha=0.5, beta=2.0)
    row0, row1 = [1.0, 0.0, 0.0], [0.0, 2.0, 1.0]
    # y = (0, 2), y_pi = (2, 0); the SL term averages over both images, only the second counts.
    mix = 0.7 * (ce(row0, 0) + ce(row1, 2)) / 2 + 0.3 * (ce(row0, 2) + ce(row1, 0)) / 2
    sl = (0 * ce(row0, 1) + 1 * ce(row1, 1)) / 2
    assert parts["loss/mix"].item() == pytest.approx(mix, rel=1e-6)
    assert parts["loss/sl"].item() == pytest.approx(sl, rel=1e-6)
    assert loss.item() == pytest.approx(2.0 * mix + 0.5 * sl, rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_mixing_and_flip_averaging():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).view(2, 3, 2, 2)
    mixed = mix_images(images, torch.tensor(0.25), torch.tensor([1, 0]))
    assert torch.allclose(mixed[0], 0.25 * images[0] + 0.75 * images[1])
    assert torch.allclose(mixed[1], 0.25 * images[1] + 0.75 * images[0])
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()  # not mirror-invariant
    expected = (net(images) + net(images.flip(3))) / 2
    assert torch.allclose(flip_averaged_logits(net, images), expected, atol=1e-6)


def test_training_step_one_student_forward_and_hand_loss():
    method = lcsl(alpha=0.5, beta=2.0).train()
    method.teacher_epoch.fill_(1)  # a teacher that a student has replaced ...
    method.on_epoch_start(0)
    with torch.no_grad():  # ... and is sure of class 9 (a minority class) for every image
        method.teacher.head.weight.zero_()
        method.teacher.head.bias.zero_()
        method.teacher.head.bias[9] = 20.0
    lam, perm = torch.tensor(0.3), torch.tensor([2, 0, 3, 1])
    method.draw_mixup = lambda batch_size, device: (lam, perm)
    calls = {"student": [], "teacher": []}
    method.model.register_forward_hook(lambda m, i, o: calls["student"].append(i[0].shape[0]))
    method.teacher.register_forward_hook(lambda m, i, o: calls["teacher"].append(i[0].shape[0]))
    images, targets = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 5, 9])
    out = method.training_step(images, targets, epoch=0)
    assert calls == {"student": [4, 4], "teacher": [8]}  # clean then mixed; the flip in one pass
    assert out["parts"]["sl/mask_rate"].item() == 1.0
    statistics = method.epoch_statistics()
    assert statistics["lcsl/teacher_labels"].tolist() == [0] * 9 + [4]  # all four labelled class 9 ...
    assert statistics["lcsl/counted_labels"].tolist() == [0] * 9 + [4]  # ... a minority class: all count
    torch.testing.assert_close(statistics["lcsl/student_row_norm"], method.model.head.weight.detach().norm(dim=1))
    torch.testing.assert_close(statistics["lcsl/student_bias"], method.model.head.bias.detach())
    with torch.no_grad():
        logits = method.model(0.3 * images + 0.7 * images[perm]).tolist()
    mix = sum(0.3 * ce(row, int(y)) + 0.7 * ce(row, int(y_b)) for row, y, y_b in zip(logits, targets, targets[perm])) / 4
    sl = sum(ce(row, 9) for row in logits) / 4
    assert out["loss"].item() == pytest.approx(2.0 * mix + 0.5 * sl, rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(p.grad is not None for p in method.model.parameters())
    assert not method.teacher.training and method.model.training


def test_batchnorm_statistics_see_the_clean_batch_then_the_mixed_one():
    """The reference's unused clean forward (train mode) updates BN's running statistics before
    the mixed forward: each BN ends at 0.9 * (0.9 * r + 0.1 * clean) + 0.1 * mixed."""
    method = lcsl().train()
    lam, perm = torch.tensor(0.4), torch.tensor([1, 2, 3, 0])
    method.draw_mixup = lambda batch_size, device: (lam, perm)
    images, targets = torch.randn(4, 3, 8, 8) * 2 + 1, torch.tensor([0, 1, 5, 9])
    replay = build_model("resnet32", len(COUNTS))
    replay.load_state_dict(method.model.state_dict())
    bn = method.model.backbone.bn1
    start = bn.running_mean.clone()
    method.training_step(images, targets, epoch=0)
    mixed = 0.4 * images + 0.6 * images[perm]
    with torch.no_grad():
        replay.train()
        first = replay.backbone.conv1(images).mean(dim=(0, 2, 3))
        second = replay.backbone.conv1(mixed).mean(dim=(0, 2, 3))
        replay(images)
        replay(mixed)
    # The stem's BN by hand (momentum 0.1), then every BN of the network against the replay.
    torch.testing.assert_close(bn.running_mean, 0.9 * (0.9 * start + 0.1 * first) + 0.1 * second)
    assert int(bn.num_batches_tracked) == 2
    for name, value in replay.state_dict().items():
        torch.testing.assert_close(method.model.state_dict()[name], value, msg=name)
    mixed_only = build_model("resnet32", len(COUNTS))
    mixed_only.load_state_dict(replay.state_dict())
    mixed_only.backbone.bn1.running_mean.copy_(start)
    with torch.no_grad():
        mixed_only.train()(mixed)
    assert not torch.allclose(mixed_only.backbone.bn1.running_mean, bn.running_mean)


def test_the_random_initial_teacher_gives_no_labels():
    method = lcsl().train()
    method.on_epoch_start(0)
    calls = []
    method.teacher.register_forward_hook(lambda m, i, o: calls.append(1))
    out = method.training_step(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 5, 9]), epoch=0)
    assert calls == [] and out["parts"]["loss/sl"].item() == 0.0 and out["parts"]["sl/mask_rate"].item() == 0.0
    # The reason: a Kaiming-initialised ResNet-32 with fresh BN statistics is fully confident.
    with torch.no_grad():
        confidence = method.teacher_logits(torch.randn(8, 3, 8, 8)).softmax(dim=1).max(dim=1).values
    assert (confidence > 0.9).all()
    calls.clear()
    method.on_epoch_end(0, evaluations(1.0))
    method.training_step(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 5, 9]), epoch=1)
    assert calls == [1]  # from the first replacement on, the teacher labels every batch


# ---- teacher rules --------------------------------------------------------------------------------
def evaluations(val, test=0.0):
    return {"val": {"mean_per_class": val, "top1": val}, "test": {"mean_per_class": test, "top1": test}}


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_teacher_is_replaced_only_when_the_selection_score_strictly_improves():
    method = lcsl()
    assert not same_weights(method.teacher, method.model)  # a separate random initialisation
    records = method.on_epoch_end(0, evaluations(10.0))
    assert records["method/teacher_epoch"] == 1 and same_weights(method.teacher, method.model)
    with torch.no_grad():
        method.model.head.bias.add_(1.0)  # the student moves on
    for epoch, val, test in ((1, 10.0, 0.0), (2, 10.0 + 1e-9, 0.0), (3, 9.0, 50.0)):
        assert method.on_epoch_end(epoch, evaluations(val, test)) == {}  # tie, rounding, worse val
        assert not same_weights(method.teacher, method.model)
    assert method.on_epoch_end(4, {}) == {}  # an epoch without evaluation
    records = method.on_epoch_end(5, evaluations(10.5))
    assert records["method/teacher_epoch"] == 6 and records["method/teacher_score"] == 10.5
    assert same_weights(method.teacher, method.model)
    assert int(method.teacher_epoch) == 6 and float(method.best_score) == 10.5
    assert not any(p.requires_grad for p in method.teacher.parameters())
    on_test = lcsl(select_on="test")
    assert on_test.on_epoch_end(0, evaluations(0.0, 3.0))["method/teacher_score"] == 3.0
    with pytest.raises(ConfigError, match="--select_on test"):
        lcsl().on_epoch_end(0, {"test": evaluations(1.0)["test"]})


def test_teacher_rows_are_normalised_each_epoch_and_tau_norm_is_exact():
    method = lcsl()
    bias, student = method.teacher.head.bias.clone(), method.model.head.weight.clone()
    method.on_epoch_start(0)
    norms = method.teacher.head.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)
    assert torch.equal(method.teacher.head.bias, bias) and torch.equal(method.model.head.weight, student)
    off = lcsl(fc_norm=False)
    weight = off.teacher.head.weight.clone()
    off.on_epoch_start(0)
    assert torch.equal(off.teacher.head.weight, weight)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    tau_head = tau_normalize_head(head, 1.9)
    expected = [[3 / 5 ** 1.9, 4 / 5 ** 1.9], [0.0, 2 / 2 ** 1.9]]
    assert torch.allclose(tau_head.weight, torch.tensor(expected), atol=1e-7)
    assert torch.equal(tau_head.bias, head.bias) and torch.equal(head.weight[0], torch.tensor([3.0, 4.0]))


# ---- command line ---------------------------------------------------------------------------------
def test_readme_command_parses_to_the_papers_recipe():
    config, label = script.build_config(parse(*README_COMMAND))
    assert (config.dataset, config.arch, config.head, config.method, config.batch_size) == \
        ("cifar100", "resnet32", "linear", "lcsl", 64)
    optim = config.optim
    assert (optim.lr, optim.weight_decay, optim.epochs, optim.warmup_epochs, optim.cosine) == (0.01, 5e-3, 300, 10, True)
    assert config.method_options == dict(arch="resnet32", alpha=1.0, beta=1.0, tau=1.0, threshold=0.5,
                                         fc_norm=True, select_on="val", mixup_alpha=1.0)
    assert config.data.lt_selection == "first" and config.data.val_per_class == 20
    assert config.train_aug == ("standard",) and config.run.seed == 0 and config.run.gpu == "0"
    imagenet, _ = script.build_config(parse("--dataset", "imagenet", "--data_aug", "sim_aug"))
    assert (imagenet.dataset, imagenet.arch, imagenet.select_on, imagenet.data.val_per_class) == \
        ("imagenet_lt", "resnext50", "val", 0)  # ImageNet_LT_val.txt: 20 images per class
    assert imagenet.train_aug == ("sim_aug",) and imagenet.aug_options == {}
    inat, _ = script.build_config(parse("--dataset", "inaturalist", "--data_aug", "autoaug"))
    assert (inat.arch, inat.train_aug, inat.select_on) == ("resnet50", ("randaug",), "test")  # val is its test
    assert script.build_config(parse("--data_aug", "sim_aug"))[0].train_aug == ("autoaug",)  # the reference's CIFAR rule
    assert script.build_config(parse("--arch", "resnet34_cifar", "--select_on", "test"))[0].select_on == "test"


@pytest.mark.parametrize("argv,fragment", [
    (("--use_norm", "True"), "--use_norm"),
    (("--aug", "autoaug", "--data_aug", "autoaug"), "--data_aug"),
    (("--randaug_n", "3"), "--randaug_n"),
    (("--dataset", "places_lt"), "--arch"),
    (("--val_per_class", "0", "--select_on", "val"), "--val_per_class"),
    (("--alpha", "0", "--beta", "0"), "--alpha 0 and --beta 0 leave LCSL no loss"),
])
def test_contradictions_name_the_flag(argv, fragment):
    with pytest.raises(ConfigError, match=fragment):
        script.build_config(parse(*argv))


def test_start_epoch_needs_the_matching_checkpoint(tmp_path):
    config, label = script.build_config(parse("--out_dir", str(tmp_path / "none")))
    with pytest.raises(ConfigError, match="--start_epoch 5"):
        resume_at_start_epoch(config, label, start_epoch=5)
    assert resume_at_start_epoch(config, label, start_epoch=1) is None


def test_best_checkpoint_and_teacher_follow_mean_per_class_accuracy_on_an_unbalanced_split():
    """On an unbalanced split top-1 and the per-class mean can disagree; the engine selects
    best.pth by the method's metric, so best.pth stays the student the teacher was copied from."""
    from utils.engine import _record_best

    method, records = lcsl(), {}
    assert method.selection_metric == "mean_per_class"
    first = {"val": {"top1": 50.0, "mean_per_class": 40.0}, "test": {"top1": 1.0}}
    second = {"val": {"top1": 60.0, "mean_per_class": 35.0}, "test": {"top1": 2.0}}  # top-1 up, mean down
    third = {"val": {"top1": 45.0, "mean_per_class": 41.0}, "test": {"top1": 3.0}}  # top-1 down, mean up
    for epoch, evaluation, selected in ((0, first, True), (1, second, False), (2, third, True)):
        assert _record_best(records, "val", evaluation, epoch, method.selection_metric) is selected
        assert bool(method.on_epoch_end(epoch, evaluation)) is selected
    assert records["best_on_val"]["epoch"] == int(method.teacher_epoch) == 3
    assert records["best_on_val"]["top1"] == 3.0 and records["best_on_val"]["selection_score"] == 41.0


# ---- end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_sample(tmp_path_factory):
    """The bundled sample cut to 120 training and 10 test images per class (the same files), so
    the runs below spend their time training rather than decoding and evaluating."""
    root = tmp_path_factory.mktemp("sample")
    for name in ("train", "test"):
        os.symlink(os.path.join(SAMPLE, name), root / name)
    (root / "classes.txt").write_text(open(os.path.join(SAMPLE, "classes.txt")).read())
    for name, keep in (("train.txt", 120), ("test.txt", 10)):
        seen, lines = {}, []
        for line in open(os.path.join(SAMPLE, name)):
            label = line.split()[-1]
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= keep:
                lines.append(line)
        (root / name).write_text("".join(lines))
    return str(root)


def smoke_args(data_root, out_dir, *extra):
    return [*README_COMMAND, "--epochs", "2", "--limit_batches", "3", "--dataset", "cifar10_sample",
            "--data_root", data_root, "--workers", "0", "--out_dir", out_dir, "--progress", "False",
            "--val_per_class", "5", "--batch_size", "32", *extra]


@pytest.fixture(scope="module")
def smoke_run(small_sample, tmp_path_factory):
    """The paper's README command with --epochs 2 --limit_batches 3 added, run once."""
    run = str(tmp_path_factory.mktemp("lcsl") / "run")
    return run, run_script("train_LCSL.py", *smoke_args(small_sample, run))


@pytest.mark.slow
def test_readme_command_end_to_end_then_test_script(smoke_run, tmp_path, capsys):
    run, result = smoke_run
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LCSL final report" in result.stdout and "selected_tau_norm1.9_flip_tta" in result.stdout
    results = json.load(open(os.path.join(run, "results.json")))
    assert results["method"] == "lcsl" and results["last"]["epoch"] == 2
    epoch = results["selected_report"]["epoch"]
    assert results["method/teacher_epoch"] == epoch == results["best_on_val"]["epoch"]
    assert results["selected_checkpoint"]["epoch"] == epoch and "val split" in results["selected_checkpoint"]["rule"]
    # best.pth is evaluated as training evaluated it: its plain numbers are the selected epoch's.
    for key in ("top1", "many", "medium", "few", "nll"):
        assert results["selected"][key] == results["best_on_val"][key], key
    for name in ("selected", "selected_flip_tta", "selected_tau_norm1.9", "selected_tau_norm1.9_flip_tta"):
        entry = results[name]
        assert 0.0 <= entry["top1"] <= 100.0 and entry["num_samples"] == 100 and entry["epoch"] == epoch
        assert {"many", "medium", "few", "mean_per_class"} <= set(entry) and "val split" in entry["rule"]
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["optim"]["epochs"] == 2 and config["method_options"]["alpha"] == 1.0
    with open(os.path.join(run, "per_class.csv")) as stream:
        rows = [line.strip().split(",") for line in stream]
    assert rows[0] == ["epoch", "statistic", *(f"class_{c}" for c in range(10))]
    assert [(row[0], row[1]) for row in rows[1:5]] == [("1", "lcsl/teacher_labels"), ("1", "lcsl/counted_labels"),
                                                     ("1", "lcsl/student_row_norm"), ("1", "lcsl/student_bias")]
    assert len(rows) == 9 and rows[1][2:] == ["0"] * 10  # epoch 1: the random teacher gives no label

    out_json = str(tmp_path / "best.json")
    code, _, err = run_entry(test_script, "test.py", ["--path", run, "--which", "best", "--json", out_json], capsys)
    assert code == 0, err[-2000:]
    assert json.load(open(out_json))["top1"] == pytest.approx(results["selected"]["top1"])


@pytest.mark.slow  # reuses the real train_LCSL.py run above
def test_resume_restores_the_teacher(smoke_run, small_sample, tmp_path, monkeypatch):
    from methods.lcsl import LCSL
    from methods import rebuild
    from utils.runner import run_training

    run = str(tmp_path / "run")
    shutil.copytree(smoke_run[0], run)
    payload = load_checkpoint(os.path.join(run, "last.pth"))
    saved = {k[len("teacher."):]: v for k, v in payload["state_dict"].items() if k.startswith("teacher.")}
    assert payload["epoch"] == 2 and int(payload["state_dict"]["teacher_epoch"]) >= 1
    rebuilt = rebuild(payload).teacher.state_dict()  # what test.py loads, strictly
    assert all(torch.equal(rebuilt[k], v) for k, v in saved.items())

    seen = {}
    original = LCSL.on_epoch_start

    def spy(self, epoch):
        seen.update(epoch=epoch, teacher={k: v.clone() for k, v in self.teacher.state_dict().items()},
                    best=float(self.best_score), teacher_epoch=int(self.teacher_epoch))
        original(self, epoch)
        seen["labels"] = self._teacher_trained  # a restored, trained teacher labels from the first step

    monkeypatch.setattr(LCSL, "on_epoch_start", spy)
    args = parse(*smoke_args(small_sample, run, "--epochs", "3", "--limit_batches", "1", "--start_epoch", "3"))
    config, label = script.build_config(args)
    resume = resume_at_start_epoch(config, label, args.start_epoch)
    assert resume == os.path.join(run, "last.pth")
    run_training(dataclasses.replace(config, run=dataclasses.replace(config.run, resume=resume)), label)
    assert seen["epoch"] == 2 and seen["best"] == payload["state_dict"]["best_score"].item()
    assert seen["teacher_epoch"] == int(payload["state_dict"]["teacher_epoch"]) and seen["labels"]
    assert all(torch.equal(seen["teacher"][k], v) for k, v in saved.items())
    with pytest.raises(ConfigError, match="pass --start_epoch 4"):
        resume_at_start_epoch(config, label, start_epoch=3)
