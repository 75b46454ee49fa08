"""The device path of :mod:`petseg.preprocess`: the same steps as torch operations on the
study's device, the same :class:`~petseg.preprocess.Record`, and ``restore`` back onto the
PET's grid.

Forward: CT onto the PET grid (:func:`petseg.resample_torch.resample`, linear, the CT fill
outside), clip/scale, body crop (the same box rule as the reference), RAS (a permutation and
flips of the axes, exact), resampling to the target spacing (linear, axis by axis). The
network input stays on the device, so the sliding window reads its windows from there.
Backward: the maps come back through the same steps in reverse, on the device, and only the
PET-grid result crosses to the host.

SimpleITK (:mod:`petseg.preprocess`) stays the reference: on identity directions the masks
are identical, elsewhere the probabilities agree to 1e-3 (tests/test_preprocess_torch.py).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import SimpleITK as sitk
import torch

from petseg.geometry import Grid, Reorientation, same_grid
from petseg.preprocess import RAS, Preprocessed, Record, box_of_profiles, model_inputs, validate_pair
from petseg.resample_torch import reorient, resample, unorient
from petseg.settings import Settings

__all__ = ["preprocess_torch", "restore_torch", "restore_many_torch"]

log = logging.getLogger(__name__)


def image_tensor(image: sitk.Image, device: torch.device | str) -> torch.Tensor:
    """A scalar image's voxels as a float32 (Z, Y, X) tensor on ``device``; on the CPU a float32
    image's own buffer, never written to."""
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype != np.float32:
        return torch.from_numpy(array.astype(np.float32)).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the view is read-only: nothing here writes in place
        return torch.from_numpy(array).to(device)


def preprocess_torch(
    ct: sitk.Image | None,
    pet: sitk.Image,
    *,
    settings: Settings,
    device: torch.device | str,
    label: sitk.Image | None = None,
    ct_source: str = "CT",
    pet_source: str = "PET",
    validate: bool = True,
) -> Preprocessed:
    """:func:`petseg.preprocess.preprocess` on ``device``: ``image`` is a (C, X, Y, Z) float32
    tensor there (``label`` a uint8 (X, Y, Z) array on the host), ``record`` what the
    reference records."""
    ct = model_inputs(ct, settings=settings, pet_source=pet_source)
    if validate:
        validate_pair(ct, pet, settings=settings, ct_source=ct_source, pet_source=pet_source)
    native = Grid.of(pet)
    pet_values = image_tensor(pet, device)
    if ct is None:
        ct_resampled, (crop_index, crop_size) = False, ((0, 0, 0), native.size)
        channels = [pet_values]
    else:
        hu = image_tensor(ct, device)
        ct_resampled = not same_grid(ct, pet)
        if ct_resampled:
            hu = resample(hu, Grid.of(ct), native, mode="linear", default=settings.ct_fill_hu)
        body = hu > settings.body_threshold_hu
        profiles = [body.any(dim=dims).cpu().numpy() for dims in ((0, 1), (0, 2), (1, 2))]  # x, y, z
        crop_index, crop_size = box_of_profiles(profiles, native.spacing, settings=settings)
        lo, hi = settings.ct_window
        channels = [((hu - lo) / (hi - lo)).clamp_(0.0, 1.0), pet_values]
    (x0, y0, z0), (nx, ny, nz) = crop_index, crop_size
    stack = torch.stack([c[z0 : z0 + nz, y0 : y0 + ny, x0 : x0 + nx] for c in channels])
    cropped = _cropped(native, crop_index, crop_size)
    turn = cropped.reoriented(RAS)
    oriented = reorient(stack, turn.axes, turn.flips)
    target = turn.grid.with_spacing(settings.target_spacing)
    resampled = not np.allclose(turn.grid.spacing, settings.target_spacing, atol=1e-3)
    network = resample(oriented, turn.grid, target, mode="linear") if resampled else oriented
    record = Record(
        native=native,
        ct_resampled=ct_resampled,
        crop_index=tuple(int(i) for i in crop_index),
        cropped=cropped,
        oriented=turn.grid,
        network=target if resampled else turn.grid,
        resampled=resampled,
    )
    image = network.permute(0, 3, 2, 1).contiguous()  # (C, X, Y, Z)
    if image.is_cuda:
        torch.cuda.synchronize(image.device)  # the stage's seconds are its own, not the network's
    label_array = None if label is None else _forward_label(label, record, turn, device)
    return Preprocessed(image=image, record=record, label=label_array)


def _cropped(native: Grid, index: tuple, size: tuple) -> Grid:
    """The grid of ``sitk.RegionOfInterest(image, size, index)`` (the image itself when the
    box is the whole grid)."""
    if tuple(size) == native.size:
        return native
    origin = tuple(float(v) for v in native.to_physical(np.asarray(index, float)))
    return Grid(tuple(int(s) for s in size), native.spacing, origin, native.direction)


def _forward_label(label: sitk.Image, record: Record, turn: Reorientation, device) -> np.ndarray:
    from petseg.errors import InputError

    if tuple(label.GetSize()) != record.native.size:
        raise InputError("label", f"size {label.GetSize()} differs from the PET's {record.native.size}")
    (x0, y0, z0), (nx, ny, nz) = record.crop_index, record.cropped.size
    values = image_tensor(label, device)[None, z0 : z0 + nz, y0 : y0 + ny, x0 : x0 + nx]
    values = reorient(values, turn.axes, turn.flips)
    if record.resampled:
        values = resample(values, record.oriented, record.network, mode="nearest")
    return values[0].permute(2, 1, 0).round().to(torch.uint8).cpu().numpy()


def restore_many_torch(values, record: Record, *, device: torch.device | str) -> np.ndarray:
    """(C, X, Y, Z) maps on the network grid (a host array or a tensor) -> (C, Z, Y, X)
    float32 array on the PET's native grid (0 outside the crop), computed on ``device``."""
    maps = torch.as_tensor(values, dtype=torch.float32).to(device)
    if tuple(maps.shape[1:]) != record.network.size:
        raise ValueError(f"values of shape {tuple(maps.shape[1:])} do not match the network grid {record.network.size}")
    maps = maps.permute(0, 3, 2, 1)  # (C, Z, Y, X)
    if record.resampled:
        maps = resample(maps, record.network, record.oriented, mode="linear")
    turn = record.cropped.reoriented(RAS)
    maps = unorient(maps, turn.axes, turn.flips)
    full = torch.zeros((maps.shape[0], *record.native.size[::-1]), dtype=torch.float32, device=maps.device)
    (x0, y0, z0), (nx, ny, nz) = record.crop_index, record.cropped.size
    full[:, z0 : z0 + nz, y0 : y0 + ny, x0 : x0 + nx] = maps
    return full.cpu().numpy()


def restore_torch(values, record: Record, *, device: torch.device | str) -> sitk.Image:
    """:func:`petseg.preprocess.restore` on ``device``: (X, Y, Z) values on the network grid
    -> float32 image on the PET's native grid."""
    restored = restore_many_torch(torch.as_tensor(values)[None], record, device=device)[0]
    return record.native.stamp(sitk.GetImageFromArray(restored))
