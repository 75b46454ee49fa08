"""Lesion clicks: parsing, and the click maps' physical placement on the network grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.clicks import Clicks, check_clicks_file, click_maps, parse_clicks, read_clicks
from petseg.errors import InputError
from petseg.geometry import Grid

from conftest import DIRECTIONS, make_image

PET = Grid.of(
    make_image(
        np.zeros((30, 26, 20), np.float32),
        spacing=(3.1, 2.4, 4.3),
        origin=(-37.5, 120.0, -400.2),
        direction=DIRECTIONS["oblique"],
    )
)


def test_good_clicks_become_physical_points_of_the_pet_voxels():
    data = {"points": [{"point": [3, 4, 5], "name": "tumor"}, {"point": [10.5, 2, 7], "name": "background"}]}
    clicks = parse_clicks(data, grid=PET, source="c.json")
    image = sitk.Image(list(PET.size), sitk.sitkFloat32)
    PET.stamp(image)
    np.testing.assert_allclose(clicks.tumor[0], image.TransformContinuousIndexToPhysicalPoint((3, 4, 5)), atol=1e-9)
    np.testing.assert_allclose(
        clicks.background[0], image.TransformContinuousIndexToPhysicalPoint((10.5, 2, 7)), atol=1e-9
    )
    world = {"points": [{"point": list(clicks.tumor[0]), "name": "tumor"}]}
    assert parse_clicks(world, grid=PET, source="w.json", world=True).tumor == clicks.tumor


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([1, 2, 3], "expected {"),
        ({"points": "none"}, "expected {"),
        ({"points": [[1, 2, 3]]}, "points[0]: expected object"),
        ({"points": [{"point": [1, 2, 3], "name": "lesion"}]}, "points[0].name: value not allowed, got 'lesion'"),
        ({"points": [{"point": [1, 2], "name": "tumor"}]}, "points[0].point: expected array of length 3"),
        ({"points": [{"point": [1, "a", 2], "name": "tumor"}]}, "points[0].point[1]: expected float, got 'a'"),
        ({"points": [{"point": [1, float("nan"), 2], "name": "tumor"}]}, "point[1]: expected a finite number, got nan"),
        ({"points": [{"point": [1, True, 2], "name": "tumor"}]}, "points[0].point[1]: expected float, got True"),
        ({"points": [{"point": [1, [2], 3], "name": "tumor"}]}, "points[0].point[1]: expected float"),
        ({"points": [{"point": [1, 2, 10**400], "name": "tumor"}]}, "points[0].point[2]: number out of range"),
        ({"points": [{"point": [1, 2, 3]}]}, "points[0]: object missing required field name"),
    ],
)
def test_malformed_clicks_are_one_error_naming_the_file(data, problem):
    with pytest.raises(InputError, match="c.json") as err:
        parse_clicks(data, grid=PET, source="c.json")
    assert problem in str(err.value)


def test_points_outside_the_image_are_skipped_with_a_warning(caplog):
    data = {"points": [{"point": [30, 4, 5], "name": "tumor"}, {"point": [-1, 0, 0], "name": "background"}]}
    data["points"].append({"point": [29, 25, 19], "name": "tumor"})  # the last voxel is inside
    clicks = parse_clicks(data, grid=PET, source="c.json")
    assert len(clicks.tumor) == 1 and clicks.background == ()
    (warning,) = [r.getMessage() for r in caplog.records if "outside the PET" in r.getMessage()]
    assert "2 point(s)" in warning and "point 0 tumor [30, 4, 5]" in warning and "point 1 background" in warning


def test_a_clicks_file_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "lesion-clicks.json"
    path.write_text("{not json")
    with pytest.raises(InputError, match="cannot be parsed as JSON"):
        read_clicks(path, grid=PET)
    with pytest.raises(InputError, match="not found"):
        read_clicks(tmp_path / "missing.json", grid=PET)
    path.write_text('{"points": ' + "[" * 100_000 + "]" * 100_000 + "}")  # Python's JSON parser recurses
    with pytest.raises(InputError, match="nested too deeply"):
        read_clicks(path, grid=PET)
    path.write_text(json.dumps({"points": []}))
    assert len(read_clicks(path, grid=PET)) == 0


@pytest.mark.parametrize("network_kind", ["identity 2 mm", "RAS anisotropic"])
@pytest.mark.parametrize("direction", ["identity", "flipped", "oblique"])
def test_a_click_peaks_on_the_network_grid_at_the_same_world_point(direction, network_kind):
    """A click at PET voxel v lands where that voxel's world point is on another grid (the
    network grid is RAS: its x and y axes point against LPS's)."""
    pet = Grid.of(
        make_image(
            np.zeros((30, 26, 20), np.float32),
            spacing=(3.1, 2.4, 4.3),
            origin=(-37.5, 120.0, -400.2),
            direction=DIRECTIONS[direction],
        )
    )
    voxel = (12, 9, 7)
    clicks = parse_clicks({"points": [{"point": list(voxel), "name": "tumor"}]}, grid=pet, source="c.json")
    world = pet.to_physical(np.asarray(voxel, float))
    # a grid around the same field of view, other origin, spacing and orientation
    if network_kind == "identity 2 mm":
        spacing, axes = np.array([2.0, 2.0, 2.0]), np.eye(3)
    else:
        spacing, axes = np.array([1.7, 2.3, 1.9]), np.diag([-1.0, -1.0, 1.0])
    network = Grid(
        size=(60, 50, 60),
        spacing=tuple(spacing),
        origin=tuple(world - axes @ (spacing * np.array([25.5, 23.5, 31.5]))),
        direction=tuple(axes.ravel()),
    )
    maps = click_maps(clicks, network, sigma_mm=4.0)
    assert maps.shape == (2, 60, 50, 60) and maps[1].max() == 0.0
    peak = np.array(np.unravel_index(np.argmax(maps[0]), maps[0].shape), float)
    assert np.linalg.norm(network.to_physical(peak) - world) <= np.linalg.norm(spacing) / 2 + 1e-6  # half a voxel
    # the Gaussian: value at a voxel = exp(-d^2 / 2 sigma^2) of its distance in mm
    probe = peak + np.array([2.0, 0.0, 1.0])
    d2 = np.sum((network.to_physical(probe) - world) ** 2)
    assert maps[0][tuple(probe.astype(int))] == pytest.approx(np.exp(-d2 / 32.0), abs=1e-6)


