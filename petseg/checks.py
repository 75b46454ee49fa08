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
from petseg.geometry import physical_bounds

log = logging.getLogger(__name__)

PET_MAX_SUV = 1000.0  # a PET whose maximum is above this is in Bq/ml (or counts), not SUV
CT_AIR_HU = -500.0  # a CT in HU has air (about -1000 HU) around or inside the patient
CT_STORED_MIN_MAX = 1500.0  # min >= 0 with max above this: stored values without the -1024 intercept
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


def nifti_nonfinite(path: Path) -> int:
    """Number of NaN/inf values in the raw data of a float NIfTI file (0 for other types).

    ITK's NIfTI reader turns NaN into 0 silently, so NIfTI files are checked in their own bytes.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        head = fh.read(540)
        for order in "<>":
            size = struct.unpack(order + "i", head[:4])[0]
            if size in (348, 540):
                break
        else:
            return 0
        if size == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            datatype = struct.unpack(order + "h", head[70:72])[0]
            offset = int(struct.unpack(order + "f", head[108:112])[0])
        else:
            datatype = struct.unpack(order + "h", head[12:14])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            offset = struct.unpack(order + "q", head[168:176])[0]
        dtype = {16: np.float32, 64: np.float64}.get(datatype)
        if dtype is None or not 1 <= dims[0] <= 7:
            return 0
        count = int(np.prod(dims[1 : dims[0] + 1], dtype=np.int64))
        fh.seek(offset)
        dtype = np.dtype(dtype).newbyteorder(order)
        bad, chunk = 0, 1 << 22
        while count > 0:
            data = np.frombuffer(fh.read(min(count, chunk) * dtype.itemsize), dtype=dtype)
            if data.size == 0:
                break
            bad += int(data.size - np.count_nonzero(np.isfinite(data)))
            count -= data.size
        return bad
