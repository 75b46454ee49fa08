"""Resampling between grids with torch, on the study's device: the same geometry as
:meth:`petseg.geometry.Grid.resample` (SimpleITK, identity transform in physical space).

A target voxel's centre is mapped to the source's continuous index through both grids'
affines (index -> physical -> index); linear interpolation is trilinear on that index with
the edge voxels repeated for points in the outer half-voxel (as ITK's linear interpolator),
nearest takes the voxel of the index rounded half up (ITK's rounding), and points outside
ITK's half-open buffer [-0.5, n - 0.5) get ``default``. Values are interpolated in float64
and cast back, as ITK does: a CT value exactly on the body threshold stays on its side. Arrays are (C, Z, Y, X) or (Z, Y, X), SimpleITK's
order.

Two paths, the same result: where the map between the grids is a scaling and shift per
axis (same direction, which is every resampling to the network spacing and back, and a CT
and PET with the same direction), the interpolation is done axis by axis (trilinear is the
product of three linear weights), a few passes over the volume; otherwise the target is
processed in slabs of axial slices with eight gathers per voxel, so a whole-body grid never
needs its full coordinate array at once.
"""

from __future__ import annotations

import numpy as np
import torch

from petseg.geometry import Grid

SLAB_VOXELS = 1 << 22  # target voxels per slab (a 16 M-point coordinate array in float32)
SEPARABLE_TOLERANCE = 1e-9  # largest off-diagonal term of the index map taken as zero


