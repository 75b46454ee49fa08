"""Where the stages around the network run (``Settings.resample_backend``): SimpleITK on the
CPU (:mod:`petseg.preprocess`, the reference) or torch on the predictor's device
(:mod:`petseg.preprocess_torch`), the same :class:`~petseg.preprocess.Record` either way;
out of device memory, a study falls back to SimpleITK with a WARNING. torch is imported
only for the torch backend (background workers of the SimpleITK backend never need it)."""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from petseg.preprocess import Preprocessed, Record, preprocess, restore
from petseg.settings import Settings, resolve_backend

log = logging.getLogger(__name__)


def preprocess_study(
    ct: sitk.Image | None,
    pet: sitk.Image,
    *,
    settings: Settings,
    device=None,
    ct_source: str = "CT",
    pet_source: str = "PET",
    validate: bool = True,
) -> Preprocessed:
    """:func:`petseg.preprocess.preprocess` (SimpleITK, the image a host array) or, with the
    torch backend, :func:`petseg.preprocess_torch.preprocess_torch` on ``device`` (the image
    a tensor there)."""
    if resolve_backend(settings.resample_backend, device) == "sitk":
        return preprocess(ct, pet, settings=settings, ct_source=ct_source, pet_source=pet_source, validate=validate)
    import torch

    from petseg.preprocess_torch import preprocess_torch

    try:
        return preprocess_torch(
            ct,
            pet,
            settings=settings,
            device=device or "cpu",
            ct_source=ct_source,
            pet_source=pet_source,
            validate=validate,
        )
    except torch.OutOfMemoryError:
        pass  # out of the except block: its traceback no longer holds the device's tensors
    _release(device)
    log.warning("out of memory preprocessing %s on %s: preprocessing with SimpleITK on the CPU", pet_source, device)
    return preprocess(ct, pet, settings=settings, ct_source=ct_source, pet_source=pet_source, validate=False)


def _release(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def restorer(settings: Settings, device=None):
    """``restore(values (X, Y, Z), record) -> float32 image on the PET's grid`` with the
    settings' backend on ``device`` (None: the CPU)."""
    if resolve_backend(settings.resample_backend, device) == "sitk":
        return restore
    import torch

    from petseg.preprocess_torch import restore_torch

    def on_the_device(values: np.ndarray, record: Record) -> sitk.Image:
        try:
            return restore_torch(values, record, device=device or "cpu")
        except torch.OutOfMemoryError:
            pass  # out of the except block: its traceback no longer holds the device's tensors
        _release(device)
        log.warning("out of memory restoring on %s: restoring with SimpleITK on the CPU", device)
        return restore(values, record)

    return on_the_device
