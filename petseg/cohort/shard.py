"""Which cases this process takes: a part of the name-sorted list (a cluster job array, or
one part per process under ``torchrun``), and the GPU of its local rank."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from petseg.errors import ConfigError
from petseg.torchrun import Torchrun


@dataclass(frozen=True)
class Shard:
    """Part ``part_id`` of ``num_parts``: every ``num_parts``-th case of the name-sorted list."""

    num_parts: int = 1
    part_id: int = 0

    def __post_init__(self) -> None:
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise ConfigError(
                "part-id", f"must be in 0..{self.num_parts - 1} for {self.num_parts} parts, got {self.part_id}"
            )

    def select(self, items: Iterable[Any], *, key: Callable[[Any], str]) -> list[Any]:
        """Disjoint over the parts, together every item, independent of the listing order."""
        return sorted(items, key=key)[self.part_id :: self.num_parts]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Shard | None:
        """The shard of a process started by ``torchrun`` (RANK of WORLD_SIZE), else None."""
        place = Torchrun.from_environment(environ)
        return None if place is None else cls(place.world, place.rank)


def rank_device(device: str, environ: Mapping[str, str] = os.environ) -> str:
    """Under torchrun each process takes the GPU of its LOCAL_RANK when the device is "auto"
    or "cuda" (an explicit "cuda:N" or "cpu" is kept)."""
    place = Torchrun.from_environment(environ)
    if place is None or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{place.local_rank % torch.cuda.device_count()}"
