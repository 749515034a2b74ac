"""Every CUDA path, checked against the CPU where the two must agree; skipped without CUDA.

Marked ``cuda``: ``pytest -m cuda`` runs only these (``scripts/device_check.sh`` does, on a GPU
machine). Comparisons against the CPU run in strict float32 (TF32 off), and where a step draws
from the device's own generator (LCSL's mixup, MoCo's key shuffle) only the contract is checked:
shapes, devices, finite values and gradients.
"""
from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys

# cuBLAS reads this when its first handle is made; --deterministic runs below need it set before
# any CUDA work in this process (collection imports this module first).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import main as main_script  # noqa: E402
from conftest import FlatBackbone, QuietLogger  # noqa: E402
from datasets import DataOptions  # noqa: E402
from datasets.augment import build_transform  # noqa: E402
from datasets.augment.tensor import TENSOR_TRANSFORMS, build_tensor_transform  # noqa: E402
from datasets.base import ImageSource, LongTailData  # noqa: E402
from datasets.loaders import build_eval_loader, build_train_loader  # noqa: E402
from methods import METHODS, build_method  # noqa: E402
from models import Classifier, build_model  # noqa: E402
from utils import dist  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.config import OptimConfig, RunConfig, TrainConfig  # noqa: E402
from utils.engine import DeviceInputs, autocast_context, fit  # noqa: E402
from utils.kmeans import INITS, batched_kmeans  # noqa: E402
from utils.runner import run_training  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(GPUS == 0, reason="needs a CUDA device")]
needs_two_gpus = pytest.mark.skipif(GPUS < 2, reason="needs two CUDA devices")

COUNTS = [20, 8, 3]
BATCH_TARGETS = [0, 0, 0, 1, 1, 2, 0, 1]
OPTIONS = {"bccl": {"feat_dim": 8, "queue_size": 6, "num_centroids": 2, "warmup_epochs": 1, "kmeans_every": 1},
           "moco": {"dim": 8, "queue_size": 64, "bn_splits": 2}, "lcsl": {"arch": "resnet32"}}
# Steps whose only random draws come from the CPU generator (rotations) or that draw nothing:
# CPU and CUDA must give the same numbers.
SAME_DRAWS = ("erm", "crt", "bccl", "rotation")


