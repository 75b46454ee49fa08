"""Deterministic synthetic whole-body PET/CT studies with a lesion label.

The anatomy is analytic (ellipsoids and cylinders in patient coordinates, LPS, scaled to
the field of view), so the same study can be rendered on any grid: anisotropic spacing,
non-zero origin, flipped or oblique directions, and a CT on its own finer grid. Tracer
uptake follows FDG or PSMA patterns; lesions (3-30 mm radius, SUV 2-20) sit in lymph
node stations, bone, lung and liver. PET gets Poisson-like noise and scanner blur.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from petseg.geometry import Grid
from petseg.io import write_image
from petseg.layout import gc_paths, training_paths

TRACERS = ("fdg", "psma")

# tissue classes, painted in this order (later wins)
AIR, SOFT, LUNG, LIVER, HEART, BRAIN, KIDNEY, BLADDER, BONE, SALIVARY, TABLE = range(11)
HU = {
    AIR: -1000,
    SOFT: 30,
    LUNG: -850,
    LIVER: 55,
    HEART: 40,
    BRAIN: 35,
    KIDNEY: 35,
    BLADDER: 10,
    BONE: 650,
    SALIVARY: 30,
    TABLE: 300,
}
SUV = {
    "fdg": {
        AIR: 0.0,
        SOFT: 0.7,
        LUNG: 0.4,
        LIVER: 2.2,
        HEART: 4.0,
        BRAIN: 8.0,
        KIDNEY: 3.0,
        BLADDER: 12.0,
        BONE: 1.2,
        SALIVARY: 1.5,
        TABLE: 0.0,
    },
    "psma": {
        AIR: 0.0,
        SOFT: 0.4,
        LUNG: 0.2,
        LIVER: 5.0,
        HEART: 1.0,
        BRAIN: 0.3,
        KIDNEY: 25.0,
        BLADDER: 20.0,
        BONE: 0.6,
        SALIVARY: 14.0,
        TABLE: 0.0,
    },
}
LESION_SITES = ("node", "bone", "lung", "liver")
# lymph-node stations in body-relative coordinates (fractions of FOV width, depth, length)
NODE_STATIONS = [
    (0.0, 0.05, 0.15),
    (0.06, 0.06, 0.0),
    (-0.06, 0.06, 0.0),
    (0.1, 0.0, -0.1),
    (-0.1, 0.0, -0.1),
    (0.28, 0.0, 0.22),
    (-0.28, 0.0, 0.22),
    (0.08, 0.0, 0.33),
    (-0.08, 0.0, 0.33),
]


@dataclass(frozen=True)
class Lesion:
    centre: tuple[float, float, float]  # mm, patient (LPS) coordinates
    radius: float  # mm
    suv: float
    site: str
    labelled: bool = True  # False: physiological uptake that only looks like a lesion (PET only)


@dataclass
class Study:
    case_id: str
    tracer: str
    ct: sitk.Image
    pet: sitk.Image
    label: sitk.Image
    lesions: list[Lesion]


def _grid_points(grid: Grid, z_slice: slice) -> np.ndarray:
    """Physical points (N, 3) of voxels in z-slab ``z_slice``, ordered like a (z, y, x) array
    (Grid.to_physical in float32: half the memory for the millions of points of a slab)."""
    size = grid.size
    zs = np.arange(size[2])[z_slice]
    k, j, i = np.meshgrid(zs, np.arange(size[1]), np.arange(size[0]), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float32) * np.asarray(grid.spacing, np.float32)
    return idx @ np.asarray(grid.direction, np.float32).reshape(3, 3).T + np.asarray(grid.origin, np.float32)


class Anatomy:
    """Analytic body in a frame centred on the field of view (LPS: +x left, +y posterior, +z head)."""

    def __init__(self, centre: np.ndarray, extent: np.ndarray) -> None:
        self.centre = centre.astype(np.float32)
        self.w, self.d, self.length = (float(e) for e in extent)

    def rel(self, fx: float, fy: float, fz: float) -> np.ndarray:
        """Body-relative fractions -> physical point."""
        return self.centre + np.array([fx * self.w, fy * self.d, fz * self.length], np.float32)

    def _ellipsoid(self, q, c, semi) -> np.ndarray:
        s = np.array([semi[0] * self.w, semi[1] * self.d, semi[2] * self.length], np.float32)
        return (((q - np.array(c, np.float32) * [self.w, self.d, self.length]) / s) ** 2).sum(-1) <= 1.0

    def _cylinder(self, q, cx, cy, r_x, r_y, z0, z1) -> np.ndarray:
        x = (q[:, 0] - cx * self.w) / (r_x * self.w)
        y = (q[:, 1] - cy * self.d) / (r_y * self.d)
        z = q[:, 2]
        return (x * x + y * y <= 1.0) & (z >= z0 * self.length) & (z <= z1 * self.length)

    def tissues(self, points: np.ndarray) -> np.ndarray:
        q = points - self.centre
        e, cyl = self._ellipsoid, self._cylinder
        t = np.full(len(q), AIR, np.uint8)
        t[cyl(q, 0, 0.34, 0.45, 0.02, -0.5, 0.5)] = TABLE  # scanner table, behind the patient
        t[cyl(q, 0, 0, 0.40, 0.28, -0.18, 0.30)] = SOFT  # torso
        for side in (-1, 1):
            t[cyl(q, side * 0.17, 0, 0.13, 0.2, -0.49, -0.12)] = SOFT  # legs
        t[cyl(q, 0, 0, 0.11, 0.16, 0.29, 0.37)] = SOFT  # neck
        head = e(q, (0, 0, 0.43), (0.16, 0.24, 0.07))
        t[head] = BONE  # skull
        t[e(q, (0, 0, 0.43), (0.14, 0.21, 0.062))] = BRAIN
        for side in (-1, 1):
            t[e(q, (side * 0.17, 0, 0.18), (0.13, 0.2, 0.1))] = LUNG
            t[e(q, (side * 0.12, 0.12, 0.0), (0.04, 0.06, 0.03))] = KIDNEY
            t[e(q, (side * 0.1, 0.0, 0.37), (0.03, 0.06, 0.015))] = SALIVARY
            t[e(q, (side * 0.12, 0.08, -0.12), (0.09, 0.15, 0.035))] = BONE  # pelvis
            t[cyl(q, side * 0.17, 0, 0.03, 0.05, -0.49, -0.15)] = BONE  # femur
        t[e(q, (0.04, -0.06, 0.13), (0.09, 0.14, 0.04))] = HEART
        t[e(q, (-0.15, -0.02, 0.05), (0.16, 0.2, 0.05))] = LIVER  # patient's right = -x (LPS)
        t[e(q, (0, -0.05, -0.13), (0.06, 0.1, 0.025))] = BLADDER
        t[cyl(q, 0, 0.18, 0.035, 0.07, -0.12, 0.36)] = BONE  # spine
        return t


def _sample_lesions(
    anatomy: Anatomy, rng: np.random.Generator, n: int, tracer: str, *, hard: bool = False
) -> list[Lesion]:
    lesions = []
    anchors = {
        "lung": [((s * 0.17, 0, 0.18), (0.09, 0.14, 0.07)) for s in (-1, 1)],
        "liver": [((-0.15, -0.02, 0.05), (0.1, 0.12, 0.03))],
        "bone": [((0, 0.18, z), (0.0, 0.0, 0.0)) for z in (-0.05, 0.05, 0.15, 0.25)]
        + [((s * 0.12, 0.08, -0.12), (0.04, 0.06, 0.01)) for s in (-1, 1)],
        "node": [(c, (0.01, 0.01, 0.01)) for c in NODE_STATIONS],
    }
    for _ in range(n):
        site = LESION_SITES[rng.integers(len(LESION_SITES))]
        (c, jitter) = anchors[site][rng.integers(len(anchors[site]))]
        frac = np.asarray(c) + rng.uniform(-1, 1, 3) * np.asarray(jitter)
        centre = anatomy.rel(*frac)
        background = SUV[tracer][{"node": SOFT, "bone": BONE, "lung": LUNG, "liver": LIVER}[site]]
        if hard:  # small and faint: 4-10 mm radius, 1.6-2.6 x the tissue around it
            radius = float(rng.uniform(4.0, 10.0))
            suv = float(background * rng.uniform(1.6, 2.6))
        else:
            radius = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
            suv = max(float(rng.uniform(2.0, 20.0)), 2.0 * background)
        radius = min(radius, 0.08 * anatomy.w)  # keep lesions plausible in small fields of view
        lesions.append(Lesion(tuple(float(v) for v in centre), radius, suv, site))
    return lesions


def _sample_mimics(anatomy: Anatomy, rng: np.random.Generator, n: int) -> list[Lesion]:
    """Unlabelled lesion-like uptake (bowel, brown fat, inflamed nodes): hot spheres of 6-14 mm
    radius and SUV 4-9 at lymph-node stations and around the abdomen."""
    mimics = []
    for _ in range(n):
        c = NODE_STATIONS[rng.integers(len(NODE_STATIONS))] if rng.random() < 0.5 else (0.0, -0.05, -0.02)
        frac = np.asarray(c) + rng.uniform(-1, 1, 3) * np.array([0.08, 0.05, 0.06])
        radius = min(float(rng.uniform(6.0, 14.0)), 0.08 * anatomy.w)
        mimics.append(
            Lesion(tuple(float(v) for v in anatomy.rel(*frac)), radius, float(rng.uniform(4.0, 9.0)), "mimic", False)
        )
    return mimics


def _render(grid: Grid, anatomy, lesions, tracer, *, what: str) -> np.ndarray:
    """Render 'ct' (HU), 'pet' (ideal SUV) or 'label' as a (z, y, x) array, slab by slab."""
    size = grid.size
    out = np.zeros(size[::-1], np.float32 if what != "label" else np.uint8)
    lut_hu = np.array([HU[i] for i in range(len(HU))], np.float32)
    lut_suv = np.array([SUV[tracer][i] for i in range(len(HU))], np.float32)
    slab = max(1, 2_000_000 // (size[0] * size[1]))
    for z0 in range(0, size[2], slab):
        zs = slice(z0, min(size[2], z0 + slab))
        pts = _grid_points(grid, zs)
        values = np.zeros(len(pts), out.dtype)
        if what != "label":
            values[:] = (lut_hu if what == "ct" else lut_suv)[anatomy.tissues(pts)]
        for lesion in lesions:
            if not lesion.labelled and what != "pet":
                continue
            inside = ((pts - np.asarray(lesion.centre, np.float32)) ** 2).sum(-1) <= lesion.radius**2
            if what == "label":
                values[inside] = 1
            elif what == "pet":
                values[inside] = lesion.suv
            else:
                values[inside] = 80.0 if lesion.site != "bone" else 900.0
        out[zs] = values.reshape(zs.stop - zs.start, size[1], size[0])
    return out


def make_study(
    *,
    tracer: str = "fdg",
    seed: int = 0,
    index: int = 0,
    shape: tuple[int, int, int] = (80, 64, 160),
    spacing: tuple[float, float, float] = (5.0, 5.0, 4.5),
    origin: tuple[float, float, float] | None = None,
    direction: tuple[float, ...] | None = None,
    ct_spacing: tuple[float, float, float] | None = None,
    n_lesions: int | None = None,
    noise: bool = True,
    hard: bool = False,
) -> Study:
    """One deterministic study: same (tracer, seed, index) -> same images, on any grid.

    ``shape``/``spacing``/``origin``/``direction`` define the PET grid (and the label's);
    the CT shares it unless ``ct_spacing`` puts it on its own grid over the same field of view.
    ``hard`` makes studies an automatic model struggles with: small, faint lesions (4-10 mm,
    1.6-2.6 x their tissue's uptake) and 2-5 unlabelled lesion-like hot spots.
    """
    if tracer not in TRACERS:
        raise ValueError(f"tracer must be one of {TRACERS}, got {tracer!r}")
    rng = np.random.default_rng([seed, index, TRACERS.index(tracer)])
    size = tuple(int(s) for s in shape)
    direction = np.eye(3) if direction is None else np.asarray(direction, float).reshape(3, 3)
    extent_vec = np.asarray(size) * np.asarray(spacing)
    if origin is None:  # centre the field of view on the scanner isocentre
        origin = -direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    origin = np.asarray(origin, float)
    centre = origin + direction @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    anatomy = Anatomy(centre, np.abs(direction) @ extent_vec)
    count = int(rng.integers(1, 7)) if n_lesions is None else n_lesions
    lesions = _sample_lesions(anatomy, rng, count, tracer, hard=hard)
    if hard:
        lesions += _sample_mimics(anatomy, rng, int(rng.integers(2, 6)))

    grid = Grid(size, tuple(float(s) for s in spacing), tuple(origin.tolist()), tuple(direction.ravel().tolist()))
    pet = _render(grid, anatomy, lesions, tracer, what="pet")
    if noise:
        counts = 6.0  # counts per SUV unit per voxel: low enough to look like PET noise
        pet = rng.poisson(pet * counts).astype(np.float32) / counts
    fwhm_mm = 6.5
    pet = gaussian_filter(pet, sigma=[fwhm_mm / 2.355 / s for s in spacing[::-1]]).astype(np.float32)
    label = _render(grid, anatomy, lesions, tracer, what="label")
    # the CT: the same grid, or the same direction and field-of-view centre at its own spacing
    ct_grid = grid if ct_spacing is None else grid.with_spacing(tuple(float(s) for s in ct_spacing))
    ct = _render(ct_grid, anatomy, lesions, tracer, what="ct")
    if noise:
        ct += rng.normal(0, 12.0, ct.shape).astype(np.float32)
    ct = np.clip(np.round(ct), -1024, 3071).astype(np.int16)

    return Study(
        case_id=f"{tracer}_ph{seed:03d}x{index:03d}_2026-01-01",
        tracer=tracer,
        ct=ct_grid.stamp(sitk.GetImageFromArray(ct)),
        pet=grid.stamp(sitk.GetImageFromArray(pet)),
        label=grid.stamp(sitk.GetImageFromArray(label)),
        lesions=lesions,
    )


def case_uuid(case_id: str) -> str:
    """Stable UUID for a case name (Grand Challenge names inputs by UUID)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"petseg-phantom/{case_id}"))


