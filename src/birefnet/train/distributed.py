"""torchrun / DistributedDataParallel plumbing: process group, device, small collectives.

Under ``torchrun`` the environment holds ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; the
process group uses NCCL on GPUs and gloo on CPU. Without those variables everything here is a
no-op for a single process, so the training loop has one code path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "all_gather_objects", "all_reduce_mean", "barrier", "cleanup", "init_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: world size, rank, local rank and its device."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={requested!r} but CUDA is not available; use device=cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Start the process group when launched by torchrun; pick this process's device.

    Args:
        device: "auto", "cpu", "cuda" (= cuda:LOCAL_RANK) or an explicit "cuda:N".
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if backend == "nccl":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
        logger.info("rank %d/%d on %s (%s)", rank, world_size, dev, backend)
    return DistInfo(world_size=world_size, rank=rank, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Destroy the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of a 1-D float tensor over ranks (a copy; no-op without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()
