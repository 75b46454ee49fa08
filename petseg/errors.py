"""Exceptions that carry a one-line, user-facing message."""

from __future__ import annotations

from pathlib import Path


class PetsegError(Exception):
    """Base class: its message is shown to the user as one line, without a traceback."""


class InputError(PetsegError):
    """An input image (or input folder) is missing, unreadable or unusable."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class ModelError(PetsegError):
    """The model folder or a checkpoint cannot be used."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
