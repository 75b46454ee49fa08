"""Is this input usable? Geometry, values and plausibility, checked before any network work.

Each check either refuses (``InputError`` naming the file, the value and what was expected) or
logs a WARNING naming the value. The README's bad-input table lists which is which.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.geometry import Grid, physical_bounds, same_grid

log = logging.getLogger(__name__)

PET_MAX_SUV = 1000.0  # a PET whose maximum is above this is in Bq/ml (or counts), not SUV
PET_MIN_SUV = -10.0  # reconstruction noise stays well above this; a "PET" below it is not SUV
# every human PET has uptake well above these somewhere (brain, heart, bladder, kidneys): a
# maximum below the first is not SUV (normalised, or in MBq/ml); below the second, a WARNING
PET_LOW_MAX_SUV, PET_WARN_MAX_SUV = 0.5, 2.0
MAX_ORIGIN_MM = 1e6  # an origin farther than 1 km is a broken header (and loses float precision)
CT_AIR_HU = -500.0  # a CT in HU has air (about -1000 HU) around or inside the patient
CT_STORED_MIN_MAX = 1000.0  # min >= 0 with max above this: stored values without the -1024 intercept
MIN_COVERAGE = 0.5  # the CT must reach this fraction of the PET's axial extent (a warning below 0.9) ...
WARN_AXIAL_COVERAGE = 0.9
MIN_TRANSAXIAL = 0.25  # ... and cover this fraction of its transaxial area there (autoPET's CTs: 0.38)
SPACING_MM = (0.3, 10.0)  # a human PET or CT has voxels within this range along every axis
IN_PLANE_MM = (50.0, 1000.0)  # ... and a transaxial field of view within this range
MIN_NETWORK_VOXELS = 8  # the network grid needs at least this many voxels along every axis
# The network grid (before the body crop) is refused above this many voxels: input (2 x float32),
# probability, blending weights and the resampling buffers take about 24 bytes per voxel, so
# 250 M voxels (an 1000 x 500 x 500 mm field of view at 2 mm is 31 M) would need ~6 GB.
MAX_NETWORK_VOXELS = 250_000_000
# An image file is refused above this many voxels, or this many bytes as stored, before any is
# read (petseg holds it as float32 too: 4 GB at the limit; a total-body CT of 512 x 512 x 1900
# int16 voxels has 0.5 G voxels, 1 GB).
MAX_IMAGE_VOXELS = 1_000_000_000
MAX_IMAGE_BYTES = 4 << 30


def check_geometry(
    *,
    dimension: int,
    size: Sequence[int],
    spacing: Sequence[float],
    direction: Sequence[float],
    components: int,
    source: str | Path,
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    bytes_per_voxel: int = 4,
) -> None:
    """Reject what is not a 3D scalar volume with a usable grid: from a file's header, before
    its voxels are read, or from an image in memory (:func:`check_image`)."""
    if dimension != 3:
        raise InputError(source, f"expected a 3D image, got a {dimension}D image of size {tuple(size)}")
    if components != 1:
        raise InputError(source, f"expected a scalar image, got {components} components per voxel")
    if min(size) < 2:
        raise InputError(source, f"expected a 3D volume, got size {tuple(size)} (a single slice)")
    voxels = int(np.prod(np.asarray(size, dtype=np.int64)))
    if voxels > MAX_IMAGE_VOXELS:
        raise InputError(
            source, f"size {' x '.join(map(str, size))} is {voxels:,} voxels, above the {MAX_IMAGE_VOXELS:,} allowed"
        )
    if voxels * bytes_per_voxel > MAX_IMAGE_BYTES:
        raise InputError(
            source,
            f"size {' x '.join(map(str, size))} at {bytes_per_voxel} bytes a voxel is "
            f"{voxels * bytes_per_voxel / 2**30:.1f} GiB, above the {MAX_IMAGE_BYTES / 2**30:.0f} GiB allowed",
        )
    if not np.all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(source, f"spacing must be positive, got {tuple(spacing)}")
    if not np.all(np.isfinite(origin)) or np.abs(origin).max() > MAX_ORIGIN_MM:
        raise InputError(source, f"origin {tuple(origin)} mm is not a finite point within {MAX_ORIGIN_MM:g} mm")
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    error = np.abs(matrix.T @ matrix - np.eye(3)).max() if np.all(np.isfinite(matrix)) else np.inf
    if error > 1e-3:  # orthonormality, not |det| = 1: a shear can have determinant 1
        raise InputError(source, f"direction matrix is not orthonormal (|D^T D - I| = {error:.3g})")


def check_image(image: sitk.Image, *, source: str | Path) -> None:
    """:func:`check_geometry` of an image in memory."""
    check_geometry(
        dimension=image.GetDimension(),
        size=image.GetSize(),
        spacing=image.GetSpacing(),
        direction=image.GetDirection() if image.GetDimension() == 3 else np.eye(3).ravel(),
        components=image.GetNumberOfComponentsPerPixel(),
        source=source,
        origin=image.GetOrigin() if image.GetDimension() == 3 else (0.0, 0.0, 0.0),
    )


def axial_axis(grid: Grid) -> int:
    """The image axis closest to the patient's head-feet axis (physical z)."""
    return int(np.argmax(np.abs(np.asarray(grid.direction).reshape(3, 3)[2])))


