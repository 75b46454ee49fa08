"""SUVpeak: the mean SUV in a 1 cm^3 sphere, by its two definitions.

The sphere holds the voxels whose centres lie within r = (3 / 4 pi)^(1/3) cm = 6.2035 mm of
its centre (IBSI 1.0, section 3.2, "local intensity"), all of them, inside the lesion or not:
- **local** (IBSI "local intensity peak", VJGA; MIRP ``loc_peak_loc``): centred on the
  lesion's maximum voxel (with ties, the highest of their spheres);
- **global** (IBSI "global intensity peak", 0F91; MIRP ``loc_peak_glob``; PERCIST 1.0, Wahl
  et al., JNM 2009;50:122S, and Lodge et al., JNM 2012;53:1041: the sphere placed where its
  mean is highest): the highest sphere mean centred on any voxel of the lesion.
A sphere that crosses the image's edge averages the voxels inside the image (MIRP does so for
regions of up to 300 voxels; above, it pads with 0). Distances are in mm on the voxel grid,
so the direction cosines do not matter.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

PEAK_RADIUS_MM = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0) * 10.0


def sphere_kernel(spacing_zyx, radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean kernel (z, y, x) of the voxel offsets whose centres lie within ``radius_mm``."""
    spacing = np.asarray(spacing_zyx, float)
    reach = np.floor(radius_mm / spacing).astype(int)
    grid = np.meshgrid(*[np.arange(-n, n + 1) * s for n, s in zip(reach, spacing)], indexing="ij")
    return np.sqrt(sum(g**2 for g in grid)) <= radius_mm + 1e-9


def lesion_peaks(pet: np.ndarray, labels: np.ndarray, count: int, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """(local, global) SUVpeak per label 1..count of ``labels`` (arrays z, y, x). Each lesion's
    sphere means are computed on its bounding box grown by the sphere's reach, never on the
    whole image (a whole-body PET has ~50 M voxels, its lesions a few thousand)."""
    kernel = sphere_kernel(spacing_zyx).astype(np.float64)
    reach = [(n - 1) // 2 for n in kernel.shape]
    local, best = np.full(count, np.nan), np.full(count, np.nan)
    for i, box in enumerate(ndimage.find_objects(labels, max_label=count)):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - r), min(n, s.stop + r)) for s, r, n in zip(box, reach, labels.shape))
        values = np.asarray(pet[grown], np.float64)
        inside = labels[grown] == i + 1
        sums = ndimage.correlate(values, kernel, mode="constant", cval=0.0)
        counts = ndimage.correlate(np.ones_like(values), kernel, mode="constant", cval=0.0)
        means = sums[inside] / counts[inside]
        lesion_values = values[inside]
        local[i] = means[lesion_values == lesion_values.max()].max()
        best[i] = means.max()
    return local, best
