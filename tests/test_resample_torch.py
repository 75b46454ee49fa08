"""The torch resampler against SimpleITK's on the grids the geometry tests use."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from petseg.geometry import Grid
from petseg.resample_torch import index_map, resample

from conftest import DIRECTIONS, make_image, rotation

SOURCE = dict(spacing=(3.1, 2.4, 4.3), origin=(-37.5, 120.0, -400.2))


def _grids(direction: str):
    rng = np.random.default_rng(0)
    source = make_image(rng.random((23, 19, 17)).astype(np.float32) * 10, direction=DIRECTIONS[direction], **SOURCE)
    grid = Grid.of(source)
    targets = {
        "finer": grid.with_spacing((2.0, 2.0, 2.0)),  # the network grid of preprocessing
        "oblique": _around(grid, (30, 26, 21), (2.2, 1.9, 2.7), rotation(1, 0.2) @ DIRECTIONS["oblique"]),
        "shifted": Grid(grid.size, grid.spacing, tuple(np.asarray(grid.origin) + 7.3), grid.direction),
    }
    return source, targets


def _around(grid: Grid, size, spacing, direction) -> Grid:
    """A grid of its own size, spacing and direction centred 3 mm off ``grid``'s centre."""
    centre = grid.to_physical((np.asarray(grid.size) - 1) / 2.0) + 3.0
    origin = centre - np.asarray(direction) @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    return Grid(tuple(size), tuple(spacing), tuple(origin), tuple(np.asarray(direction).ravel()))


def _ties(source: Grid, target: Grid) -> np.ndarray:
    """(z, y, x) target voxels whose source index lies half-way between voxels on some axis:
    there either neighbour is right, and float rounding decides."""
    a, b = index_map(source, target)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in target.size], indexing="ij"), -1).astype(float)
    at = index @ a.T + b
    return (np.abs(at - np.floor(at) - 0.5) < 1e-6).any(-1).transpose(2, 1, 0)


@pytest.mark.parametrize("direction", ["identity", "flipped", "permuted", "oblique"])
@pytest.mark.parametrize("target", ["finer", "oblique", "shifted"])
def test_linear_and_nearest_match_simpleitk(direction, target):
    source, targets = _grids(direction)
    grid = targets[target]
    values = torch.from_numpy(sitk.GetArrayFromImage(source))
    for mode, interpolator in (("linear", sitk.sitkLinear), ("nearest", sitk.sitkNearestNeighbor)):
        ours = resample(values, Grid.of(source), grid, mode=mode, default=-1.0).numpy()
        theirs = sitk.GetArrayFromImage(grid.resample(source, interpolator=interpolator, default=-1.0))
        inside = (theirs != -1.0) & (ours != -1.0)
        assert (theirs == -1.0).mean() == pytest.approx((ours == -1.0).mean(), abs=0.002)  # the same field of view
        if mode == "nearest":
            clear = inside & ~_ties(Grid.of(source), grid)
            assert clear.sum() > 0.5 * inside.sum()
            np.testing.assert_array_equal(ours[clear], theirs[clear])
        else:
            np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-3)


def test_channels_and_the_identity_grid():
    source, _ = _grids("oblique")
    grid = Grid.of(source)
    values = torch.from_numpy(sitk.GetArrayFromImage(source))
    stacked = resample(torch.stack([values, 2 * values]), grid, grid)
    torch.testing.assert_close(stacked[0], values)
    torch.testing.assert_close(stacked[1], 2 * values)
    with pytest.raises(ValueError, match="do not match the source grid"):
        resample(values[:-1], grid, grid)


@pytest.mark.parametrize("target", ["finer", "oblique", "shifted"])
def test_nearest_is_exact_on_identity_directions(target):
    """Axis-aligned source: both compute the index without rounding error, ties included."""
    source, targets = _grids("identity")
    values = torch.from_numpy(sitk.GetArrayFromImage(source))
    ours = resample(values, Grid.of(source), targets[target], mode="nearest", default=-1.0).numpy()
    theirs = targets[target].resample(source, interpolator=sitk.sitkNearestNeighbor, default=-1.0)
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(theirs))
