"""Simulated scribbles (autoPET V's protocol): each style on one axial slice inside the error
region the protocol chooses."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from petseg.clicks import STAMP_LIMIT, Clicks, _stamp, click_maps, parse_clicks
from petseg.geometry import Grid
from petseg.scribbles import CHOICES, STYLES, simulate_scribble

from conftest import DIRECTIONS, make_image


def _bar():
    """A ground-truth bar of 3 x 5 x 30 voxels (z, y, x), nothing predicted."""
    gt = np.zeros((8, 12, 40), bool)
    gt[2:5, 4:9, 5:35] = True
    return gt, np.zeros_like(gt)


@pytest.mark.parametrize("style", STYLES)
def test_each_style_scribbles_inside_the_missed_region_on_one_slice(style):
    gt, pred = _bar()
    gt[2, 4:9, 5:35] = False  # the middle slice (z = 3) holds as many voxels as z = 4: the first wins
    scribble = simulate_scribble(gt, pred, style=style, rng=np.random.default_rng(0))
    assert scribble.kind == "tumor" and scribble.style == style and scribble.z == 3
    x, y, z = scribble.points.T
    assert np.all(z == 3) and gt[z, y, x].all()
    assert len(np.unique(scribble.points, axis=0)) == len(scribble.points)


def test_the_centerline_runs_along_the_bar_trimmed_at_its_ends():
    gt, pred = _bar()
    scribble = simulate_scribble(gt, pred, style="centerline", rng=np.random.default_rng(0))
    x, y, _ = scribble.points.T
    assert np.all(y == 6)  # the middle row of rows 4..8
    assert 20 <= x.max() - x.min() + 1 <= 26  # 30 long, the skeleton shorter, 10 % off each end
    assert np.all(np.abs(np.diff(x)) == 1)  # a connected path in order


def test_the_boundary_walk_takes_a_fifth_of_the_inner_boundary():
    gt = np.zeros((5, 30, 30), bool)
    yy, xx = np.mgrid[:30, :30]
    gt[2] = (yy - 15) ** 2 + (xx - 15) ** 2 <= 100
    scribble = simulate_scribble(gt, np.zeros_like(gt), style="boundary", rng=np.random.default_rng(3))
    inner = gt[2] & ~ndimage.binary_erosion(gt[2], np.ones((3, 3), bool))
    x, y, _ = scribble.points.T
    assert inner[y, x].all()
    assert len(x) == round(0.2 * inner.sum())
    assert np.hypot(np.diff(x), np.diff(y)).max() <= 3  # a walk, not scattered pixels


def test_the_smaller_error_gets_the_scribble_and_agreement_gets_none():
    gt = np.zeros((6, 20, 20), bool)
    pred = np.zeros_like(gt)
    gt[1:4, 2:8, 2:8] = True  # missed: 108 voxels
    pred[2, 12:15, 12:15] = True  # false: 9 voxels
    scribble = simulate_scribble(gt, pred, style="random", rng=np.random.default_rng(1))
    assert scribble.kind == "background" and scribble.z == 2
    x, y, z = scribble.points.T
    assert (pred & ~gt)[z, y, x].all()
    assert simulate_scribble(gt, gt, style="random", rng=np.random.default_rng(1)) is None
    with pytest.raises(ValueError, match="scribble style 'zigzag'"):
        simulate_scribble(gt, pred, style="zigzag", rng=np.random.default_rng(1))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), style=st.sampled_from(CHOICES))
def test_random_errors_get_a_scribble_in_their_largest_component(seed, style):
    rng = np.random.default_rng(seed)
    gt = ndimage.binary_opening(rng.random((6, 16, 18)) < 0.5)
    pred = ndimage.binary_opening(rng.random((6, 16, 18)) < 0.5)
    scribble = simulate_scribble(gt, pred, style=style, rng=np.random.default_rng(seed))
    if scribble is None:
        assert np.array_equal(gt, pred)
        return
    error = (gt & ~pred) if scribble.kind == "tumor" else (pred & ~gt)
    other = (pred & ~gt) if scribble.kind == "tumor" else (gt & ~pred)
    assert error.sum() <= other.sum() or not other.any()
    labels = ndimage.label(error, structure=np.ones((3, 3, 3)))[0]
    x, y, z = scribble.points.T
    assert np.all(z == scribble.z) and len(x) >= 1
    hit = np.unique(labels[z, y, x])
    assert len(hit) == 1 and hit[0] > 0  # one component of the chosen error
    assert (labels == hit[0]).sum() == np.bincount(labels.ravel())[1:].max() == scribble.error_voxels
    assert scribble.style in STYLES


# the autoPET V organizers' example clicks file: two tumour scribbles and one background one
EXAMPLE = {
    "version": {"major": 1, "minor": 0},
    "type": "Multiple points",
    "points": [
        *({"point": p, "name": "tumor"} for p in (
            [163, 118, 123], [164, 113, 123], [164, 114, 123], [164, 115, 123], [164, 116, 123], [165, 111, 123],
            [165, 112, 123], [163, 123, 112], [174, 118, 112], [175, 117, 112], [164, 115, 115], [164, 116, 115],
            [164, 117, 115], [164, 118, 115], [165, 119, 115], [165, 120, 115], [165, 121, 115],
        )),
        *({"point": p, "name": "background"} for p in (
            [162, 116, 126], [163, 116, 126], [164, 117, 126], [165, 117, 126], [166, 118, 126],
        )),
    ],
}  # fmt: skip
AUTOPET_PET = Grid((200, 200, 326), (4.07, 4.07, 3.0), (-405.0, -405.0, -980.0), tuple(np.eye(3).ravel()))


def test_the_organizers_example_file_is_read_whole_without_the_click_cap(caplog):
    clicks = parse_clicks(EXAMPLE, grid=AUTOPET_PET, source="lesion-clicks.json", limit=None)
    assert (len(clicks.tumor), len(clicks.background)) == (17, 5)
    assert not caplog.records
    capped = parse_clicks(EXAMPLE, grid=AUTOPET_PET, source="lesion-clicks.json")  # autoPET IV: 10 per kind
    assert (len(capped.tumor), len(capped.background)) == (10, 5)
    assert "7 point(s) beyond the first 10" in caplog.text


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_a_scribble_map_from_one_distance_transform_equals_the_gaussians_of_its_points(direction):
    grid = Grid.of(
        make_image(
            np.zeros((40, 36, 30)), spacing=(2.0, 2.5, 3.0), origin=(-30, 50, -200), direction=DIRECTIONS[direction]
        )
    )
    line = np.stack(
        [np.arange(5, 5 + 2 * STAMP_LIMIT) % 40, np.full(2 * STAMP_LIMIT, 18), np.full(2 * STAMP_LIMIT, 15)], 1
    )
    points = tuple(map(tuple, grid.to_physical(line)))  # on voxel centres: the two encodings agree exactly
    scribble = click_maps(Clicks(tumor=points), grid, sigma_mm=6.0)
    stamped = np.zeros(grid.size, np.float32)
    for point in points:
        _stamp(stamped, grid, np.asarray(point), 6.0)
    assert len(points) > STAMP_LIMIT and scribble[1].max() == 0.0
    near = stamped >= np.exp(-4.5)  # within 3 sigma: the same Gaussian; beyond, the stamps' cube corners
    np.testing.assert_allclose(scribble[0][near], stamped[near], atol=1e-6)
    assert np.abs(scribble[0] - stamped)[~near].max() <= np.exp(-4.5)
    # off the voxel centres: within half a voxel's distance of the exact map
    shifted = tuple(map(tuple, grid.to_physical(line + 0.3)))
    exact = np.zeros(grid.size, np.float32)
    for point in shifted:
        _stamp(exact, grid, np.asarray(point), 6.0)
    assert np.abs(click_maps(Clicks(tumor=shifted), grid, sigma_mm=6.0)[0] - exact).max() < 0.25


def test_thousands_of_points_encode_in_one_pass():
    grid = Grid((96, 96, 96), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    rng = np.random.default_rng(0)
    points = tuple(map(tuple, grid.to_physical(rng.integers(20, 76, size=(3000, 3)))))
    maps = click_maps(Clicks(tumor=points, background=points[:40]), grid, sigma_mm=5.0)
    index = np.rint(grid.to_index(np.asarray(points))).astype(int)
    assert np.all(maps[0][tuple(index.T)] == 1.0) and maps[0][0, 0, 0] == 0.0
    assert maps[1].max() == 1.0


def _steps(points: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(points[:, :2], axis=0)).max(axis=1)  # Chebyshev steps between (x, y)


def test_a_region_at_the_array_edge_still_gets_its_centerline():
    gt = np.zeros((3, 6, 20), bool)
    gt[1, 0:6, 0:3] = True  # touches three faces of the slice
    scribble = simulate_scribble(gt, np.zeros_like(gt), style="centerline", rng=np.random.default_rng(0))
    x, y, z = scribble.points.T
    assert gt[z, y, x].all() and len(x) >= 3 and np.all(_steps(scribble.points) == 1)


@pytest.mark.parametrize("shape", ["L", "C", "ring", "line"])
def test_the_boundary_walk_is_contiguous_on_concave_shapes(shape):
    region = np.zeros((30, 30), bool)
    if shape == "L":
        region[2:28, 2:8] = region[22:28, 2:28] = True
    elif shape == "C":
        region[2:28, 2:8] = region[2:8, 2:26] = region[22:28, 2:26] = True
    elif shape == "ring":
        yy, xx = np.mgrid[:30, :30]
        region = ((yy - 15) ** 2 + (xx - 15) ** 2 <= 144) & ((yy - 15) ** 2 + (xx - 15) ** 2 >= 36)
    else:
        region[4, 1:19] = True
    gt = region[None]
    for seed in range(20):
        scribble = simulate_scribble(gt, np.zeros_like(gt), style="boundary", rng=np.random.default_rng(seed))
        x, y, _ = scribble.points.T
        assert region[y, x].all() and len(set(zip(x, y))) == len(x)
        assert np.all(_steps(scribble.points) == 1)  # each point next to the one before


def test_a_random_line_keeps_its_drawing_order():
    gt = np.zeros((1, 30, 30), bool)
    gt[0, 2:28, 2:28] = True
    scribble = simulate_scribble(gt, np.zeros_like(gt), style="random", rng=np.random.default_rng(4))
    assert len(scribble.points) > 3 and np.all(_steps(scribble.points) == 1)


def test_a_background_scribble_on_a_lesions_rim_leaves_the_lesion_but_removes_a_false_spot():
    import SimpleITK as sitk

    from petseg.stages import remove_clicked_lesions

    gt = np.zeros((10, 30, 30), bool)
    gt[3:7, 10:20, 10:20] = True
    pred = gt.copy()
    pred[3:7, 9:22, 10:20] = True  # over-segmented along y: a false rim on a true lesion
    pred[3:5, 25:28, 25:28] = True  # and a false spot
    grid = Grid((30, 30, 10), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    probability = sitk.GetImageFromArray(pred.astype(np.float32))
    probability.SetSpacing(grid.spacing)
    rim = simulate_scribble(
        gt,
        pred & ~np.pad(np.ones((2, 3, 3), bool), ((3, 5), (25, 2), (25, 2))),
        style="random",
        rng=np.random.default_rng(0),
    )
    assert rim.kind == "background"
    spot = np.argwhere(pred[3:5, 25:28, 25:28])[:, ::-1] + (25, 25, 3)
    clicks = Clicks(background=tuple(map(tuple, grid.to_physical(np.concatenate([rim.points, spot]).astype(float)))))
    kept = sitk.GetArrayFromImage(remove_clicked_lesions(probability, clicks, threshold=0.5, scribble_reach_mm=10.0))
    assert kept[gt].all() and not kept[3:5, 25:28, 25:28].any()  # the lesion stays, the spot goes
    erased = sitk.GetArrayFromImage(
        remove_clicked_lesions(probability, clicks, threshold=0.5)
    )  # clicks: every hit goes
    assert not erased.any()


def test_a_scribble_point_in_the_outer_half_voxel_still_counts():
    grid = Grid((20, 20, 20), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    index = np.array([[19.4, 10, 10]] + [[5 + i % 10, 5, 5] for i in range(STAMP_LIMIT)], float)
    maps = click_maps(Clicks(tumor=tuple(map(tuple, grid.to_physical(index)))), grid, sigma_mm=4.0)
    assert maps[0][19, 10, 10] == 1.0
