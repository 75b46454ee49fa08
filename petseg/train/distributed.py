"""torchrun's process group: one rank per GPU (or CPU process); only rank 0 writes."""

from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Any

import torch

from petseg.inference import resolve_device
from petseg.torchrun import Torchrun


@dataclass(frozen=True)
class Dist:
    """The process group (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL on CUDA, else gloo)."""
    place = Torchrun.from_environment()
    if place is None or place.world == 1:
        return Dist(), resolve_device(device_name)
    world, local_rank = place.world, place.local_rank
    cuda = torch.cuda.is_available() and device_name != "cpu"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
        # torn down before the interpreter is: gloo's threads alive at exit abort the process
        # ("terminate called without an active exception", exit -6) on a loaded machine
        atexit.register(_destroy)
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    return Dist(torch.distributed.get_rank(), world, local_rank), device


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
