"""Devices and parallelism in one place: CPU, one GPU, DataParallel (``--gpu 0,1,2,3``) or DDP.

DDP is detected from the environment that ``torchrun`` sets (RANK / WORLD_SIZE / LOCAL_RANK), so
the same entry scripts run everywhere. Only rank 0 writes files.
"""
from __future__ import annotations

import os
import platform
import random
import sys
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

import torch
import torch.distributed as dist
import torch.nn as nn

from utils.config import ConfigError


@dataclass(frozen=True)
class DeviceContext:
    """Where this process computes and which replicas it belongs to."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    data_parallel_ids: List[int] = field(default_factory=list)  # > 1 ids: DataParallel

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_parallel(self) -> bool:
        return len(self.data_parallel_ids) > 1


def describe_hardware(ctx: DeviceContext) -> str:
    """The hardware a run's timings belong to: GPU model(s) and count, or CPU model and threads."""
    if ctx.device.type == "cuda":
        count = len(ctx.data_parallel_ids) if ctx.data_parallel else ctx.world_size
        return f"{count} x {torch.cuda.get_device_name(ctx.device)}"
    model = None
    try:
        with open("/proc/cpuinfo") as stream:
            model = next((line.split(":", 1)[1].strip() for line in stream if line.startswith("model name")), None)
    except OSError:  # not Linux
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"  # ARM has no model name
    threads = torch.get_num_threads()
    processes = f", {ctx.world_size} processes" if ctx.distributed else ""
    return f"{model} ({threads} thread{'s' if threads != 1 else ''}{processes})"


def parse_gpu_ids(gpu: Optional[str]) -> Optional[List[int]]:
    """'0' -> [0]; '0,1,2,3' -> [0, 1, 2, 3]; None -> None (use the default device)."""
    if gpu is None or str(gpu).strip() in ("", "None", "none"):
        return None
    try:
        ids = [int(part) for part in str(gpu).split(",") if part.strip() != ""]
    except ValueError:
        raise ConfigError(f"--gpu takes GPU ids like 0 or 0,1,2,3; got '{gpu}'") from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"--gpu takes distinct non-negative GPU ids like 0,1,2,3; got '{gpu}'")
    return ids


def setup_devices(gpu: Optional[str], backend: Optional[str] = None) -> DeviceContext:
    """Initialises DDP under torchrun, otherwise picks CPU, one GPU, or several for DataParallel."""
    ids = parse_gpu_ids(gpu)
    has_cuda = torch.cuda.is_available()
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if ids is not None and rank == 0:
            print(f"warning: --gpu {gpu} is ignored under torchrun: each process takes the GPU of its "
                  "LOCAL_RANK (choose GPUs with CUDA_VISIBLE_DEVICES)", file=sys.stderr)
        if has_cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend or ("nccl" if has_cuda else "gloo"))
        return DeviceContext(device, rank, world, local_rank)
    if ids is not None and not has_cuda:
        print(f"warning: --gpu {gpu} was given but CUDA is not available: running on CPU", file=sys.stderr)
        return DeviceContext(torch.device("cpu"))
    if not has_cuda:
        return DeviceContext(torch.device("cpu"))
    ids = ids or [0]
    count = torch.cuda.device_count()
    if max(ids) >= count:
        raise ConfigError(f"--gpu {gpu} names a GPU that does not exist (this machine has {count})")
    torch.cuda.set_device(ids[0])
    return DeviceContext(torch.device("cuda", ids[0]), data_parallel_ids=ids)


def wrap_network(network: nn.Module, ctx: DeviceContext) -> nn.Module:
    """Returns what the training step calls: DDP, DataParallel, or the network itself."""
    if ctx.distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(network, device_ids=device_ids)
    if ctx.data_parallel:
        return nn.DataParallel(network, device_ids=ctx.data_parallel_ids)
    return network


def wrap_forward_only(network: nn.Module, ctx: DeviceContext) -> nn.Module:
    """DataParallel for a network without trained parameters (a teacher); DDP needs gradients,
    so under DDP each rank runs such a network on its own shard as it is."""
    if ctx.data_parallel:
        return nn.DataParallel(network, device_ids=ctx.data_parallel_ids)
    return network


def unwrap(module: nn.Module) -> nn.Module:
    """Strips DataParallel / DDP / torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


class _GatherWithGrad(torch.autograd.Function):
    """all_gather that lets gradients flow back to this rank's slice (contrastive losses)."""

    @staticmethod
    def forward(ctx, tensor):
        # NCHW-contiguous first, and the buffers made like it: NCCL copies raw bytes, so a
        # channels_last buffer receiving an NCHW tensor would scramble the pixels.
        tensor = tensor.contiguous()
        gathered = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor)
        return torch.cat(gathered, 0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        # Every rank computed the same global loss on its own copy; summing the gradient slices
        # over ranks and DDP's mean over ranks then give the single-process gradient.
        dist.all_reduce(grad)
        size = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * size:(dist.get_rank() + 1) * size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates a same-shaped tensor from all ranks (rank order); identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates same-shaped tensors from all ranks without gradient; identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    tensor = tensor.contiguous()  # buffers in the same (NCHW) layout as what is sent, see above
    gathered = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return torch.cat(gathered, 0)


@torch.no_grad()
def gather_variable(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates tensors whose first dimension differs between ranks (evaluation shards)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = gather_no_grad(size).tolist()
    padded = torch.zeros((max(sizes),) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    pieces = gather_no_grad(padded).split(max(sizes))
    return torch.cat([piece[:n] for piece, n in zip(pieces, sizes)], 0)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (for logged scalars); identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / dist.get_world_size()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (counts gathered during an epoch); identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks, so every rank takes the same decision; identity without DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Makes every rank's buffers (BatchNorm running statistics, which each rank updated with its
    own batches since DDP's last broadcast) equal to rank `src`'s, whose copy is checkpointed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(value, src: int = 0):
    """Sends a picklable object from rank `src` to every rank (e.g. the run folder name)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def seed_epoch(seed: int, rank: int, epoch: int) -> None:
    """Seeds this process's global generators (Python, NumPy, torch CPU and CUDA) from (seed,
    rank, epoch) alone, at the start of every epoch.

    Methods draw mixup coefficients, rotations and key shuffles from these generators, and so do
    the PIL transforms without DataLoader workers. A checkpoint holds only rank 0's states, so
    a stream that ran on from the start of training would continue differently on the other
    ranks after a resume; one derived from the epoch is the same whether or not the run was
    interrupted, and differs between ranks so each augments its own shard independently.
    """
    # SeedSequence mixes the three numbers into well-spread states; the last word keeps these
    # streams apart from other (seed, rank, epoch) derivations in the code.
    words = np.random.SeedSequence([seed % 2 ** 63, rank, epoch, 0x45504F43]).generate_state(2, np.uint64)
    random.seed(int(words[0]))
    np.random.seed(int(words[0] % 2 ** 32))
    torch.manual_seed(int(words[1] % 2 ** 63))  # also seeds every CUDA device


def first_over_ranks(found: Optional[Tuple[int, str]]) -> Optional[str]:
    """The message of the lowest-ordered failure any rank found, on every rank (None: none did).

    For checks split across ranks: every rank must take the same decision, or the ones that
    carry on would wait for the others in the next collective forever.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None if found is None else found[1]
    everyone: List[Optional[Tuple[int, str]]] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, found)
    failures = sorted(item for item in everyone if item is not None)
    return failures[0][1] if failures else None


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
