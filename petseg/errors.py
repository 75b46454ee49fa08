"""Exceptions that carry a one-line, user-facing message naming the file or value at fault.

Only the front end (``petseg.frontend.run_guarded``) turns them into a line on stderr and a
non-zero exit code; library code raises them and never names command-line flags.
"""

from __future__ import annotations

import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _one_line(text: str) -> str:
    """Control characters (a key named "\\n" in a document, a tab in a file name) escaped."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class PetsegError(Exception):
    """Base class: its message is shown to the user as one line, without a traceback."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = _one_line(str(source))
        self.problem = _one_line(problem)
        super().__init__(f"{self.source}: {self.problem}")

    def __reduce__(self):  # pickles across processes (background workers) with both fields
        return type(self), (self.source, self.problem)


class InputError(PetsegError):
    """An input image (or input folder) is missing, unreadable, implausible or unusable."""


class ModelError(PetsegError):
    """The model folder or a checkpoint cannot be used."""


class OutputError(PetsegError):
    """An output cannot be written (permissions, full disk, a clash with an existing path)."""


class ConfigError(PetsegError, ValueError):
    """A setting or option has a value that cannot work; ``source`` names the setting."""


OUT_OF_MEMORY = ("failed to allocate", "out of memory", "can't allocate memory", "bad_alloc", "cannot allocate")


def is_out_of_memory(err: BaseException) -> bool:
    """A MemoryError, or the RuntimeError by which ITK and PyTorch report a failed allocation."""
    return isinstance(err, MemoryError) or (
        isinstance(err, RuntimeError) and any(s in str(err).lower() for s in OUT_OF_MEMORY)
    )
