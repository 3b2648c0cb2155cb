"""Data-parallel training under torchrun: DistributedDataParallel on torch.distributed.

`torchrun --nproc-per-node N -m ecg_rnn train ...` sets RANK / WORLD_SIZE / MASTER_ADDR; everything
here is a no-op in a plain single process, so the training loop reads the same either way.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), once."""
    if launched_by_torchrun() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Only rank 0 logs and writes files."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model when running under torchrun, else the model."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(order: torch.Tensor, epoch: int) -> torch.Tensor:
    """This rank's share of an epoch's (already shuffled) beat order; every rank gets as many beats,
    as DDP needs equal batch counts (DistributedSampler pads by repeating a few)."""
    if not active():
        return order
    sampler = DistributedSampler(range(len(order)), num_replicas=world_size(), rank=rank(), shuffle=False)
    sampler.set_epoch(epoch)
    return order[torch.as_tensor(list(sampler), dtype=torch.long, device=order.device)]


def sum_across(*values: float) -> list[float]:
    """Sum of each value over all ranks (for losses averaged over every rank's beats)."""
    if not active():
        return list(values)
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(values, dtype=torch.float64, device=on)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def teardown() -> None:
    if active():
        dist.barrier()
        dist.destroy_process_group()