@pytest.fixture
def strict_fp32():
    """TF32 off, so CUDA float32 matches the CPU to float rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def single_gpu() -> dist.DeviceContext:
    return dist.DeviceContext(torch.device("cuda", 0))


def build_on(name: str, device, ctx=None):
    """The method as the runner builds it: seeded, moved, wrapped for `ctx` (one device by default)."""
    torch.manual_seed(0)
    method = build_method(name, build_model("resnet32", len(COUNTS)), COUNTS, **OPTIONS.get(name, {}))
    method.to(device)
    ctx = ctx or dist.DeviceContext(torch.device(device))
    method.wrap(lambda net: dist.wrap_network(net, ctx), lambda net: dist.wrap_forward_only(net, ctx))
    return method


def batch(device, size: int = 8):
    generator = torch.Generator().manual_seed(1)
    views = tuple(torch.randn(size, 3, 32, 32, generator=generator).to(device) for _ in range(2))
    targets = torch.tensor((BATCH_TARGETS * size)[:size]).to(device)
    return views, targets


def train_step(method, views, targets, epoch: int):
    method.train()
    method.on_epoch_start(epoch)
    torch.manual_seed(2)  # rotations and any other CPU draws come out alike on both devices
    out = method.training_step(views if method.num_views > 1 else views[0], targets, epoch)
    out["loss"].backward()
    return out


def assert_grads_close(cuda_grads, cpu_grads):
    for got, want in zip(cuda_grads, cpu_grads):
        error = float((got.cpu() - want).norm())
        assert error <= 1e-3 * float(want.norm()) + 1e-6, (error, float(want.norm()))


# ---- every registered method: training step and prediction --------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
def test_method_step_and_predict_on_cuda(name, strict_fp32):
    results = {}
    for device in ("cpu", "cuda"):
        method = build_on(name, device)
        views, targets = batch(device)
        out = train_step(method, views, targets, 0)
        grads = [p.grad for p in method.optim_parameters()]
        assert grads and all(g is not None and g.device.type == device for g in grads)
        assert all(torch.isfinite(g).all() for g in grads)
        method.eval()
        logits = method.predict(views[0])
        assert logits.device.type == device
        results[device] = (out["loss"].detach().cpu(), logits.cpu(), [g.cpu() for g in grads])
    loss, logits, grads = results["cuda"]
    assert torch.isfinite(loss) and logits.shape == (8, len(COUNTS)) and torch.isfinite(logits).all()
    if name in SAME_DRAWS:
        cpu_loss, cpu_logits, cpu_grads = results["cpu"]
        torch.testing.assert_close(loss, cpu_loss, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits, cpu_logits, rtol=1e-3, atol=1e-4)
        assert_grads_close(grads, cpu_grads)


def test_bccl_refresh_step_on_cuda_matches_cpu(strict_fp32):
    # Epoch 0 fills the queues; epoch 1 (past the one-epoch warm-up) re-clusters them inside the
    # step on the device and adds the centroid loss.
    outputs = {}
    for device in ("cpu", "cuda"):
        method = build_on("bccl", device)
        views, targets = batch(device)
        train_step(method, views, targets, 0)
        out = train_step(method, views, targets, 1)
        assert "loss/centroid" in out["parts"] and method.centroids.device.type == device
        outputs[device] = (out["loss"].detach().cpu(), method.centroids.cpu(), int(method.kmeans_runs))
    (loss, centroids, runs), (cpu_loss, cpu_centroids, cpu_runs) = outputs["cuda"], outputs["cpu"]
    assert runs == cpu_runs == 1 and centroids.abs().sum() > 0
    torch.testing.assert_close(centroids, cpu_centroids, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(loss, cpu_loss, rtol=1e-4, atol=1e-5)


def test_lcsl_teacher_labels_on_cuda():
    method = build_on("lcsl", "cuda")
    views, targets = batch("cuda")
    train_step(method, views, targets, 0)
    # A first evaluation makes the student the teacher; from then on every image gets its
    # flip-averaged label on the device.
    method.on_epoch_end(0, {"val": {"mean_per_class": 10.0}})
    out = train_step(method, views, targets, 1)
    assert int(method.teacher_epoch) == 1 and method.teacher_labels.device.type == "cuda"
    assert int(method.teacher_labels.sum()) == len(BATCH_TARGETS)
    assert 0.0 <= float(out["parts"]["sl/mask_rate"]) <= 1.0 and torch.isfinite(out["loss"])


# ---- the engine in mixed precision, with the fused SGD step -------------------------------------
def tiny_run_args(data_root, out_dir, *extra):
    return ["--dataset", "cifar10", "--data_root", data_root, "--imb_factor", "0.1", "--method", "ce",
            "--epochs", "2", "-b", "16", "--workers", "0", "--progress", "False", "--download", "False",
            "--gpu", "0", "--out_dir", out_dir, *extra]


def tiny_config(data_root, out_dir, *extra):
    args = main_script.get_args_parser().parse_args(tiny_run_args(data_root, out_dir, *extra))
    return main_script.build_config(args)[0]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_engine_steps_in_mixed_precision(amp, cifar10_root, tmp_path):
    if amp == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("this GPU has no bf16 in hardware")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    method = build_on("erm", "cuda")
    method.on_epoch_start(0)
    views, targets = batch("cuda")
    with autocast_context(torch.device("cuda"), amp):
        assert method.training_step(views[0], targets, 0)["logits"].dtype == dtype

    run = str(tmp_path / "run")
    results = run_training(tiny_config(cifar10_root.root, run, "--epochs", "1", "--amp", amp,
                                       "--limit_batches", "4"), "ce")
    assert results["device"].startswith("cuda") and math.isfinite(results["last"]["nll"])
    assert 0.0 <= results["last"]["top1"] <= 100.0
    payload = load_checkpoint(os.path.join(run, "last.pth"))
    assert payload["optimizer"]["param_groups"][0]["fused"] is True
    # fp16 keeps the loss scale in the checkpoint; bf16 needs no scaler (its state is empty).
    assert bool(payload["scaler"]) == (amp == "fp16")
    if amp == "fp16":
        assert payload["scaler"]["scale"] > 0
    assert all(v.dtype != torch.float16 for v in payload["state_dict"].values())  # weights stay fp32


def test_kill_and_resume_on_the_same_gpu(cifar10_root, tmp_path):
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        straight = str(tmp_path / "straight")
        run_training(tiny_config(cifar10_root.root, straight, "--deterministic"), "ce")
        interrupted = str(tmp_path / "interrupted")
        run_training(tiny_config(cifar10_root.root, interrupted, "--deterministic", "--epochs", "1"), "ce")
        run_training(tiny_config(cifar10_root.root, interrupted, "--deterministic", "--resume", "auto"), "ce")
    finally:  # --deterministic switches process-wide settings: give the next tests the defaults
        torch.use_deterministic_algorithms(deterministic[0])
        torch.backends.cudnn.benchmark = deterministic[1]
    a = load_checkpoint(os.path.join(straight, "last.pth"))
    b = load_checkpoint(os.path.join(interrupted, "last.pth"))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["records"]["last"]["top1"] == b["records"]["last"]["top1"]


def run_entry(script: str, *args: str):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_bccl_and_lcsl_entry_scripts_on_cuda(cifar10_root, tmp_path):
    common = ["--dataset", "cifar10", "--data_root", cifar10_root.root, "--download", "False", "--imb_factor", "0.1",
              "--epochs", "2", "--limit_batches", "3", "--workers", "0", "--progress", "False", "--gpu", "0"]
    # BCCL past a one-epoch warm-up: epoch 2 re-clusters the queues on the device at every step.
    bccl = str(tmp_path / "bccl")
    result = run_entry("main.py", "--method", "bccl", "-b", "16", "--warmup_epochs", "1", "--kmeans_every", "1",
                       "--out_dir", bccl, *common)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.load(open(os.path.join(bccl, "results.json")))
    assert results["device"].startswith("cuda") and math.isfinite(results["last"]["nll"])
    assert "centroid=" in open(os.path.join(bccl, "log.txt")).read()
    # LCSL: the first evaluation makes the student the teacher, which labels epoch 2's batches.
    lcsl = str(tmp_path / "lcsl")
    result = run_entry("train_LCSL.py", "--batch_size", "16", "--select_on", "test", "--out_dir", lcsl, *common)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.load(open(os.path.join(lcsl, "results.json")))
    assert results["method/teacher_epoch"] >= 1 and math.isfinite(results["last"]["nll"])


# ---- on-device augmentation and k-means against the CPU ----------------------------------------
RECIPES = [(recipe, style, {}) for recipe in TENSOR_TRANSFORMS.names() for style in ("cifar", "imagenet")
           if (recipe, style) != ("autoaug", "imagenet")]
RECIPES += [("cutout", "cifar", {"cutout_size": 8}), ("randaug", "cifar", {"randaug_n": 3, "randaug_m": 9}),
            ("randaug", "imagenet", {"randaug_n": 1, "randaug_m": 5}),
            ("standard", "imagenet", {"color_jitter": False})]
# Pure indexing (crop, pad, flip, cut-out): bit-exact on any device.
EXACT = {("test", "cifar"), ("standard", "cifar"), ("cutout", "cifar")}


def smooth_images(n: int, height: int, width: int) -> torch.Tensor:
    """uint8 images with smooth regions and edges, closer to photographs than white noise."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(n, 3, max(2, height // 6), max(2, width // 6), generator=generator) * 255
    images = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return images.round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize("recipe,style,options", RECIPES,
                         ids=[f"{r}-{s}" + "".join(f"-{k}{v}" for k, v in o.items()) for r, s, o in RECIPES])
