"""petseg: PET/CT lesion segmentation (autoPET III residual UNet, 5-fold ensemble).

Import policy: this package and its command line import torch, MONAI and SimpleITK only
when they are used, so ``petseg --help`` and ``import petseg`` are fast; the public names
below resolve on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from petseg.api import segment
    from petseg.errors import InputError, ModelError, PetsegError
    from petseg.predictor import Predictor
    from petseg.settings import Settings

__version__ = "0.1.0"

_PUBLIC = {
    "segment": "petseg.api",
    "Predictor": "petseg.predictor",
    "Settings": "petseg.settings",
    "PetsegError": "petseg.errors",
    "InputError": "petseg.errors",
    "ModelError": "petseg.errors",
}

__all__ = ["InputError", "ModelError", "PetsegError", "Predictor", "Settings", "__version__", "segment"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'petseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