def check_field_of_view(image: sitk.Image, *, role: str, source: str | Path, extent: bool = True) -> None:
    """A human study's grid: every spacing within SPACING_MM and (with ``extent``; the CT only
    needs to cover the PET) the transaxial field of view within IN_PLANE_MM. Catches headers in
    metres or centimetres and absurd spacings."""
    grid = Grid.of(image)
    low, high = SPACING_MM
    if min(grid.spacing) < low or max(grid.spacing) > high + 1e-6:
        raise InputError(
            source,
            f"{role} spacing {' x '.join(f'{s:g}' for s in grid.spacing)} mm lies outside {low:g}-{high:g} mm "
            "per axis: is the header in mm?",
        )
    if not extent:
        return
    mm = np.asarray(grid.size) * np.asarray(grid.spacing)
    axial = axial_axis(grid)
    low, high = IN_PLANE_MM
    in_plane = [mm[a] for a in range(3) if a != axial]
    if min(in_plane) < low or max(in_plane) > high:
        raise InputError(
            source,
            f"{role} field of view {' x '.join(f'{e:.0f}' for e in mm)} mm: the transaxial extent "
            f"must lie within {low:.0f}-{high:.0f} mm for a human study",
        )


def check_values(array: np.ndarray, *, source: str | Path, role: str) -> None:
    """Reject NaN/inf anywhere, and an all-zero PET."""
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(source, f"{role} contains {int(array.size - finite.sum())} NaN or infinite voxels")
    if role == "PET" and not np.any(array):
        raise InputError(source, "PET is all zero")


def check_swapped(ct: np.ndarray, pet: np.ndarray, *, ct_source: str | Path, pet_source: str | Path) -> None:
    """A "PET" with air-like values beside a "CT" with SUV-like values: the two were swapped."""
    pet_min, ct_min, ct_max = float(pet.min()), float(ct.min()), float(ct.max())
    if pet_min <= CT_AIR_HU and ct_min >= PET_MIN_SUV and ct_max <= PET_MAX_SUV:
        raise InputError(
            pet_source,
            f"CT and PET look swapped: this PET has values down to {pet_min:g} (air in HU) and the CT "
            f"({ct_source}) holds {ct_min:g}..{ct_max:g} (SUV-like)",
        )


def check_pet_range(array: np.ndarray, *, source: str | Path) -> None:
    low, top = float(array.min()), float(array.max())
    if top <= 0:
        raise InputError(source, f"PET has no positive value (maximum {top:g}): expected SUV")
    if low < PET_MIN_SUV:
        hint = " (values of a CT in HU?)" if low <= CT_AIR_HU else ""
        raise InputError(
            source, f"PET minimum {low:.4g} lies far below 0{hint}: expected SUV (at least {PET_MIN_SUV:g})"
        )
    if top > PET_MAX_SUV:
        raise InputError(
            source, f"PET maximum {top:.4g} looks like Bq/ml or counts, not SUV (expected below {PET_MAX_SUV:g})"
        )
    if top < PET_LOW_MAX_SUV:
        raise InputError(
            source,
            f"PET maximum {top:.4g} is too low for SUV (a human PET has uptake above {PET_WARN_MAX_SUV:g} somewhere): "
            "normalised, or in other units?",
        )
    if top < PET_WARN_MAX_SUV:
        log.warning("%s: PET maximum %.3g SUV is low for a human PET: is it in SUV?", source, top)


def check_ct_range(array: np.ndarray, *, source: str | Path) -> None:
    low, high = float(array.min()), float(array.max())
    if low >= 0 and high > CT_STORED_MIN_MAX:
        raise InputError(
            source,
            f"CT values {low:g}..{high:g} with no air: stored values without the rescale intercept? (expected HU)",
        )
    if low > CT_AIR_HU:
        log.warning("%s: CT minimum %g HU: no air below %g HU, is this a CT in HU?", source, low, CT_AIR_HU)