def test_tensor_recipe_on_cuda_matches_cpu(recipe, style, options):
    size = 32 if style == "cifar" else 48
    images = smooth_images(24, 32, 32) if style == "cifar" else smooth_images(24, 60, 80)
    transform = build_tensor_transform(recipe, style, size, **options)
    on_cpu = transform(images, torch.Generator().manual_seed(5))
    on_gpu = transform(images.cuda(), torch.Generator().manual_seed(5))
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8 and on_gpu.shape == on_cpu.shape
    difference = (on_gpu.cpu().int() - on_cpu.int()).abs()
    if (recipe, style) in EXACT:
        assert int(difference.max()) == 0
    else:
        # Float rounding may move a pixel by one grey level (or, where it lands on a threshold
        # such as Solarize's, further); a different draw would move most pixels a lot.
        assert float(difference.float().mean()) < 0.5, float(difference.float().mean())
        assert float((difference > 1).float().mean()) < 0.02


def test_device_loader_on_cuda_yields_the_cpu_batches():
    from datasets.augment.tensor import build_tensor_views
    from datasets.device_loader import DeviceLoader

    rng = np.random.default_rng(0)
    source = ImageSource(rng.integers(0, 10, 70), array=rng.integers(0, 256, (70, 32, 32, 3), dtype=np.uint8))
    batches = {}
    for device in ("cpu", "cuda"):
        # Crop, flip and cut-out are pure indexing, so the same draws give the same pixels.
        loader = DeviceLoader(source, build_tensor_views(["cutout", "standard"], "cifar", 32), 16, device=device,
                              seed=3)
        loader.set_epoch(2)
        batches[device] = [(tuple(v.cpu() for v in views), targets.cpu(), indices)
                           for views, targets, indices in loader]
    assert len(batches["cuda"]) == len(batches["cpu"]) == 5
    for (views, targets, indices), (cpu_views, cpu_targets, cpu_indices) in zip(batches["cuda"], batches["cpu"]):
        assert torch.equal(indices, cpu_indices) and torch.equal(targets, cpu_targets)
        assert all(torch.equal(a, b) for a, b in zip(views, cpu_views))


