"""A study read while the process starts (process.py): the same images as a read in turn,
the CT's error first, a PET-only model untouched by a broken CT, fd 2 never redirected."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.geometry import Grid
from petseg.preprocess import read_inputs
from petseg.read_ahead import ReadAhead
from petseg.settings import Settings

from conftest import DIRECTIONS, ROOT, blob_study

sys.path.insert(0, str(ROOT))
import process  # noqa: E402

PET_ONLY = Settings(modalities=("PET",))


@pytest.fixture()
def study(tmp_path):
    ct, pet = blob_study(direction=DIRECTIONS["oblique"])
    paths = tmp_path / "ct.mha", tmp_path / "pet.nii.gz"
    for image, path in zip((ct, pet), paths):
        sitk.WriteImage(image, str(path), True)
    return paths


def test_the_images_equal_a_read_in_turn(study, capfd):
    ahead = ReadAhead(*study)
    for mine, theirs in zip(ahead.images(settings=Settings()), read_inputs(*study, settings=Settings())):
        assert Grid.of(mine) == Grid.of(theirs)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mine), sitk.GetArrayFromImage(theirs))
    ct, pet = ReadAhead(*study).images(settings=PET_ONLY)
    assert ct is None and Grid.of(pet) == Grid.of(sitk.ReadImage(str(study[1])))
    os.write(2, b"stderr untouched\n")
    assert "stderr untouched" in capfd.readouterr().err


@pytest.mark.parametrize("broken", ["ct", "pet", "both"])
def test_errors_are_the_ones_a_read_in_turn_gives(study, broken):
    ct, pet = study
    for path in {"ct": [ct], "pet": [pet], "both": [ct, pet]}[broken]:
        path.write_bytes(b"not an image")
    ahead = ReadAhead(ct, pet)
    with pytest.raises(InputError) as err:
        ahead.images(settings=Settings())
    assert str(pet if broken == "pet" else ct) in str(err.value)
    if broken == "ct":  # a PET-only model never takes the CT: its failure is not the job's
        assert ReadAhead(ct, pet).images(settings=PET_ONLY)[0] is None
    else:
        with pytest.raises(InputError, match="pet.nii.gz"):
            ReadAhead(ct, pet).images(settings=PET_ONLY)


def test_process_py_with_a_pet_only_model_ignores_a_broken_ct(gc_input, pet_model_dir, tmp_path, capsys):
    (ct,) = (gc_input / "images" / "ct").iterdir()
    ct.write_bytes(b"not an image")
    out = tmp_path / "out"
    code = process.main(
        ["--input", str(gc_input), "--output", str(out), "--model-dir", str(pet_model_dir), "--device", "cpu"]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "images" / "automated-petct-lesion-segmentation" / ct.name).is_file()


def test_process_py_names_a_broken_pet_in_one_line(gc_input, tiny_model_dir, tmp_path, capsys):
    (pet,) = (gc_input / "images" / "pet").iterdir()
    data = pet.read_bytes()
    pet.write_bytes(data[: len(data) - 200])  # the voxels cut short
    args = ["--input", str(gc_input), "--output", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)]
    code = process.main([*args, "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and str(pet) in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.mha"))
