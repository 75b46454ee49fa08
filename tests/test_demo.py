"""The shipped demo weights on the shipped demo study."""

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, dice
from petseg.predictor import Predictor

CASE = "cf0bf476-0047-52f9-a5ed-ab8fccfba24d"


@pytest.fixture(scope="module")
def study():
    ct = sitk.ReadImage(str(ROOT / "test/input/images/ct" / f"{CASE}.mha"), sitk.sitkFloat32)
    pet = sitk.ReadImage(str(ROOT / "test/input/images/pet" / f"{CASE}.mha"), sitk.sitkFloat32)
    return ct, pet


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_fast_path_matches_the_fp32_reference_with_the_demo_weights(study, precision):
    ct, pet = study
    ref = Predictor.from_model_dir(ROOT / "weights", device="cpu", precision="fp32", fold_batchnorm=False,
                                   channels_last=False).predict(ct, pet)  # fmt: skip
    fast = Predictor.from_model_dir(ROOT / "weights", device="cpu", precision=precision).predict(ct, pet)
    ref_arr, fast_arr = sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(fast)
    assert ref_arr.any()
    assert dice(fast_arr, ref_arr) >= 0.99


def test_demo_weights_find_every_lesion_of_the_demo_study(study):
    """What the demo weights can do (phantoms only): every true lesion is hit."""
    from petseg.metrics import case_metrics

    ct, pet = study
    mask = sitk.GetArrayFromImage(Predictor.from_model_dir(ROOT / "weights", device="cpu").predict(ct, pet))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(ROOT / "test/label" / f"{CASE}.mha")))
    m = case_metrics(label, mask, voxel_volume_ml=float(np.prod(pet.GetSpacing())) / 1000)
    assert m.fnv_ml == 0.0 and m.gt_lesions == 4