def index_map(source: Grid, target: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(A, b) with source continuous index (x, y, z) = A @ target index + b."""

    def affine(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(grid.direction, float).reshape(3, 3) @ np.diag(grid.spacing), np.asarray(grid.origin, float)

    m_s, o_s = affine(source)
    m_t, o_t = affine(target)
    inverse = np.linalg.inv(m_s)
    return inverse @ m_t, inverse @ (o_t - o_s)


def resample(
    values: torch.Tensor, source: Grid, target: Grid, *, mode: str = "linear", default: float = 0.0
) -> torch.Tensor:
    """``values`` on ``source`` (C, Z, Y, X) or (Z, Y, X) resampled onto ``target``."""
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode {mode!r}: expected 'linear' or 'nearest'")
    single = values.ndim == 3
    data = values[None] if single else values
    if tuple(data.shape[1:]) != tuple(source.size[::-1]):
        raise ValueError(f"values of shape {tuple(values.shape)} do not match the source grid {source.size}")
    a_np, b_np = index_map(source, target)
    if np.abs(a_np - np.diag(np.diag(a_np))).max() * max(target.size) < SEPARABLE_TOLERANCE:
        out = _separable(data, np.diag(a_np), b_np, target.size, mode=mode, default=default).to(data.dtype)
        return out[0] if single else out
    a, b = (torch.as_tensor(m, dtype=torch.float64, device=data.device) for m in (a_np, b_np))
    size = torch.as_tensor(source.size, dtype=torch.float64, device=data.device)
    nx, ny, nz = target.size
    slab = max(1, SLAB_VOXELS // (nx * ny))
    out = torch.empty((data.shape[0], nz, ny, nx), dtype=data.dtype, device=data.device)
    yy, xx = torch.meshgrid(
        torch.arange(ny, dtype=torch.float64, device=data.device),
        torch.arange(nx, dtype=torch.float64, device=data.device),
        indexing="ij",
    )
    for z0 in range(0, nz, slab):
        zs = torch.arange(z0, min(nz, z0 + slab), dtype=torch.float64, device=data.device)
        index = torch.stack(
            [xx.expand(len(zs), ny, nx), yy.expand(len(zs), ny, nx), zs[:, None, None].expand(len(zs), ny, nx)], -1
        )
        at = index @ a.T + b  # (z, y, x, 3): source (x, y, z) continuous index
        inside = ((at >= -0.5) & (at < size - 0.5)).all(-1)  # ITK's IsInsideBuffer: half-open
        sampled = _nearest(data, at) if mode == "nearest" else _linear(data, at)
        out[:, z0 : z0 + len(zs)] = torch.where(inside, sampled, torch.as_tensor(default, dtype=data.dtype))
    return out[0] if single else out


def _separable(
    data: torch.Tensor, scale: np.ndarray, shift: np.ndarray, size: tuple, *, mode: str, default: float
) -> torch.Tensor:
    """Axis by axis: source index = scale * target index + shift on each of x, y, z."""
    inside = []
    for axis in range(3):  # x, y, z: tensor dimensions 3, 2, 1 of (C, Z, Y, X)
        dim, n_in = 3 - axis, data.shape[3 - axis]
        at = torch.arange(size[axis], dtype=torch.float64, device=data.device) * float(scale[axis]) + float(shift[axis])
        inside.append((at >= -0.5) & (at < n_in - 0.5))  # ITK's IsInsideBuffer: half-open
        if mode == "nearest":
            data = data.index_select(dim, torch.floor(at + 0.5).long().clamp(0, n_in - 1))
            continue
        at = at.clamp(0.0, n_in - 1)
        low = torch.floor(at).long()
        high = torch.clamp(low + 1, max=n_in - 1)
        shape = [1, 1, 1, 1]
        shape[dim] = -1
        w = (at - low).reshape(shape)
        data = data.double()  # in double, as ITK's interpolator: x, then y, then z (a no-op after x)
        below = data.index_select(dim, low)
        data = data.index_select(dim, high).sub_(below).mul_(w).add_(below)  # below + (above - below) * w
    keep = inside[2][:, None, None] & inside[1][None, :, None] & inside[0][None, None, :]
    if bool(keep.all()):
        return data
    return torch.where(keep, data, torch.as_tensor(default, dtype=data.dtype, device=data.device))


def reorient(values: torch.Tensor, axes: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> torch.Tensor:
    """(C, Z, Y, X) values taken through :meth:`petseg.geometry.Grid.reoriented`'s
    permutation and flips: a view, no interpolation."""
    out = values.permute(0, *(3 - axes[k] for k in (2, 1, 0)))
    flipped = [3 - k for k in range(3) if flips[k]]
    return out.flip(flipped) if flipped else out


def unorient(values: torch.Tensor, axes: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> torch.Tensor:
    """The inverse of :func:`reorient`: (C, Z, Y, X) values on the reoriented grid back on the source's axes."""
    flipped = [3 - k for k in range(3) if flips[k]]
    values = values.flip(flipped) if flipped else values
    inverse = [0, 0, 0]
    for k, a in enumerate(axes):
        inverse[a] = k
    return values.permute(0, *(3 - inverse[a] for a in (2, 1, 0)))


def _nearest(data: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    size = torch.as_tensor(data.shape[1:][::-1], device=data.device)  # (x, y, z)
    index = torch.floor(at + 0.5).long()  # ITK rounds half up
    index = torch.minimum(torch.clamp(index, min=0), size - 1)
    return data[:, index[..., 2], index[..., 1], index[..., 0]]


def _linear(data: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    size = torch.as_tensor(data.shape[1:][::-1], device=data.device)
    at = torch.minimum(torch.clamp(at, min=0.0), (size - 1).to(at.dtype))  # the outer half-voxel: the edge
    low = torch.floor(at).long()
    high = torch.minimum(low + 1, size - 1)
    w = at - low  # float64: the weighted sum in double, as ITK's
    out = 0
    for cx in (0, 1):
        ix = high[..., 0] if cx else low[..., 0]
        wx = w[..., 0] if cx else 1 - w[..., 0]
        for cy in (0, 1):
            iy = high[..., 1] if cy else low[..., 1]
            wy = w[..., 1] if cy else 1 - w[..., 1]
            for cz in (0, 1):
                iz = high[..., 2] if cz else low[..., 2]
                wz = w[..., 2] if cz else 1 - w[..., 2]
                out = out + data[:, iz, iy, ix].double() * (wx * wy * wz)
    return out