def clustered_points(classes: int = 6, points: int = 40, dim: int = 8, clusters: int = 4):
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, clusters, dim, generator=generator) * 5
    member = torch.randint(0, clusters, (classes, points), generator=generator)
    x = centres.gather(1, member.unsqueeze(-1).expand(-1, -1, dim))
    x = x + 0.3 * torch.randn(classes, points, dim, generator=generator)
    valid = torch.ones(classes, points, dtype=torch.bool)
    valid[1, 25:] = False  # a partly filled queue
    valid[2, 3:] = False  # fewer points than clusters
    valid[3] = False  # an empty queue
    return x, valid


@pytest.mark.parametrize("init", INITS)
def test_kmeans_on_cuda_matches_cpu(init):
    x, valid = clustered_points()
    cpu = batched_kmeans(x, valid, 4, generator=torch.Generator().manual_seed(7), init=init)
    gpu = batched_kmeans(x.cuda(), valid.cuda(), 4, generator=torch.Generator().manual_seed(7), init=init)
    every_step = batched_kmeans(x.cuda(), valid.cuda(), 4, generator=torch.Generator().manual_seed(7), init=init,
                                check_every=1)
    assert gpu.centroids.device.type == "cuda"
    torch.testing.assert_close(gpu.centroids.cpu(), cpu.centroids, rtol=1e-4, atol=1e-4)
    assert torch.equal(gpu.assignments.cpu(), cpu.assignments)
    assert torch.equal(gpu.num_points.cpu(), cpu.num_points) and int(gpu.num_points[3]) == 0
    torch.testing.assert_close(every_step.centroids, gpu.centroids)  # host reads change no number


