"""PET-only models, for the many studies without a usable CT: model.json declares
channels ["PET"], no CT is read, the whole PET field of view goes in, training and every
entry point take them, and a CT/PET model given no CT says which model to use."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.cli import main
from petseg.errors import ConfigError
from petseg.model import ModelFolder
from petseg.preprocess import preprocess, restore
from petseg.settings import PET_ONLY, Settings

from conftest import DIRECTIONS, SHARED, blob_study

GEOMETRY = dict(size=(24, 22, 18), spacing=(3.1, 2.4, 4.3), direction=DIRECTIONS["oblique"])


def test_the_pet_alone_goes_in_whole_and_comes_back_on_its_grid():
    _, pet = blob_study(**GEOMETRY)
    settings = Settings(modalities=PET_ONLY, target_spacing=GEOMETRY["spacing"], roi_size=(32, 32, 32))
    prep = preprocess(None, pet, settings=settings)
    assert prep.image.shape[0] == 1 and prep.record.crop_index == (0, 0, 0)
    assert prep.record.cropped.size == pet.GetSize()  # no body crop: there is no CT to find it
    back = restore(prep.image[0], prep.record)  # RAS and back on the same spacing: exact
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(pet))


def test_a_ct_pet_model_refuses_a_study_without_ct():
    _, pet = blob_study(**GEOMETRY)
    with pytest.raises(ConfigError, match="this model takes CT and PET and no CT was given"):
        preprocess(None, pet, settings=Settings())


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (dict(modalities=("CT",)), "must be \\['CT', 'PET'\\] or \\['PET'\\]"),
        (dict(modalities=("PET", "CT")), "must be"),
        (dict(modalities=PET_ONLY, click_sigma_mm=5.0), "click-aware models take CT and PET"),
    ],
)
def test_only_ct_pet_and_pet_alone_are_models(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        Settings(**kwargs)


def test_the_model_folder_declares_its_one_channel(pet_model_dir):
    meta = json.loads((pet_model_dir / "model.json").read_text())
    assert meta["preprocessing"]["channels"] == ["PET"] and meta["network"]["kwargs"]["in_channels"] == 1
    assert ModelFolder.open(pet_model_dir).settings.modalities == PET_ONLY


def _study(tmp_path):
    ct, pet = blob_study(**GEOMETRY)
    sitk.WriteImage(pet, str(tmp_path / "baseline_pet.nii.gz"))
    (tmp_path / "broken_ct.nii.gz").write_bytes(b"not an image")  # a PET-only model never reads it
    return tmp_path / "broken_ct.nii.gz", tmp_path / "baseline_pet.nii.gz", pet


def test_predict_a_pet_alone_with_a_pet_only_model(pet_model_dir, tmp_path, capsys):
    ct, pet_path, pet = _study(tmp_path)
    args = ["predict", "--pet", str(pet_path), "-o", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*args, "--model-dir", str(pet_model_dir)]) == 0
    mask = sitk.ReadImage(str(tmp_path / "out" / "baseline_pet.nii.gz"))
    assert mask.GetSize() == pet.GetSize() and np.allclose(mask.GetDirection(), pet.GetDirection())
    assert main([*args, "--model-dir", str(pet_model_dir), "--ct", str(ct), "--name", "with_ct"]) == 0
    np.testing.assert_array_equal(  # the CT given is not read: the same mask
        sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "with_ct.nii.gz"))), sitk.GetArrayFromImage(mask)
    )
    assert capsys.readouterr().err == ""


def test_without_model_dir_the_pet_only_model_is_taken_and_said(pet_model_dir, tmp_path, monkeypatch, capsys):
    _, pet_path, _ = _study(tmp_path)
    monkeypatch.setenv("PETSEG_PET_MODEL_DIR", str(pet_model_dir))
    assert main(["predict", "--pet", str(pet_path), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert f"no CT: the PET-only model {pet_model_dir}" in capsys.readouterr().out


def test_a_ct_pet_model_given_no_ct_points_to_the_pet_only_one(
    tiny_model_dir, pet_model_dir, tmp_path, monkeypatch, capsys
):
    _, pet_path, _ = _study(tmp_path)
    monkeypatch.setenv("PETSEG_PET_MODEL_DIR", str(pet_model_dir))
    args = ["predict", "--pet", str(pet_path), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "takes CT and PET: give --ct CT, or use --model-dir" in err[0]
        and str(pet_model_dir) in err[0]
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_train_pet_only_writes_a_one_channel_model(tmp_path):
    from conftest import training_cohort

    data = training_cohort(tmp_path / "data", n=1, seed=31)
    tiny = [
        "--channels",
        "4",
        "8",
        "--num-res-units",
        "1",
        "--target-spacing",
        "8",
        "8",
        "8",
        "--roi-size",
        "32",
        "32",
        "32",
    ]
    argv = ["train", "-d", str(data), "-o", str(tmp_path / "run"), "--folds", "2", "--epochs", "1", "--batch-size", "1"]
    assert main([*argv, "--patch-size", "16", "16", "16", *tiny, "--device", "cpu", "--pet-only"]) == 0
    assert main(["assemble", str(tmp_path / "run"), "-o", str(tmp_path / "model")]) == 0
    folder = ModelFolder.open(tmp_path / "model")
    assert folder.settings.modalities == PET_ONLY and folder.network["in_channels"] == 1


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "sts001-fdg-pet-dicom").is_dir(), reason="../shared/reference not present")
def test_the_real_fdg_series_without_ct_runs_end_to_end(pet_model_dir, tmp_path):
    out = tmp_path / "out"
    pet_dicom = SHARED / "sts001-fdg-pet-dicom" / "pet"
    args = ["predict", "--pet-dicom", str(pet_dicom), "-o", str(out), "--model-dir", str(pet_model_dir)]
    assert main([*args, "--device", "cpu", "--report"]) == 0
    (mask,) = out.glob("pet-*.nii.gz")
    report = json.loads(next(out.glob("pet-*_lesions.json")).read_text())
    assert report["suv_calculation"]["method"] == "SUVbw" and report["suv_calculation"]["weight_kg"] == 71.0
    assert sitk.ReadImage(str(mask)).GetSize() == (128, 128, 267)


def test_settings_of_the_other_modalities_are_named(pet_model_dir):
    from petseg.predictor import Predictor

    with pytest.raises(ConfigError, match=r"the given settings take \['CT', 'PET'\], but .* takes \['PET'\]"):
        Predictor.from_model_dir(pet_model_dir, settings=Settings())