def write_study(study: Study, out_dir: str | Path, *, layout: str = "nnunet") -> list[Path]:
    """Write one study.

    layout "nnunet": ``imagesTr/<case>_0000.nii.gz`` (CT), ``_0001`` (PET), ``labelsTr/<case>.nii.gz``.
    layout "gc": ``<case>/images/ct/<uuid>.mha``, ``<case>/images/pet/<uuid>.mha`` (a Grand
    Challenge input folder) and ``<case>/label/<uuid>.mha``.
    """
    out_dir = Path(out_dir)
    if layout == "nnunet":
        paths = training_paths(out_dir, study.case_id)
    elif layout == "gc":
        paths = gc_paths(out_dir / study.case_id, case_uuid(study.case_id))
    else:
        raise ValueError(f"layout must be 'nnunet' or 'gc', got {layout!r}")
    for image, path in zip((study.ct, study.pet, study.label), paths):
        write_image(image, path)
    return list(paths)


def make_cohort(
    out_dir: str | Path, *, n: int, seed: int, tracer: str, layout: str = "nnunet", **study_kwargs
) -> list[Study]:
    """Write ``n`` studies (indices 0..n-1) and return them."""
    studies = [make_study(tracer=tracer, seed=seed, index=i, **study_kwargs) for i in range(n)]
    for study in studies:
        write_study(study, out_dir, layout=layout)
    return studies