def test_bccl_queues_and_centroids_on_cuda_match_cpu():
    torch.manual_seed(0)
    cpu = build_method("bccl", build_model("resnet32", len(COUNTS)), COUNTS, feat_dim=8, queue_size=6,
                       num_centroids=2)
    gpu = copy.deepcopy(cpu).cuda()
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):  # several pushes, so the rings wrap around
        features = F.normalize(torch.randn(10, 8, generator=generator), dim=1)
        labels = torch.randint(0, len(COUNTS), (10,), generator=generator)
        cpu.queues.push(features, labels)
        gpu.queues.push(features.cuda(), labels.cuda())
    for name in ("features", "ptr", "count"):
        assert torch.equal(getattr(gpu.queues, name).cpu(), getattr(cpu.queues, name)), name
    cpu.refresh_centroids()
    gpu.refresh_centroids()
    torch.testing.assert_close(gpu.centroids.cpu(), cpu.centroids, rtol=1e-4, atol=1e-5)


# ---- several GPUs: DataParallel and DDP over NCCL ------------------------------------------------
@needs_two_gpus
@pytest.mark.parametrize("name", METHODS.names())
def test_method_through_data_parallel_on_all_gpus(name, strict_fp32):
    ids = list(range(GPUS))
    parallel = build_on(name, "cuda:0", dist.DeviceContext(torch.device("cuda", 0), data_parallel_ids=ids))
    single = build_on(name, "cuda:0", single_gpu())
    views, targets = batch("cuda:0", size=4 * GPUS)  # >= 2 images per replica for BatchNorm
    # Evaluation uses running statistics, so splitting the batch over GPUs changes no number.
    parallel.eval()
    single.eval()
    torch.testing.assert_close(parallel.predict(views[0]), single.predict(views[0]), rtol=1e-3, atol=1e-4)
    out = train_step(parallel, views, targets, 0)
    if name == "lcsl":  # the teacher's flip-averaged forward through its own DataParallel wrapper
        parallel.on_epoch_end(0, {"val": {"mean_per_class": 10.0}})
        out = train_step(parallel, views, targets, 1)
    assert torch.isfinite(out["loss"]) and out["loss"].device == torch.device("cuda", 0)
    grads = [p.grad for p in parallel.optim_parameters()]
    assert all(g is not None and g.device == torch.device("cuda", 0) and torch.isfinite(g).all() for g in grads)
    parallel.eval()
    logits = parallel.predict(views[0])
    assert logits.shape == (4 * GPUS, len(COUNTS)) and logits.device == torch.device("cuda", 0)
    assert not any("module." in key for key in parallel.state_dict())


