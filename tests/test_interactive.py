"""Interactive evaluation (autoPET IV): simulated clicks, per-step measures, areas under the curves."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from petseg.cli import main
from petseg.clicks import next_click, region_centre
from petseg.geometry import Grid
from petseg.interactive import area, interactive_case, summarize_curves
from petseg.predictor import Predictor

from conftest import DIRECTIONS, SMALL, blob_study

GRID = Grid((20, 16, 12), (3.1, 2.4, 4.3), (-37.5, 120.0, -400.2), tuple(DIRECTIONS["oblique"].ravel()))


def test_the_next_click_goes_to_the_centre_of_the_largest_error_region():
    gt = np.zeros((12, 16, 20), bool)  # (z, y, x)
    pred = np.zeros_like(gt)
    gt[2:7, 3:8, 4:9] = True  # missed: 125 voxels, centre (4, 5, 6)
    pred[8:10, 10:12, 14:16] = True  # false: 8 voxels
    kind, point = next_click(gt, pred, grid=GRID)
    assert kind == "tumor"
    x, y, z = np.round(GRID.to_index(point)).astype(int)
    assert gt[z, y, x] and (y, x) == (5, 6)  # the centre across the finely spaced axes
    np.testing.assert_allclose(GRID.to_index(point), np.round(GRID.to_index(point)), atol=1e-9)
    pred[0:12, 12:16, 0:20] = True  # now a large false region
    assert next_click(gt, pred, grid=GRID)[0] == "background"
    assert next_click(gt, gt, grid=GRID) is None


@pytest.mark.parametrize("face", ["low", "high"])
def test_a_region_cut_by_the_array_face_gets_its_click_inside_not_on_the_face(face):
    gt = np.zeros((12, 16, 20), bool)  # (z, y, x); the region spans z 0..4 or 7..11, cut by the face
    gt[0:5, 3:12, 4:15] = True
    if face == "high":
        gt = gt[::-1].copy()
    kind, point = next_click(gt, np.zeros_like(gt), grid=GRID)
    z = round(float(GRID.to_index(point)[2]))
    assert kind == "tumor" and z == (2 if face == "low" else 9)
    # the same rule for the training clicks (x, y, z arrays, spacing per axis)
    np.testing.assert_array_equal(region_centre(np.ones((5, 5, 5), bool), spacing=(1.0, 1.0, 1.0)), [2, 2, 2])


def test_area_is_the_trapezoidal_rule_over_click_counts():
    assert area(np.ones(11)) == pytest.approx(10.0)
    assert area(np.array([0.0, 1.0, 1.0])) == pytest.approx(1.5)
    assert np.isnan(area(np.array([np.nan, 1.0])))


class ClickFollower(torch.nn.Module):
    """A 'click-aware network': lesion (PET > 2.5) only near a tumour click, never near a background click."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pet, tumour, background = x[:, 1:2], x[:, 2:3], x[:, 3:4]
        foreground = torch.where((tumour > 0.05) & (background < 0.05), pet - 2.5, torch.full_like(pet, -5.0))
        return torch.cat([-foreground, foreground], dim=1)


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_clicks_placed_from_the_errors_find_every_lesion_at_its_world_position(tmp_path, direction):
    ct, pet = blob_study(direction=DIRECTIONS[direction], radius=9.0)
    gt = sitk.Cast(pet > 2.5, sitk.sitkUInt8)
    for name, image in (("ct", ct), ("pet", pet), ("gt", gt)):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    settings = SMALL.with_overrides(click_sigma_mm=20.0, fold_batchnorm=False, channels_last=False)
    predictor = Predictor([ClickFollower()], settings=settings)
    curve = interactive_case(
        predictor, case="c", ct=tmp_path / "ct.nii.gz", pet=tmp_path / "pet.nii.gz", gt=tmp_path / "gt.nii.gz", clicks=4
    )
    dsc = [row["dsc"] for row in curve.rows]
    assert dsc[0] == 0.0 and dsc[-1] > 0.9  # nothing without clicks; both blobs after two
    assert all(b >= a - 1e-9 for a, b in zip(dsc, dsc[1:]))
    first = curve.rows[1]
    assert first["click"] == "tumor" and first["tumor_clicks"] == 1
    world = np.array([first["click_x_mm"], first["click_y_mm"], first["click_z_mm"]])
    lesion = sitk.GetArrayFromImage(gt) > 0
    x, y, z = np.round(Grid.of(pet).to_index(world)).astype(int)
    assert lesion[z, y, x]  # the click lies in a lesion, wherever the grid's axes point
    assert curve.rows[-1]["clicks"] == 4 and len(curve.rows) == 5
    summary = summarize_curves([curve])
    assert summary["dsc_final"] == pytest.approx(dsc[-1]) and summary["dsc_auc"] == pytest.approx(area(np.array(dsc)))


