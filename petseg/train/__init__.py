"""Training one fold of the residual UNet on the autoPET layout.

- ``config``: :class:`TrainConfig`, the paper's defaults;
- ``data``: splits by patient, the preprocessed-case cache, patch-sampling maps;
- ``transforms``: random patches and augmentations;
- ``distributed``: torchrun's process group;
- ``claims``: the run folder's recipe, split and fold claims, and the fold lock;
- ``run``: resume and assemble checks, the training state, the log;
- ``trainer``: the trainer, the loader, one epoch, validation;
- ``loop``: :func:`train_fold` (claim, check, set up or resume, epochs, checkpoints);
- ``plots``: loss and validation curves.

Assembling the folds into a model folder is :func:`petseg.model_write.assemble`.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "TrainConfig": "petseg.train.config",
    "load_cached": "petseg.train.data",
    "make_splits": "petseg.train.data",
    "patient_of": "petseg.train.data",
    "with_sampling_map": "petseg.train.data",
    "train_fold": "petseg.train.loop",
    "validate": "petseg.train.trainer",
    "train_transforms": "petseg.train.transforms",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:  # lazy, like the top-level package: the CLI imports this package
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'petseg.train' has no attribute {name!r}")
