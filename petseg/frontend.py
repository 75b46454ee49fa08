"""What the ``petseg`` CLI and the Grand Challenge ``process.py`` share: logging, the speed
options, and the error edge (a :class:`PetsegError` becomes one line on stderr and exit code 1)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


def setup_logging(*, verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")


def add_speed_options(p: argparse.ArgumentParser, *, time_budget_default: float | None = None) -> None:
    """Options shared by ``petseg predict`` and ``process.py``."""
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="network precision (default auto: bf16 where supported; fp32 is the reference)",
    )
    p.add_argument("--tta", action="store_true", help="average the 8 mirrorings of each window")
    default = "from model.json" if time_budget_default is None else f"{time_budget_default:g}"
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        default=time_budget_default,
        help=f"drop mirrorings, then folds, if the ensemble would overrun (default {default})",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")


def speed_overrides(args: argparse.Namespace) -> dict:
    """``Settings`` overrides from the options of :func:`add_speed_options` (None = model.json's)."""
    return {
        "precision": args.precision,
        "tta": args.tta or None,
        "time_budget_s": args.time_budget,
        "compile": args.compile or None,
    }


def run_guarded(prog: str, command: Callable[[], int]) -> int:
    """Run ``command``; a user-facing error ends as ``<prog>: error: <message>`` and exit code 1."""
    from petseg.errors import PetsegError

    try:
        return command()
    except PetsegError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