@dataclass(frozen=True)
class Coverage:
    """How much of the PET the CT covers: the fraction of the PET's axial extent the CT reaches,
    and within those slices the fraction of the PET's transaxial area (a whole-body CT of 500 mm
    in a PET of 814 mm, as in autoPET: 1.0 and 0.38)."""

    axial: float
    transaxial: float


COVERAGE_SAMPLES = 48  # PET voxel centres per axis tested for lying inside the CT (every slice up to 48)


def coverage(ct: sitk.Image, pet: sitk.Image) -> Coverage:
    """Measured on a lattice of the PET's voxel centres taken into the CT's voxel coordinates,
    so oblique grids count what really overlaps (not bounding boxes)."""
    pet_grid, ct_grid = Grid.of(pet), Grid.of(ct)
    axes = [np.linspace(0, n - 1, min(n, COVERAGE_SAMPLES)) for n in pet_grid.size]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    at = ct_grid.to_index(pet_grid.to_physical(index))
    inside = np.all((at >= -0.5) & (at <= np.asarray(ct_grid.size) - 0.5), axis=-1)
    axial = axial_axis(pet_grid)
    reached = np.moveaxis(inside, axial, 0).reshape(inside.shape[axial], -1)
    slices = reached.any(axis=1)
    area = float(reached[slices].mean()) if slices.any() else 0.0
    return Coverage(float(slices.mean()), area)


def _extent_mm(image: sitk.Image) -> str:
    lo, hi = physical_bounds(image)
    return ", ".join(f"{axis} {a:.0f}..{b:.0f}" for axis, a, b in zip("xyz", lo, hi)) + " mm"


def check_overlap(ct: sitk.Image, pet: sitk.Image, *, ct_source: str | Path, pet_source: str | Path) -> None:
    """The CT must reach at least MIN_COVERAGE of the PET's axial extent and, within it, at
    least MIN_TRANSAXIAL of its transaxial area; refusals give both boxes in mm (LPS)."""
    covered = coverage(ct, pet)
    boxes = f"CT {_extent_mm(ct)}; PET {_extent_mm(pet)}"
    if covered.axial == 0:
        raise InputError(ct_source, f"CT and PET ({pet_source}) do not overlap in space ({boxes})")
    if covered.axial < MIN_COVERAGE:
        raise InputError(
            ct_source,
            f"CT covers {covered.axial:.0%} of the PET's axial extent ({pet_source}), expected at least "
            f"{MIN_COVERAGE:.0%} ({boxes})",
        )
    if covered.transaxial < MIN_TRANSAXIAL:
        raise InputError(
            ct_source,
            f"CT covers {covered.transaxial:.0%} of the PET's transaxial area ({pet_source}), expected at least "
            f"{MIN_TRANSAXIAL:.0%} ({boxes})",
        )
    if covered.axial < WARN_AXIAL_COVERAGE:
        log.warning("%s: CT covers only %.0f%% of the PET's axial extent", ct_source, 100 * covered.axial)


def check_network_size(pet: sitk.Image, target_spacing, *, source: str | Path) -> None:
    """Refuse before allocating when the PET's field of view would make an absurd network grid,
    or one too small for the network to see anything."""
    extent = np.asarray(pet.GetSize()) * np.asarray(pet.GetSpacing())
    shape = np.maximum(1, np.round(extent / np.asarray(target_spacing))).astype(int)
    voxels = int(np.prod(shape, dtype=np.int64))
    described = (
        f"field of view {' x '.join(f'{e:.0f}' for e in extent)} mm (spacing "
        f"{', '.join(f'{s:g}' for s in pet.GetSpacing())} mm) makes a {' x '.join(map(str, shape))} network grid"
    )
    if voxels > MAX_NETWORK_VOXELS:
        raise InputError(
            source,
            f"{described}, above the budget of {MAX_NETWORK_VOXELS:,} voxels: is the spacing in the header right?",
        )
    if shape.min() < MIN_NETWORK_VOXELS:
        raise InputError(source, f"{described}: fewer than {MIN_NETWORK_VOXELS} voxels along an axis")


def check_mask(array: np.ndarray, *, source: str | Path, role: str = "mask") -> None:
    """A lesion mask holds integers >= 0; any non-zero label counts as lesion (with a warning
    when labels above 1 appear). Negative or fractional values (a probability map) are refused."""
    values = np.unique(array)
    if values.size and values[0] < 0:
        raise InputError(source, f"{role} has negative values (minimum {values[0]:g}): expected a 0/1 mask")
    if not np.array_equal(values, np.round(values)):
        fraction = values[values != np.round(values)]
        raise InputError(
            source,
            f"{role} has non-integer values (e.g. {np.format_float_positional(fraction[0], trim='-')}): "
            "a probability map? expected a 0/1 mask",
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
