"""The quantities a lesion mask is reported with: per lesion and per study, for every
threshold convention of TMTV. Definitions and references: docs/measures.md.

Every convention keeps voxels of the given mask (it never adds uptake outside it: brain and
bladder stay out) and relabels what is kept into 18-connected lesions:
- ``mask``: the mask as it is;
- ``suv2.5`` / ``suv4.0``: voxels with SUVbw >= 2.5 / 4.0 (fixed thresholds are defined on
  SUVbw, so with SUL or SUVbsa the threshold is scaled by the same factor as the values);
- ``41pct``: voxels >= 41 % of their own lesion's SUVmax (EANM 2015), lesions of the mask;
- ``percist``: voxels >= 1.5 x liver mean + 2 SD (PERCIST 1.0), when a liver reference is given.
A minimum lesion volume, when set, drops smaller lesions from every convention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from petseg.errors import InputError
from petseg.metrics import Labelled, lesion_table, totals, voxel_ml

log = logging.getLogger(__name__)

FIXED_THRESHOLDS = {"suv2.5": 2.5, "suv4.0": 4.0}  # SUVbw
RELATIVE_THRESHOLD = 0.41
LIVER_SPHERE_RADIUS_MM = 15.0  # PERCIST: a 3 cm diameter sphere in the right lobe
LIVER_MIN_VOXELS = 10
LIVER_PLAUSIBLE = (0.5, 5.0)  # an FDG liver mean outside this (in SUVbw) is not liver


@dataclass(frozen=True)
class LiverReference:
    """The PERCIST liver reference: mean and sample SD (ddof 1) of its voxels, and its source."""

    source: str
    mean: float
    sd: float
    voxels: int

    @property
    def threshold(self) -> float:
        return 1.5 * self.mean + 2.0 * self.sd

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "mean": self.mean,
            "sd": self.sd,
            "voxels": self.voxels,
            "threshold": self.threshold,
        }


def liver_reference(pet: sitk.Image, values: np.ndarray, region: np.ndarray, *, source: str) -> LiverReference:
    """Mean and SD of ``values`` (the report's unit) over ``region`` (bool, z y x)."""
    n = int(region.sum())
    if n < LIVER_MIN_VOXELS:
        raise InputError(source, f"liver reference holds {n} PET voxels, fewer than {LIVER_MIN_VOXELS}")
    inside = values[region].astype(np.float64)
    return LiverReference(source, float(inside.mean()), float(inside.std(ddof=1)), n)


def sphere_region(pet: sitk.Image, centre_mm, radius_mm: float = LIVER_SPHERE_RADIUS_MM, *, source: str) -> np.ndarray:
    """PET voxels (z, y, x) whose centres lie within ``radius_mm`` of ``centre_mm`` (LPS)."""
    index = np.asarray(pet.TransformPhysicalPointToContinuousIndex([float(c) for c in centre_mm]))
    size = np.asarray(pet.GetSize())
    if np.any(index < -0.5) or np.any(index > size - 0.5):
        raise InputError(source, f"liver centre {tuple(centre_mm)} mm (LPS) lies outside the PET")
    spacing = np.asarray(pet.GetSpacing())
    # the sphere's whole box, beyond the image too: how much of it the image cuts off is said
    low = np.floor(index - radius_mm / spacing).astype(int)
    high = np.ceil(index + radius_mm / spacing).astype(int)
    x, y, z = np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(low, high)], indexing="ij")
    offset = (np.stack([x, y, z], -1) - index) * spacing
    direction = np.asarray(pet.GetDirection()).reshape(3, 3)
    inside = np.linalg.norm(offset @ direction.T, axis=-1) <= radius_mm
    whole = int(inside.sum())
    clip_low, clip_high = np.maximum(low, 0), np.minimum(high, size - 1)
    inside = inside[tuple(slice(a - o, b - o + 1) for a, b, o in zip(clip_low, clip_high, low))]
    if int(inside.sum()) < whole:
        log.warning(
            "%s: the image's edge cuts the sphere: %d of its %d voxels lie in the PET", source, int(inside.sum()), whole
        )
    region = np.zeros(tuple(size[::-1]), bool)
    box = tuple(slice(a, b + 1) for a, b in zip(clip_low[::-1], clip_high[::-1]))
    region[box] = inside.transpose(2, 1, 0)
    return region


