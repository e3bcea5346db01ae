"""torch.distributed helpers, the one module that calls ``torch.distributed``: initialise from torchrun's
environment, rank queries, reductions (the engine's logging, the detectors' loss normalisers, PFL's level
sums).

Launch a multi-GPU or multi-node run with ``torchrun --nproc_per_node=N -m umop.cli train CONFIG`` (or the
``umop`` script path): :func:`init_distributed` reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR``/``MASTER_PORT`` and uses NCCL on CUDA, Gloo otherwise.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size", "is_main_process",
           "all_reduce_sum", "mean_over_processes", "all_gather_objects", "barrier", "cleanup_distributed"]


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1); return this rank's device.

    ``device`` is ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Under torchrun on
    CUDA each process takes GPU ``LOCAL_RANK``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available; use device=cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not is_distributed():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, init_method="env://")
    if device.startswith("cuda"):
        if is_distributed() and ":" not in device:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device(device)
    return torch.device("cpu")


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (returns a new tensor; identity when not distributed)."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Mean of a (detached) tensor over the processes; identity (detached) in one process.

    Loss normalisers (positive counts, weight sums) go through this, as mmdetection's ``reduce_mean``: with
    the per-process losses divided by the *mean* count, DDP's gradient average equals the gradient of one
    process that holds the whole global batch.
    """
    value = value.detach()
    if is_distributed() and get_world_size() > 1:
        value = all_reduce_sum(value) / get_world_size()
    return value


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank (a one-element list when not distributed)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
