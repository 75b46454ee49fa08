"""From a CT/PET pair to the network's input, and back from its output to the PET grid.

Forward (``preprocess``), in this order, each step recorded in a :class:`Record`:

1. CT resampled onto the PET grid (linear, ``ct_fill_hu`` outside the CT), skipped
   when the CT is already on that grid.
2. CT clipped to ``ct_window`` and scaled to [0, 1]; PET kept as SUV.
3. Crop to the body: the bounding box of CT voxels above ``body_threshold_hu`` (on the
   PET grid), widened by ``body_margin_mm`` per side. No voxel above threshold: no crop.
4. Reorientation to RAS (a permutation/flip of axes, exact).
5. Resampling to ``target_spacing`` (linear for images, nearest for labels), skipped
   when the spacing already matches; the new grid keeps the field of view's centre.

The network array is (C, X, Y, Z) in RAS, channel 0 = CT, 1 = PET (a PET-only model: the
PET alone, steps 1-3 skipped, the whole field of view): what MONAI's
``LoadImage`` (nibabel) + ``Orientation("RAS")`` give for the same image. ``restore``
undoes steps 5, 4 and 3 in reverse order and returns an image on the PET's native grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from petseg.checks import (
    check_ct_range,
    check_field_of_view,
    check_image,
    check_network_size,
    check_overlap,
    check_pet_range,
    check_swapped,
    check_values,
)
from petseg.errors import ConfigError, InputError
from petseg.geometry import Grid, array_to_image, image_to_array, same_grid
from petseg.io import read_image, read_images
from petseg.settings import Settings

if TYPE_CHECKING:
    from petseg.clicks import Clicks

log = logging.getLogger(__name__)

RAS = "RAS"  # DICOMOrient's code: axis 0 increases towards Right, 1 Anterior, 2 Superior


@dataclass(frozen=True)
class Record:
    """What ``preprocess`` did, enough for ``restore`` to undo it exactly."""

    native: Grid  # the PET grid as read
    ct_resampled: bool  # step 1 was needed
    crop_index: tuple[int, int, int]  # first voxel (x, y, z) of the body crop on the native grid
    cropped: Grid  # step 3
    oriented: Grid  # step 4 (RAS)
    network: Grid  # step 5: the grid of the network array
    resampled: bool  # step 5 was needed
    clicks: Clicks | None = None  # a click-aware model's clicks (mm), for restore's click removal


@dataclass(frozen=True)
class Preprocessed:
    """Network input (C, X, Y, Z) float32, optional label (X, Y, Z) uint8, and the record."""

    image: np.ndarray
    record: Record
    label: np.ndarray | None = None


def host_array(image) -> np.ndarray:
    """A network input as a host array (the torch backend's is a tensor on its device)."""
    return image if isinstance(image, np.ndarray) else image.detach().cpu().numpy()


# --- forward ------------------------------------------------------------------------------


def read_inputs(ct: str | Path | None, pet: str | Path, *, settings: Settings) -> tuple[sitk.Image | None, sitk.Image]:
    """The images a model takes from a study's files: a PET-only model reads no CT, also when
    one is given (:func:`preprocess` ignores it anyway)."""
    if ct is not None and not settings.uses_ct:
        log.debug("a PET-only model: %s not read", ct)
    if ct is None or not settings.uses_ct:
        return None, read_image(pet, role="PET")
    ct_image, pet_image = read_images([(ct, "CT"), (pet, "PET")])  # decompressed at once
    return ct_image, pet_image


def validate_pair(
    ct: sitk.Image | None, pet: sitk.Image, *, settings: Settings, ct_source: str = "CT", pet_source: str = "PET"
) -> None:
    """Every check of a study before any large allocation, in one place for the API, the CLI,
    cohorts, training and the container: each image's grid and field of view, then values
    (finite, swapped, ranges), then the pair's overlap and the network grid (a PET-only
    model's study: the PET's checks alone). Errors and warnings name the file and value."""
    images = ((pet, "PET", pet_source),) if ct is None else ((ct, "CT", ct_source), (pet, "PET", pet_source))
    for image, role, source in images:
        check_image(image, source=source)
        check_field_of_view(image, role=role, source=source, extent=role == "PET")
    pet_values = sitk.GetArrayViewFromImage(pet)
    check_values(pet_values, source=pet_source, role="PET")
    if ct is not None:
        ct_values = sitk.GetArrayViewFromImage(ct)
        check_values(ct_values, source=ct_source, role="CT")
        check_swapped(ct_values, pet_values, ct_source=ct_source, pet_source=pet_source)
    check_pet_range(pet_values, source=pet_source)
    if ct is not None:
        check_ct_range(ct_values, source=ct_source)
        check_overlap(ct, pet, ct_source=ct_source, pet_source=pet_source)
    check_network_size(pet, settings.target_spacing, source=pet_source)


def model_inputs(ct: sitk.Image | None, *, settings: Settings, pet_source: str = "PET") -> sitk.Image | None:
    """The CT the model takes: None for a PET-only model; a CT/PET model refuses a missing one."""
    if not settings.uses_ct:
        return None
    if ct is None:
        raise ConfigError(
            pet_source, "this model takes CT and PET and no CT was given (a PET-only model takes PET alone)"
        )
    return ct


def ct_on_pet_grid(ct: sitk.Image, pet: sitk.Image, *, settings: Settings) -> tuple[sitk.Image, bool]:
    """CT in HU on the PET grid; the flag says whether resampling was needed."""
    ct = sitk.Cast(ct, sitk.sitkFloat32)
    if same_grid(ct, pet):
        return Grid.of(pet).stamp(ct), False
    return Grid.of(pet).resample(ct, interpolator=sitk.sitkLinear, default=settings.ct_fill_hu), True


def scale_ct(hu: np.ndarray, *, settings: Settings) -> np.ndarray:
    """Clip to the CT window and map it linearly onto [0, 1] (MONAI ScaleIntensityRange, clip=True)."""
    lo, hi = settings.ct_window
    return np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def body_box(hu_zyx: np.ndarray, spacing: tuple[float, float, float], *, settings: Settings) -> tuple[tuple, tuple]:
    """Body bounding box on the PET grid as (index, size) in (x, y, z) order.

    Body = CT voxels above ``body_threshold_hu``; the box is widened by ``body_margin_mm``.
    With no body voxel at all the whole grid is kept.
    """
    body = hu_zyx > settings.body_threshold_hu
    profiles = [body.any(axis=tuple(a for a in range(3) if a != axis_zyx)) for axis_zyx in (2, 1, 0)]
    return box_of_profiles(profiles, spacing, settings=settings)


def box_of_profiles(profiles, spacing: tuple[float, float, float], *, settings: Settings) -> tuple[tuple, tuple]:
    """The body box from the body's three 1D profiles (x, y, z: does any body voxel lie on
    this index?), shared by the SimpleITK and the device path."""
    shape_xyz = tuple(len(p) for p in profiles)
    if not any(p.any() for p in profiles):
        log.warning("no CT voxel above %.0f HU: no body crop", settings.body_threshold_hu)
        return (0, 0, 0), shape_xyz
    start, stop = [], []
    for profile, n, sp in zip(profiles, shape_xyz, spacing):
        hits = np.flatnonzero(profile)
        margin = int(np.ceil(settings.body_margin_mm / sp))
        start.append(max(0, int(hits[0]) - margin))
        stop.append(min(n, int(hits[-1]) + 1 + margin))
    return tuple(start), tuple(b - a for a, b in zip(start, stop))


def _crop(image: sitk.Image, index: tuple, size: tuple) -> sitk.Image:
    if tuple(size) == tuple(image.GetSize()):
        return image
    return sitk.RegionOfInterest(image, [int(s) for s in size], [int(i) for i in index])


def preprocess(
    ct: sitk.Image | None,
    pet: sitk.Image,
    *,
    settings: Settings,
    label: sitk.Image | None = None,
    ct_source: str = "CT",
    pet_source: str = "PET",
    validate: bool = True,
) -> Preprocessed:
    """Network input for one study; ``label`` (on the PET grid) follows with nearest neighbour.
    A PET-only model (``settings.modalities``) takes ``ct=None`` (a CT given is not read) and
    the whole PET field of view; a CT/PET model refuses ``ct=None``. ``validate=False``: the
    pair passed :func:`validate_pair` already (where it was read)."""
    ct = model_inputs(ct, settings=settings, pet_source=pet_source)
    if validate:
        validate_pair(ct, pet, settings=settings, ct_source=ct_source, pet_source=pet_source)
    pet = sitk.Cast(pet, sitk.sitkFloat32)
    native = Grid.of(pet)
    if ct is None:
        ct_resampled, (crop_index, crop_size) = False, ((0, 0, 0), native.size)
        stack = pet
    else:
        ct_pet, ct_resampled = ct_on_pet_grid(ct, pet, settings=settings)
        hu = sitk.GetArrayViewFromImage(ct_pet)
        crop_index, crop_size = body_box(hu, native.spacing, settings=settings)
        ct01 = native.stamp(sitk.GetImageFromArray(scale_ct(hu, settings=settings)))
        stack = sitk.Compose(ct01, pet)  # one vector image: crop, orient and resample once for both

    cropped = _crop(stack, crop_index, crop_size)
    oriented = sitk.DICOMOrient(cropped, RAS)
    target = Grid.of(oriented).with_spacing(settings.target_spacing)
    resampled = not np.allclose(oriented.GetSpacing(), settings.target_spacing, atol=1e-3)
    network = target.resample(oriented, interpolator=sitk.sitkLinear) if resampled else oriented
    record = Record(
        native=native,
        ct_resampled=ct_resampled,
        crop_index=tuple(int(i) for i in crop_index),
        cropped=Grid.of(cropped),
        oriented=Grid.of(oriented),
        network=Grid.of(network),
        resampled=resampled,
    )
    array = image_to_array(network).astype(np.float32, copy=False)
    if array.ndim == 3:  # the PET alone: one channel
        array = array[None]
    label_array = None
    if label is not None:
        label_array = forward_label(label, record)
    return Preprocessed(image=array, record=record, label=label_array)


def forward_label(label: sitk.Image, record: Record) -> np.ndarray:
    """A label on the PET grid taken through the recorded crop, RAS and resampling (nearest)."""
    if tuple(label.GetSize()) != record.native.size:
        raise InputError("label", f"size {label.GetSize()} differs from the PET's {record.native.size}")
    label = record.native.stamp(sitk.Cast(label, sitk.sitkUInt8))
    label = sitk.DICOMOrient(_crop(label, record.crop_index, record.cropped.size), RAS)
    if record.resampled:
        label = record.network.resample(label, interpolator=sitk.sitkNearestNeighbor)
    return image_to_array(label)


# --- backward -----------------------------------------------------------------------------


def restore(values: np.ndarray, record: Record) -> sitk.Image:
    """Undo resampling, orientation and crop: (X, Y, Z) values on the network grid ->
    float32 image on the PET's native grid (0 outside the crop)."""
    if tuple(values.shape) != record.network.size:
        raise ValueError(f"values of shape {values.shape} do not match the network grid {record.network.size}")
    image = array_to_image(values.astype(np.float32, copy=False), record.network)
    if record.resampled:
        image = record.oriented.resample(image, interpolator=sitk.sitkLinear)
    image = record.cropped.stamp(sitk.DICOMOrient(image, record.cropped.orientation))
    full = np.zeros(record.native.size[::-1], dtype=np.float32)
    (x0, y0, z0), (nx, ny, nz) = record.crop_index, record.cropped.size
    full[z0 : z0 + nz, y0 : y0 + ny, x0 : x0 + nx] = sitk.GetArrayViewFromImage(image)
    return record.native.stamp(sitk.GetImageFromArray(full))


def probability_to_mask(probability: sitk.Image, *, threshold: float = 0.5) -> sitk.Image:
    """Foreground probability -> uint8 {0, 1} mask. Strictly greater: argmax of two classes
    picks background on a tie."""
    mask = (sitk.GetArrayViewFromImage(probability) > threshold).astype(np.uint8)
    out = sitk.GetImageFromArray(mask)
    out.CopyInformation(probability)
    return out
