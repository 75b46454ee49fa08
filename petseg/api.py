"""``petseg.segment``: the importable one-call entry point."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk
import torch

from petseg.clicks import Clicks
from petseg.io import read_image
from petseg.predictor import Predictor
from petseg.settings import Settings


def segment(
    ct: sitk.Image | str | Path | None,
    pet: sitk.Image | str | Path,
    *,
    model_dir: str | Path | None = None,
    networks: Sequence[torch.nn.Module] | None = None,
    device: str = "auto",
    settings: Settings | None = None,
    clicks: Clicks | str | Path | None = None,
) -> sitk.Image:
    """Segment lesions in one PET/CT study; returns a uint8 {0, 1} mask on the PET's grid.

    Args:
        ct: CT in HU (image or file), any grid overlapping the PET; None for a PET-only model.
        pet: PET in SUV (image or file).
        model_dir: model folder (default: $PETSEG_MODEL_DIR or the checkout's ``weights/``).
        networks: modules mapping (B, 2, X, Y, Z) to (B, 2, X, Y, Z) logits; given, they
            replace the model folder (``settings`` then default to the paper's).
        device: "auto" (CUDA if available, else CPU), "cpu" or "cuda[:N]"; left at "auto",
            ``settings.device`` applies.
        settings: preprocessing/inference settings (default: the model folder's).
        clicks: tumour/background clicks for a click-aware model: a :class:`petseg.clicks.Clicks`
            (points in mm) or a clicks JSON file (autoPET IV format, voxel indices of the PET).
            A CT/PET model ignores them with a log line.
    """
    ct_source = str(ct) if not isinstance(ct, sitk.Image) else "CT"
    pet_source = str(pet) if not isinstance(pet, sitk.Image) else "PET"
    if ct is not None and not isinstance(ct, sitk.Image):
        ct = read_image(ct, role="CT")
    if not isinstance(pet, sitk.Image):
        pet = read_image(pet, role="PET")
    if settings is not None and device == "auto":
        device = settings.device  # an explicit Settings.device wins over the default
    if networks is not None:
        predictor = Predictor(networks, settings=(settings or Settings()).with_overrides(device=device))
    else:
        predictor = Predictor.from_model_dir(model_dir, settings=settings, device=device)
    return predictor.predict_images(ct, pet, ct_source=ct_source, pet_source=pet_source, clicks=clicks).mask
