"""Is this input usable? Geometry, values and plausibility, checked before any network work.

Each check either refuses (``InputError`` naming the file, the value and what was expected) or
logs a WARNING naming the value. The README's bad-input table lists which is which.
"""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.geometry import physical_bounds, same_grid

log = logging.getLogger(__name__)

PET_MAX_SUV = 1000.0  # a PET whose maximum is above this is in Bq/ml (or counts), not SUV
CT_AIR_HU = -500.0  # a CT in HU has air (about -1000 HU) around or inside the patient
CT_STORED_MIN_MAX = 1000.0  # min >= 0 with max above this: stored values without the -1024 intercept
MIN_AXIAL_OVERLAP = 0.5  # CT must cover this fraction of the PET's axial extent ...
WARN_AXIAL_OVERLAP = 0.9  # ... and below this fraction a warning is logged
# The network grid (before the body crop) is refused above this many voxels: input (2 x float32),
# probability, blending weights and the resampling buffers take about 24 bytes per voxel, so
# 250 M voxels (an 1000 x 500 x 500 mm field of view at 2 mm is 31 M) would need ~6 GB.
MAX_NETWORK_VOXELS = 250_000_000


def check_geometry(image: sitk.Image, *, source: str | Path) -> None:
    """Reject images that are not 3D scalar volumes with a usable grid."""
    dim = image.GetDimension()
    if dim != 3:
        raise InputError(source, f"expected a 3D image, got a {dim}D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            source, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    if min(image.GetSize()) < 2:
        raise InputError(source, f"expected a 3D volume, got size {image.GetSize()} (a single slice)")
    if min(image.GetSpacing()) <= 0:
        raise InputError(source, f"spacing must be positive, got {image.GetSpacing()}")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    error = np.abs(direction.T @ direction - np.eye(3)).max()
    if error > 1e-3:  # orthonormality, not |det| = 1: a shear can have determinant 1
        raise InputError(source, f"direction matrix is not orthonormal (|D^T D - I| = {error:.3g})")


def check_values(array: np.ndarray, *, source: str | Path, role: str) -> None:
    """Reject NaN/inf anywhere, and an all-zero PET."""
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(source, f"{role} contains {int(array.size - finite.sum())} NaN or infinite voxels")
    if role == "PET" and not np.any(array):
        raise InputError(source, "PET is all zero")


def check_pet_range(array: np.ndarray, *, source: str | Path) -> None:
    top = float(array.max())
    if top <= 0:
        raise InputError(source, f"PET has no positive value (maximum {top:g}): expected SUV")
    if top > PET_MAX_SUV:
        raise InputError(
            source, f"PET maximum {top:.4g} looks like Bq/ml or counts, not SUV (expected below {PET_MAX_SUV:g})"
        )


def check_ct_range(array: np.ndarray, *, source: str | Path) -> None:
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high > CT_STORED_MIN_MAX:
        raise InputError(
            source,
            f"CT values {low:g}..{high:g} with no air: stored values without the rescale intercept? (expected HU)",
        )
    if low > CT_AIR_HU:
        log.warning("%s: CT minimum %g HU: no air below %g HU, is this a CT in HU?", source, low, CT_AIR_HU)


def axial_overlap(ct: sitk.Image, pet: sitk.Image) -> float:
    """Fraction of the PET's extent along its slice axis that the CT's bounding box covers."""
    axis = np.asarray(pet.GetDirection()).reshape(3, 3)[:, 2]
    spans = []
    for image in (pet, ct):
        lo, hi = physical_bounds(image)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        along = corners @ axis
        spans.append((along.min(), along.max()))
    (p0, p1), (c0, c1) = spans
    return float(max(0.0, min(p1, c1) - max(p0, c0)) / (p1 - p0))


def check_overlap(ct: sitk.Image, pet: sitk.Image, *, ct_source: str | Path, pet_source: str | Path) -> None:
    fraction = axial_overlap(ct, pet)
    if fraction <= 0:
        raise InputError(ct_source, f"CT and PET ({pet_source}) do not overlap in space")
    if fraction < MIN_AXIAL_OVERLAP:
        raise InputError(
            ct_source,
            f"CT covers {fraction:.0%} of the PET's axial extent ({pet_source}), expected at least "
            f"{MIN_AXIAL_OVERLAP:.0%}",
        )
    if fraction < WARN_AXIAL_OVERLAP:
        log.warning("%s: CT covers only %.0f%% of the PET's axial extent", ct_source, 100 * fraction)


def check_network_size(pet: sitk.Image, target_spacing, *, source: str | Path) -> None:
    """Refuse before allocating when the PET's field of view would make an absurd network grid."""
    extent = np.asarray(pet.GetSize()) * np.asarray(pet.GetSpacing())
    shape = np.maximum(1, np.round(extent / np.asarray(target_spacing))).astype(int)
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > MAX_NETWORK_VOXELS:
        raise InputError(
            source,
            f"field of view {' x '.join(f'{e:.0f}' for e in extent)} mm (spacing "
            f"{', '.join(f'{s:g}' for s in pet.GetSpacing())} mm) makes a {' x '.join(map(str, shape))} network grid, "
            f"above the budget of {MAX_NETWORK_VOXELS:,} voxels: is the spacing in the header right?",
        )


def check_nifti_data(path: Path, *, role: str) -> None:
    """Read a NIfTI file's raw voxel data once more: ITK's reader turns NaN into 0 and reads a
    truncated .nii.gz without complaint, so both are checked in the file's own bytes."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(540)
            order = next((o for o in "<>" if struct.unpack(o + "i", head[:4])[0] in (348, 540)), None)
            if order is None:
                return
            if struct.unpack(order + "i", head[:4])[0] == 348:
                dims = struct.unpack(order + "8h", head[40:56])
                datatype, bitpix = struct.unpack(order + "2h", head[70:74])
                offset = int(struct.unpack(order + "f", head[108:112])[0])
            else:
                datatype, bitpix = struct.unpack(order + "2h", head[12:16])
                dims = struct.unpack(order + "8q", head[16:80])
                offset = struct.unpack(order + "q", head[168:176])[0]
            if not 1 <= dims[0] <= 7 or bitpix % 8:
                return
            count = int(np.prod(dims[1 : dims[0] + 1], dtype=np.int64))
            dtype = {16: np.float32, 64: np.float64}.get(datatype)
            dtype = np.dtype(dtype).newbyteorder(order) if dtype else None
            itemsize = bitpix // 8
            fh.seek(offset)
            bad, left, chunk = 0, count * itemsize, 1 << 24
            while left > 0:
                data = fh.read(min(left, chunk))
                if not data:
                    break
                left -= len(data)
                if dtype is not None:
                    values = np.frombuffer(data[: len(data) // itemsize * itemsize], dtype=dtype)
                    bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    except (OSError, EOFError, struct.error) as err:
        raise InputError(path, f"cannot be read as an image (truncated or corrupt: {err})") from None
    if left > 0:
        raise InputError(path, f"cannot be read as an image (truncated: {left} bytes of voxel data missing)")
    if bad:
        raise InputError(path, f"{role} contains {bad} NaN or infinite voxels")


def check_mask(array: np.ndarray, *, source: str | Path, role: str = "mask") -> None:
    """A lesion mask holds integers >= 0; any non-zero label counts as lesion (with a warning
    when labels above 1 appear). Negative or fractional values (a probability map) are refused."""
    values = np.unique(array)
    if values.size and values[0] < 0:
        raise InputError(source, f"{role} has negative values (minimum {values[0]:g}): expected a 0/1 mask")
    if not np.array_equal(values, np.round(values)):
        fraction = values[values != np.round(values)]
        raise InputError(
            source, f"{role} has non-integer values (e.g. {fraction[0]:g}): a probability map? expected a 0/1 mask"
        )
    if values.size and values[-1] > 1:
        log.warning("%s: %s labels up to %g: every non-zero label counts as lesion", source, role, values[-1])


def check_same_grid(reference: sitk.Image, other: sitk.Image, *, reference_source: str, other_source: str) -> None:
    """Refuse an image that does not lie on the grid of the one it is compared with."""
    if not same_grid(reference, other, tol=1e-3):
        raise InputError(
            other_source,
            f"grid differs from {reference_source} (size {other.GetSize()} vs {reference.GetSize()}, "
            f"spacing/origin/direction must match)",
        )