@needs_two_gpus
def test_main_and_test_script_with_data_parallel(cifar10_root, tmp_path):
    gpus = ",".join(str(i) for i in range(GPUS))
    run = str(tmp_path / "run")
    args = tiny_run_args(cifar10_root.root, run, "--epochs", "1", "--limit_batches", "3")
    args[args.index("--gpu") + 1] = gpus
    result = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.load(open(os.path.join(run, "results.json")))
    assert results["hardware"].startswith(f"{GPUS} x ")
    out_json = str(tmp_path / "eval.json")
    result = subprocess.run([sys.executable, "test.py", "--path", run, "--gpu", gpus, "--json", out_json,
                             "--data_root", cifar10_root.root], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert abs(json.load(open(out_json))["top1"] - results["last"]["top1"]) <= 100.0 / 40 + 1e-9


def _train_flat(ctx: dist.DeviceContext, out: str) -> None:
    """Two epochs of a linear model on 48 random images, the global batch split over the ranks."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = ImageSource(rng.integers(0, 4, 48), array=rng.integers(0, 256, (48, 8, 8, 3), dtype=np.uint8))
    test = ImageSource(rng.integers(0, 4, 20), array=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
    counts = np.bincount(train.targets, minlength=4).tolist()
    data = LongTailData("tiny", 4, train, test, counts, (0.5,) * 3, (0.25,) * 3, 8)
    method = build_method("erm", Classifier(FlatBackbone(), nn.Linear(8, 4)), counts).to(ctx.device)
    method.wrap(lambda net: dist.wrap_network(net, ctx), lambda net: dist.wrap_forward_only(net, ctx))
    config = TrainConfig(script="test", dataset="tiny", data=DataOptions(), arch="flat", head="linear",
                         head_scale=None, method="erm", method_options={}, batch_size=8, train_aug=("test",),
                         aug_options={}, sampler=None, sampler_options={}, select_on="test",
                         optim=OptimConfig(lr=0.5, epochs=2, warmup_epochs=0, milestones=()),
                         run=RunConfig(progress=False, workers=0, amp="none"))
    per_rank = config.batch_size // ctx.world_size
    loaders = {"train": build_train_loader(train, build_transform("test", "cifar", 8), per_rank, seed=0,
                                           rank=ctx.rank, world_size=ctx.world_size),
               "test": build_eval_loader(test, None, 6, rank=ctx.rank, world_size=ctx.world_size)}
    records = fit(config, method, data, ctx, loaders, DeviceInputs(data.mean, data.std, ctx.device), QuietLogger(),
                  lambda *args: None)
    if ctx.is_main:
        state = {key: value.cpu() for key, value in method.model.state_dict().items()}
        torch.save({"state": state, "top1": records["last"]["top1"], "nll": records["last"]["nll"]}, out)


def _nccl_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = dist.setup_devices(None, backend="nccl")
    try:
        assert ctx.device == torch.device("cuda", rank)
        _train_flat(ctx, out)
    finally:
        dist.cleanup()


@needs_two_gpus
def test_ddp_nccl_two_processes_match_one_gpu(tmp_path, strict_fp32):
    single = str(tmp_path / "single.pt")
    _train_flat(single_gpu(), single)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ddp = str(tmp_path / "ddp.pt")
    torch.multiprocessing.spawn(_nccl_worker, args=(2, port, ddp), nprocs=2, join=True)
    a, b = torch.load(single), torch.load(ddp)
    for key in a["state"]:
        torch.testing.assert_close(a["state"][key], b["state"][key], rtol=1e-4, atol=1e-5)
    assert a["top1"] == b["top1"] and a["nll"] == pytest.approx(b["nll"], rel=1e-5)


# ---- test.py on a run trained on the GPU ---------------------------------------------------------
def test_test_script_on_a_cuda_run(cifar10_root, tmp_path):
    run = str(tmp_path / "run")
    result = subprocess.run([sys.executable, "main.py", *tiny_run_args(cifar10_root.root, run, "--epochs", "1")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.load(open(os.path.join(run, "results.json")))
    assert results["device"].startswith("cuda") and results["hardware"].startswith("1 x ")
    out_json = str(tmp_path / "eval.json")
    result = subprocess.run([sys.executable, "test.py", "--path", run, "--gpu", "0", "--json", out_json,
                             "--data_root", cifar10_root.root, "--tta_flip"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.load(open(out_json))
    assert summary["num_samples"] == 40 and summary["epoch"] == 1 and 0.0 <= summary["top1"] <= 100.0
    # Without --tta_flip, test.py must reproduce the run's own last-epoch number (up to one image:
    # another process may pick other cuDNN kernels).
    result = subprocess.run([sys.executable, "test.py", "--path", run, "--gpu", "0", "--json", out_json,
                             "--data_root", cifar10_root.root], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert abs(json.load(open(out_json))["top1"] - results["last"]["top1"]) <= 100.0 / 40 + 1e-9
