"""petseg.segment end to end: oracle round trips on awkward grids, model folders, devices."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import petseg
from petseg.geometry import Grid

from conftest import DIRECTIONS, SMALL, Oracle, blob_study, dice


@pytest.mark.parametrize("name", DIRECTIONS)
@pytest.mark.parametrize(
    "spacing, origin",
    [
        ((3.1, 2.4, 4.3), (-37.5, 120.0, -400.2)),
        ((4.07, 4.07, 2.0), (201.3, -96.0, 15.0)),
        ((1.6, 2.2, 1.3), (0.5, 0.5, 0.5)),
    ],
)
def test_oracle_round_trip_on_the_native_grid(name, spacing, origin):
    ct, pet = blob_study(spacing=spacing, origin=origin, direction=DIRECTIONS[name], radius=15.0)
    mask = petseg.segment(ct, pet, networks=[Oracle()], device="cpu", settings=SMALL)
    assert Grid.of(mask) == Grid.of(pet)
    assert mask.GetPixelID() == sitk.sitkUInt8
    got = sitk.GetArrayFromImage(mask)
    assert set(np.unique(got)) <= {0, 1}
    assert dice(got, sitk.GetArrayFromImage(pet) > 2.5) >= 0.95


def test_oracle_with_ct_on_the_same_grid_is_exact():
    ct, pet = blob_study(spacing=(2.0, 2.0, 2.0), direction=DIRECTIONS["flipped"], ct_grid="same")
    mask = petseg.segment(ct, pet, networks=[Oracle()], device="cpu", settings=SMALL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(pet) > 2.5)


class ConstantLogit(torch.nn.Module):
    """Background logit 0, foreground logit ``fg`` everywhere."""

    def __init__(self, fg: float) -> None:
        super().__init__()
        self.fg = fg

    def forward(self, x):
        zeros = torch.zeros_like(x[:, :1])
        return torch.cat([zeros, zeros + self.fg], dim=1)


@pytest.mark.parametrize(
    "fold_logits, lesion",
    [
        ((3.0, -1.0, -1.0), False),  # p = (0.95 + 0.27 + 0.27) / 3 = 0.497; mean logit +0.33 would say lesion
        ((1.2, 1.2, -6.0), True),  # p = (0.77 + 0.77 + 0.00) / 3 = 0.513; mean logit -1.2 would say background
    ],
)
def test_folds_are_averaged_as_probabilities_not_logits(fold_logits, lesion):
    ct, pet = blob_study()
    networks = [ConstantLogit(v) for v in fold_logits]
    mask = sitk.GetArrayFromImage(petseg.segment(ct, pet, networks=networks, device="cpu", settings=SMALL))
    assert mask.any() == lesion


def test_segment_reads_files_and_uses_a_model_folder(tiny_model_dir, tmp_path):
    ct, pet = blob_study()
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(pet, str(tmp_path / "pet.mha"))
    mask = petseg.segment(tmp_path / "ct.nii.gz", tmp_path / "pet.mha", model_dir=tiny_model_dir, device="cpu")
    assert Grid.of(mask) == Grid.of(pet)
    assert mask.GetPixelID() == sitk.sitkUInt8


def test_a_network_with_the_wrong_output_is_a_clear_error():
    class OneChannel(torch.nn.Module):
        def forward(self, x):
            return x[:, :1]

    ct, pet = blob_study()
    with pytest.raises(petseg.ModelError, match="expected \\(B, 2"):
        petseg.segment(ct, pet, networks=[OneChannel()], device="cpu", settings=SMALL)


def test_cuda_request_without_cuda_falls_back_to_cpu(caplog):
    from petseg.inference import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert resolve_device("auto").type == "cpu"
    assert caplog.text == ""  # auto on a machine without CUDA is the CPU, as asked
    assert resolve_device("cuda").type == "cpu"
    assert "CUDA is not available" in caplog.text
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")


class ClickOracle(torch.nn.Module):
    """Foreground wherever the tumour-click map exceeds 0.5: a ball around each tumour click."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tumor = x[:, 2:3]
        return torch.cat([0.5 - tumor, tumor - 0.5], dim=1)


@pytest.mark.parametrize("name", ["flipped", "oblique"])
def test_a_click_at_a_pet_voxel_segments_around_that_voxel_on_the_native_grid(name, tmp_path):
    from petseg.clicks import Clicks

    ct, pet = blob_study(spacing=(3.1, 2.4, 4.3), origin=(-37.5, 120.0, -400.2), direction=DIRECTIONS[name])
    settings = SMALL.with_overrides(click_sigma_mm=8.0)
    voxel = (14, 20, 9)
    world = np.array(pet.TransformIndexToPhysicalPoint(voxel))
    file = tmp_path / "clicks.json"
    file.write_text('{"points": [{"point": [14, 20, 9], "name": "tumor"}]}')
    masks = [
        petseg.segment(ct, pet, networks=[ClickOracle()], device="cpu", settings=settings, clicks=clicks)
        for clicks in (file, Clicks(tumor=(tuple(world),)), None)
    ]
    from_file, from_points, without = (sitk.GetArrayFromImage(m).transpose(2, 1, 0) for m in masks)  # x, y, z
    assert not without.any()  # no click, empty click map: nothing
    assert np.array_equal(from_file, from_points)
    inside = np.argwhere(from_file > 0)
    assert len(inside) > 0
    points = np.array([pet.TransformIndexToPhysicalPoint([int(i) for i in v]) for v in inside])
    # the ball exp(-d^2 / 2 sigma^2) > 0.5: d < 9.4 mm, centred on the clicked voxel's world point
    assert np.linalg.norm(points.mean(axis=0) - world) < 2.0
    assert np.linalg.norm(points - world, axis=1).max() < 8.0 * np.sqrt(2 * np.log(2)) + 4.3
    assert from_file[voxel]
