"""Data-parallel runs under ``torchrun``: process group from the environment, DDP wrapping.

``torchrun --nproc_per_node N train.py ...`` sets WORLD_SIZE, RANK and LOCAL_RANK; a plain
``python train.py`` leaves WORLD_SIZE unset and nothing here does anything. Rank 0 alone writes
logs, summaries and checkpoints; every rank reads the checkpoint when resuming.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """How many processes train this run (torchrun's WORLD_SIZE; 1 without torchrun), known
    before the process group is up. It shapes the trajectory (each rank draws ``batch_size``
    examples: the global batch is ``batch_size x world_size x grad_accumulation``), so it is part
    of the run's settings (:func:`tensam.train.run`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (0 without torchrun): rank 0 alone writes logs and checkpoints."""
    return dist.get_rank() if dist.is_initialized() else 0


def init_from_env() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = world_size()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank(), world


def local_device(device: torch.device) -> torch.device:
    """This process's CUDA device under torchrun (``cuda:LOCAL_RANK``), else ``device``."""
    if device.type == "cuda" and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(model: nn.Module) -> nn.Module:
    """DistributedDataParallel when a process group is up, else the model itself."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
