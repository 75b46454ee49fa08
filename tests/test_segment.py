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
    assert resolve_device("cuda").type == "cpu"
    assert "CUDA is not available" in caplog.text
    with pytest.raises(ValueError, match="'tpu'"):
        resolve_device("tpu")