def test_evaluate_interactive_cli_writes_curves_and_warns_for_a_ct_pet_model(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "gt").mkdir()
    for name in ("a", "b"):
        ct, pet = blob_study()
        sitk.WriteImage(ct, str(tmp_path / "in" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(pet, str(tmp_path / "in" / f"{name}_0001.nii.gz"))
        sitk.WriteImage(sitk.Cast(pet > 3.0, sitk.sitkUInt8), str(tmp_path / "gt" / f"{name}.nii.gz"))
    args = [
        "evaluate-interactive",
        "-i",
        str(tmp_path / "in"),
        "--gt",
        str(tmp_path / "gt"),
        "-o",
        str(tmp_path / "out"),
    ]
    assert main([*args, "--model-dir", str(tiny_model_dir), "--device", "cpu", "--num-clicks", "3"]) == 0
    captured = capsys.readouterr()
    assert "takes no clicks" in captured.err
    with (tmp_path / "out" / "interactive.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case"], r["clicks"]) for r in rows] == [(c, str(k)) for c in ("a", "b") for k in range(4)]
    assert len({r["dsc"] for r in rows if r["case"] == "a"}) == 1  # a CT/PET model: the same result every step
    assert {(r["tumor_clicks"], r["background_clicks"], r["click"]) for r in rows} == {("0", "0", "")}  # and no clicks
    assert (tmp_path / "out" / "interactive.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cases: DSC" in captured.out


@pytest.mark.parametrize("count", ["11", "-1", "two"])
def test_evaluate_interactive_refuses_a_click_count_outside_0_to_10_in_one_line(count, tmp_path, capsys):
    args = ["evaluate-interactive", "-i", str(tmp_path), "--gt", str(tmp_path), "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--num-clicks", count])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-clicks" in err[0] and count in err[0]
    assert not (tmp_path / "out").exists()


def test_evaluate_interactive_points_the_old_count_option_to_its_new_name(tmp_path, capsys):
    args = ["evaluate-interactive", "-i", str(tmp_path), "--gt", str(tmp_path), "-o", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--clicks", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-clicks 3" in err[0]


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_a_background_click_on_a_predicted_lesion_removes_it_unless_a_tumour_click_confirms_it(direction):
    import cc3d

    from petseg.clicks import Clicks

    from conftest import Oracle

    ct, pet = blob_study(direction=DIRECTIONS[direction])  # spheres at the PET's centre
    values = sitk.GetArrayFromImage(pet)
    values[2:7, 2:7, 2:7] = 6.0  # and a lesion in a corner, apart from them
    pet = _like(values, pet)
    centre = pet.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in pet.GetSize()])
    settings = SMALL.with_overrides(click_sigma_mm=10.0, fold_batchnorm=False, channels_last=False)
    predictor = Predictor([Oracle()], settings=settings)  # click-blind: PET > 2.5
    auto = sitk.GetArrayFromImage(predictor.predict_images(ct, pet, ct_source="ct", pet_source="pet").mask)
    lesions, count = cc3d.connected_components(auto, connectivity=18, return_N=True)
    assert count >= 2
    index = np.rint(pet.TransformPhysicalPointToContinuousIndex(centre)).astype(int)
    clicked_lesion = lesions[index[2], index[1], index[0]]
    assert clicked_lesion > 0

    def predict(clicks, **overrides):
        p = Predictor([Oracle()], settings=settings.with_overrides(**overrides))
        out = p.predict_images(ct, pet, ct_source="ct", pet_source="pet", clicks=clicks)
        return sitk.GetArrayFromImage(out.mask), sitk.GetArrayFromImage(out.probability)

    mask, probability = predict(Clicks(background=(centre,)))
    np.testing.assert_array_equal(mask, auto * (lesions != clicked_lesion))  # that lesion gone, the other kept
    assert not probability[lesions == clicked_lesion].any()
    np.testing.assert_array_equal(mask, probability > settings.threshold)  # the mask is still the probability > T
    # a tumour click on the same lesion contradicts: the network's answer stands
    np.testing.assert_array_equal(predict(Clicks(tumor=(centre,), background=(centre,)))[0], auto)
    np.testing.assert_array_equal(predict(Clicks(background=(centre,)), click_removal=False)[0], auto)
    outside = pet.TransformIndexToPhysicalPoint([10, 10, 1])  # on no lesion
    np.testing.assert_array_equal(predict(Clicks(background=(outside,)))[0], auto)


def _like(values: np.ndarray, image: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out


@pytest.mark.parametrize("command", ["predict", "evaluate-interactive"])
def test_no_click_removal_reaches_the_settings(command, tiny_model_dir):
    from petseg.cli import build_parser
    from petseg.cli.common import make_predictor as _make_predictor

    extra = ["--gt", "g"] if command == "evaluate-interactive" else []
    base = [command, "-i", "x", "-o", "y", *extra, "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    assert _make_predictor(build_parser().parse_args(base)).settings.click_removal is True
    assert _make_predictor(build_parser().parse_args([*base, "--no-click-removal"])).settings.click_removal is False


def test_a_background_click_in_the_outer_half_voxel_still_finds_its_lesion():
    from petseg.clicks import Clicks
    from petseg.stages import remove_clicked_lesions

    from conftest import make_image

    values = np.zeros((4, 5, 6), np.float32)  # (x, y, z) here; a lesion on the last x planes
    values[2:] = 0.9
    probability = make_image(values, spacing=(3.1, 2.4, 4.3), origin=(5.0, -7.0, 30.0), direction=DIRECTIONS["oblique"])
    edge = probability.TransformContinuousIndexToPhysicalPoint((3.49, 1.0, 2.0))  # in the outer half-voxel
    kept = remove_clicked_lesions(probability, Clicks(background=(edge,)), threshold=0.5)
    assert not sitk.GetArrayFromImage(kept).any()
    beyond = probability.TransformContinuousIndexToPhysicalPoint((4.6, 1.0, 2.0))  # outside: nothing to remove
    assert sitk.GetArrayFromImage(
        remove_clicked_lesions(probability, Clicks(background=(beyond,)), threshold=0.5)
    ).any()
