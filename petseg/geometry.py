"""Grids and the one conversion between SimpleITK images and MONAI-ordered arrays.

SimpleITK indexes voxel arrays (z, y, x); MONAI and the network use (x, y, z). Every
conversion between the two goes through :func:`image_to_array` / :func:`array_to_image`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    """Geometry of a 3D image: size (x, y, z), spacing, origin and direction (row-major 3x3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Grid:
        return cls(
            tuple(int(s) for s in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    def stamp(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (same size) exactly this geometry."""
        if tuple(image.GetSize()) != self.size:
            raise ValueError(f"image size {image.GetSize()} does not match grid size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def resample(self, image: sitk.Image, *, interpolator: int, default: float = 0.0) -> sitk.Image:
        """``image`` resampled onto this grid (physical space, identity transform)."""
        f = sitk.ResampleImageFilter()
        f.SetSize(self.size)
        f.SetOutputSpacing(self.spacing)
        f.SetOutputOrigin(self.origin)
        f.SetOutputDirection(self.direction)
        f.SetInterpolator(interpolator)
        f.SetDefaultPixelValue(default)
        f.SetOutputPixelType(image.GetPixelID())
        return f.Execute(image)

    def with_spacing(self, spacing: tuple[float, float, float]) -> Grid:
        """A grid with ``spacing``, the same direction and field-of-view centre, covering the same extent."""
        size_in = np.asarray(self.size, dtype=float)
        sp_in = np.asarray(self.spacing)
        sp_out = np.asarray(spacing, dtype=float)
        size_out = np.maximum(1, np.round(size_in * sp_in / sp_out)).astype(int)
        rot = np.asarray(self.direction).reshape(3, 3)
        centre = np.asarray(self.origin) + rot @ ((size_in - 1) * sp_in / 2)
        origin = centre - rot @ ((size_out - 1) * sp_out / 2)
        return Grid(
            tuple(int(s) for s in size_out), tuple(float(s) for s in sp_out), tuple(origin.tolist()), self.direction
        )

    def to_physical(self, index: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (..., 3) in (x, y, z) order -> physical points (..., 3), mm."""
        rot = np.asarray(self.direction).reshape(3, 3)
        return (np.asarray(index, float) * np.asarray(self.spacing)) @ rot.T + np.asarray(self.origin)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Physical points (..., 3), mm -> continuous voxel indices (..., 3) in (x, y, z) order."""
        rot = np.asarray(self.direction).reshape(3, 3)
        return ((np.asarray(points, float) - np.asarray(self.origin)) @ rot) / np.asarray(self.spacing)

    def contains(self, index: np.ndarray) -> bool:
        """Is the continuous index inside the image (within half a voxel of the outer centres)?"""
        index = np.asarray(index, float)
        return bool(np.all(index >= -0.5) and np.all(index <= np.asarray(self.size) - 0.5))

    @property
    def orientation(self) -> str:
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    def reoriented(self, code: str) -> Reorientation:
        """What ``sitk.DICOMOrient(image, code)`` does to an image on this grid, without the
        image: the axis permutation and flips (exact, no interpolation) and the new grid."""
        pairs = ("LR", "PA", "SI")  # one pair per physical axis: the letter says where an index axis points
        own = self.orientation
        axes, flips = [], []
        for letter in code:
            pair = next(p for p in pairs if letter in p)
            axis = next(i for i, c in enumerate(own) if c in pair)  # ITK's closest letter, ties resolved by ITK
            axes.append(axis)
            flips.append(own[axis] != letter)
        rot = np.asarray(self.direction).reshape(3, 3)
        corner = [self.size[a] - 1 if f else 0 for a, f in zip(axes, flips)]
        start = np.zeros(3)
        start[axes] = corner
        columns = [rot[:, a] * (-1.0 if f else 1.0) for a, f in zip(axes, flips)]
        grid = Grid(
            tuple(self.size[a] for a in axes),
            tuple(self.spacing[a] for a in axes),
            tuple(float(v) for v in self.to_physical(start)),
            tuple(float(v) for v in np.stack(columns, axis=1).ravel()),
        )
        return Reorientation(tuple(axes), tuple(flips), grid)


@dataclass(frozen=True)
class Reorientation:
    """Axis ``k`` of the reoriented grid is axis ``axes[k]`` of the source, reversed where
    ``flips[k]``; ``grid`` is the reoriented grid (as ``sitk.DICOMOrient`` makes it)."""

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    grid: Grid


def same_grid(a: sitk.Image, b: sitk.Image, *, tol: float = 1e-4) -> bool:
    """True when both images share size, spacing, origin and direction (within ``tol``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol)
    )


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (min, max) of the image's voxel extent (edges, not centres)."""
    size = np.asarray(image.GetSize())
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    corners = corners * size - 0.5
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners])
    return points.min(axis=0), points.max(axis=0)


def image_to_array(image: sitk.Image) -> np.ndarray:
    """SimpleITK image -> array indexed (x, y, z) (vector images: (C, x, y, z))."""
    array = sitk.GetArrayFromImage(image)
    axes = (3, 2, 1, 0) if image.GetNumberOfComponentsPerPixel() > 1 else (2, 1, 0)
    return np.ascontiguousarray(array.transpose(axes))


def array_to_image(array: np.ndarray, grid: Grid) -> sitk.Image:
    """Array indexed (x, y, z) -> SimpleITK image on ``grid``."""
    return grid.stamp(sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0))))