def test_clicks_in_code_are_checked_and_far_ones_leave_the_maps_empty_with_a_warning(caplog):
    with pytest.raises(ValueError, match=r"Clicks.tumor: \(1.0, nan, 2.0\)"):
        Clicks(tumor=((1.0, float("nan"), 2.0),))
    with pytest.raises(ValueError, match="three finite numbers"):
        Clicks(background=((1.0, 2.0),))
    assert Clicks(tumor=(np.array([1, 2, 3]),)).tumor == ((1.0, 2.0, 3.0),)  # numpy points become floats
    network = Grid((10, 10, 10), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    far = Clicks(tumor=((1e30, 1.0, 1.0),), background=((-50.0, 5.0, 5.0),))  # outside the grid (e.g. the body crop)
    with caplog.at_level("WARNING"):
        assert not click_maps(far, network, sigma_mm=3.0).any()
    dropped = [r.getMessage() for r in caplog.records if "outside the body crop" in r.getMessage()]
    assert len(dropped) == 2 and dropped[1].startswith("background click at [-50.0, 5.0, 5.0] mm")
    caplog.clear()
    near = Clicks(background=((-4.0, 5.0, 5.0),))  # outside, but within 3 sigma of the first voxels
    assert click_maps(near, network, sigma_mm=3.0)[1, 0, 2, 2] == pytest.approx(np.exp(-(16.0 + 1.0 + 1.0) / 18.0))
    assert not caplog.records  # a click that reaches the grid is not reported


def test_check_clicks_file_needs_no_image(tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"points": [{"point": [1e6, 2, 3], "name": "tumor"}]}))  # placed later, on the PET
    assert check_clicks_file(good) == 1
    with pytest.raises(InputError, match="is a folder"):
        check_clicks_file(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"points": [{"point": [1, 2, 3], "name": "tumour"}]}))
    with pytest.raises(InputError, match="bad.json: points\\[0\\].name: value not allowed, got 'tumour'"):
        check_clicks_file(bad)


def test_no_clicks_give_empty_maps_and_kinds_go_to_their_channel():
    network = Grid((10, 10, 10), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    assert not click_maps(Clicks(), network, sigma_mm=3.0).any()
    maps = click_maps(Clicks(background=((8.0, 8.0, 8.0),)), network, sigma_mm=3.0)
    assert maps[0].max() == 0.0 and maps[1].max() == pytest.approx(1.0)
