"""What ``torchrun`` tells each process it starts: the one reader of its environment, for
sharded prediction (:mod:`petseg.cohort`) and distributed training (:mod:`petseg.train`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from petseg.errors import ConfigError


@dataclass(frozen=True)
class Torchrun:
    """This process's place: ``rank`` of ``world`` processes, ``local_rank`` of
    ``local_world`` on this node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Torchrun | None:
        """The process's place when ``torchrun`` started it (RANK and WORLD_SIZE set), else None."""
        if "RANK" not in environ or "WORLD_SIZE" not in environ:
            return None
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        defaults = {"LOCAL_RANK": environ["RANK"], "LOCAL_WORLD_SIZE": environ["WORLD_SIZE"]}
        try:
            rank, world, local_rank, local_world = (int(environ.get(n, defaults.get(n, ""))) for n in names)
        except ValueError:
            shown = "/".join(repr(environ.get(n)) for n in names)
            raise ConfigError("/".join(names), f"not integers: {shown}") from None
        if not (0 <= rank < world and 0 <= local_rank < local_world):
            raise ConfigError("RANK/WORLD_SIZE", f"rank {rank} of {world} (local {local_rank} of {local_world})")
        return cls(rank, world, local_rank, local_world)


def local_world_size(environ: Mapping[str, str] = os.environ) -> int:
    """Processes on this node that share its CPUs and GPUs (1 without torchrun)."""
    place = Torchrun.from_environment(environ)
    return 1 if place is None else place.local_world