@dataclass(frozen=True)
class Convention:
    key: str
    rule: str
    threshold: float | None  # in the report's unit; None: no voxel threshold


def conventions(factor: float, unit: str, liver: LiverReference | None) -> list[Convention]:
    """The conventions in report order; ``factor`` turns SUVbw into ``unit``."""
    out = [Convention("mask", "the mask as it is", None)]
    for key, suvbw in FIXED_THRESHOLDS.items():
        rule = f"SUVbw >= {suvbw:g}" + ("" if factor == 1.0 else f" ({unit} >= {suvbw * factor:.4g})")
        out.append(Convention(key, rule, suvbw * factor))
    out.append(Convention("41pct", "SUV >= 41 % of the lesion's SUVmax", None))
    if liver is not None:
        rule = f"{unit} >= 1.5 x liver mean + 2 SD = {liver.threshold:.4g}"
        out.append(Convention("percist", rule, liver.threshold))
    return out


def convention_mask(convention: Convention, lesions: Labelled, values: np.ndarray) -> np.ndarray:
    if convention.key == "mask":
        return lesions.labels > 0
    if convention.key == "41pct":
        table = lesion_table(lesions, values, voxel_volume_ml=1.0)
        cut = np.concatenate([[np.inf], RELATIVE_THRESHOLD * table["suv_max"]])
        return (lesions.labels > 0) & (values >= cut[lesions.labels])
    return (lesions.labels > 0) & (values >= convention.threshold)


def kept(lesions: Labelled, min_voxels: int) -> Labelled:
    """``lesions`` without those under ``min_voxels``, relabelled 1..n in their order."""
    if min_voxels <= 1 or lesions.count == 0:
        return lesions
    keep = lesions.sizes >= min_voxels
    keep[0] = False
    new = np.zeros(lesions.count + 1, lesions.labels.dtype)
    new[keep] = np.arange(1, int(keep.sum()) + 1)
    return Labelled(new[lesions.labels], int(keep.sum()), np.concatenate([[0], lesions.sizes[keep]]))


def centroids_mm(lesions: Labelled, pet: sitk.Image) -> np.ndarray:
    """(n, 3) centroids in patient coordinates (LPS, mm): the mean voxel index mapped through
    the image's affine (exact for any spacing and direction)."""
    if lesions.count == 0:
        return np.zeros((0, 3))
    flat = np.flatnonzero(lesions.labels)
    labels = lesions.labels.ravel()[flat]
    zyx = np.unravel_index(flat, lesions.labels.shape)
    sizes = lesions.sizes[1:]
    means = [np.bincount(labels, weights=axis, minlength=lesions.count + 1)[1:] / sizes for axis in zyx]
    index = np.stack([means[2], means[1], means[0]], 1)  # (x, y, z)
    direction = np.asarray(pet.GetDirection()).reshape(3, 3)
    return np.asarray(pet.GetOrigin()) + (index * np.asarray(pet.GetSpacing())) @ direction.T


def dmax_mm(points: np.ndarray) -> float | None:
    """Largest distance between two centroids (mm); 0 for one lesion, None for none. Many
    lesions: only the convex hull's vertices can be farthest apart."""
    if len(points) == 0:
        return None
    if len(points) == 1:
        return 0.0
    if len(points) > 200:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # all on a plane or a line: every point
            pass
    return float(pdist(points).max())


def study_measures(lesions: Labelled, values: np.ndarray, pet: sitk.Image, *, bsa_m2: float | None) -> dict:
    """Lesion count, TMTV (ml), TLG, SUVmax, SUVmean, Dmax (mm) and SDmax (m^-1, Dmax / BSA)."""
    table = lesion_table(lesions, values, voxel_volume_ml=voxel_ml(pet))
    stats = totals(table)
    dmax = dmax_mm(centroids_mm(lesions, pet))
    return {
        "lesion_count": stats.count,
        "tmtv_ml": stats.tmtv_ml,
        "tlg": stats.tlg,
        "suv_max": None if stats.count == 0 else stats.suv_max,
        "suv_mean": None if stats.count == 0 else stats.suv_mean,
        "dmax_mm": dmax,
        "sdmax_per_m": None if dmax is None or bsa_m2 is None else dmax / 1000.0 / bsa_m2,
    }
