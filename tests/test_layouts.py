"""Every input layout a user's studies come in: nnU-Net names (and the folder above them),
study folders (the autoPET/TCIA release, convert-dicom's output), one CT/PET pair; each
named by one rule, each found by predict, evaluate and train alike."""

import logging

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given
from hypothesis import strategies as st

from petseg.cli import main
from petseg.errors import InputError
from petseg.layout import (
    STUDY_LABEL,
    case_name,
    checked_case_name,
    find_cases,
    find_study_folders,
    find_training_cases,
    index_images,
    pair_case,
)
from petseg.outputs import CT_NII, CT_ON_PET_NII, SUV_NII

from conftest import DIRECTIONS, blob_study, cohort_folder, predict_cli

STUDY_A = "08-12-2005-NA-PET-CT Ganzkoerper  primaer mit KM-10445"
STUDY_B = "03-31-2007-NA-PET-CT Ganzkoerper  primaer mit KM-27113"


def write_study(folder, *, files=("CTres", "SUV", "SEG"), suffix=".nii.gz", seed=0):
    """A release-style study folder; SEG = the PET's hot spheres."""
    folder.mkdir(parents=True, exist_ok=True)
    ct, pet = blob_study(size=(24 + seed, 22, 18), direction=DIRECTIONS["oblique"])
    seg = sitk.Cast(pet > 3.0, sitk.sitkUInt8)
    for stem in files:
        image = {"CTres": ct, "CT": ct, "SUV": pet, "PET": pet * 5000.0, "SEG": seg}[stem]
        sitk.WriteImage(image, str(folder / f"{stem}{suffix}"))
    return folder


@pytest.fixture()
def release(tmp_path):
    """Two patients of the autoPET release, one with two studies."""
    root = tmp_path / "FDG-PET-CT-Lesions"
    write_study(root / "PETCT_0af7ffe12a" / STUDY_A, seed=0)
    write_study(root / "PETCT_0af7ffe12a" / STUDY_B, seed=1)
    write_study(root / "PETCT_1b2c3d4e5f" / STUDY_A, seed=2)
    (root / "Clinical Metadata FDG PET_CT Lesions.csv").write_text("Subject ID,diagnosis\n")
    return root


NAMES = [
    "PETCT_0af7ffe12a_03-31-2007-NA-PET-CT-Ganzkoerper-primaer-mit-KM-27113",
    "PETCT_0af7ffe12a_08-12-2005-NA-PET-CT-Ganzkoerper-primaer-mit-KM-10445",
    "PETCT_1b2c3d4e5f_08-12-2005-NA-PET-CT-Ganzkoerper-primaer-mit-KM-10445",
]


def test_the_release_tree_gives_one_uniquely_named_case_per_study(release):
    cases, problems = find_cases(release)
    assert problems == [] and sorted(c.name for c in cases) == NAMES
    for case in cases:
        assert case.ct.name == "CTres.nii.gz" and case.pet.name == "SUV.nii.gz" and case.suffix == ".nii.gz"
    # a patient folder or one study folder reads too, each study under the same name
    assert sorted(c.name for c in find_cases(release / "PETCT_0af7ffe12a")[0]) == NAMES[:2]
    (one,) = find_cases(release / "PETCT_1b2c3d4e5f" / STUDY_A)[0]
    assert one.name == NAMES[2]
    assert list(index_images(release / "PETCT_1b2c3d4e5f" / STUDY_A, role="gt", study=STUDY_LABEL)) == [NAMES[2]]


def test_training_and_evaluation_take_seg_as_the_label(release):
    cases = find_training_cases(release)
    assert sorted(cases) == NAMES and all(c.label.name == "SEG.nii.gz" for c in cases.values())
    assert sorted(index_images(release, role="ground truth", study=STUDY_LABEL)) == NAMES


def test_a_training_study_without_seg_is_named(release):
    (release / "PETCT_1b2c3d4e5f" / STUDY_A / "SEG.nii.gz").unlink()
    with pytest.raises(InputError, match="no SEG.nii.gz") as err:
        find_training_cases(release)
    assert STUDY_A in str(err.value.source)


def test_a_study_with_bq_per_ml_pet_only_is_refused_naming_it(tmp_path):
    write_study(tmp_path / "s", files=("CTres", "PET"))
    cases, problems = find_cases(tmp_path)
    assert cases == [] and len(problems) == 1
    assert str(problems[0].source).endswith("PET.nii.gz") and "Bq/ml" in problems[0].problem


def test_an_incomplete_study_does_not_stop_the_others(release):
    (release / "PETCT_1b2c3d4e5f" / STUDY_A / "CTres.nii.gz").unlink()
    cases, problems = find_cases(release)
    assert sorted(c.name for c in cases) == NAMES[:2]
    assert len(problems) == 1 and "CT not found" in problems[0].problem


def test_two_folders_that_would_share_a_name_are_refused(tmp_path):
    write_study(tmp_path / "root" / "study 1")
    write_study(tmp_path / "root" / "study_1".replace("_", "-"))
    with pytest.raises(InputError, match="would be case study-1"):
        find_study_folders(tmp_path / "root")


def test_convert_dicom_output_is_one_study_named_after_its_folder(tmp_path):
    folder = tmp_path / "patient7"
    ct, pet = blob_study(direction=DIRECTIONS["oblique"])
    folder.mkdir()
    for name, image in ((SUV_NII, pet), (CT_NII, ct), (CT_ON_PET_NII, ct)):
        sitk.WriteImage(image, str(folder / name))
    (case,) = find_cases(folder)[0]
    assert (case.name, case.ct.name, case.pet.name) == ("patient7", CT_ON_PET_NII, SUV_NII)


def test_a_folder_above_images_ts_is_followed_and_says_so(tmp_path, caplog):
    cohort_folder(tmp_path / "data" / "imagesTs", 1)
    cohort_folder(tmp_path / "data" / "imagesTr", 2)
    with caplog.at_level(logging.INFO, logger="petseg"):
        cases, _ = find_cases(tmp_path / "data")
    assert [c.ct.parent.name for c in cases] == ["imagesTs"]
    assert "imagesTs" in caplog.text and "imagesTr" in caplog.text
    (tmp_path / "data" / "imagesTs").rename(tmp_path / "data" / "old")
    assert len(find_cases(tmp_path / "data")[0]) == 2


@pytest.mark.slow
def test_predict_and_evaluate_run_on_the_release_tree(release, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert predict_cli(release, out, tiny_model_dir) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{n}.nii.gz" for n in NAMES]
    mask = sitk.ReadImage(str(out / f"{NAMES[0]}.nii.gz"))
    pet = sitk.ReadImage(str(release / "PETCT_0af7ffe12a" / STUDY_B / "SUV.nii.gz"))
    assert mask.GetSize() == pet.GetSize() and np.allclose(mask.GetDirection(), pet.GetDirection())
    table = tmp_path / "r.csv"
    args = ["evaluate", "--gt", str(release), "--pred", str(out), "--pet", str(release), "-o", str(table)]
    assert main(args) == 0
    assert all(name in table.read_text() for name in NAMES)


@pytest.mark.slow
def test_one_pair_of_files_runs_and_is_named_after_the_pet(tiny_model_dir, tmp_path):
    study = write_study(tmp_path / "pat 7", files=("CTres", "SUV"), suffix=".mha")
    out = tmp_path / "out"
    base = ["predict", "--ct", str(study / "CTres.mha"), "--pet", str(study / "SUV.mha"), "-o", str(out)]
    model = ["--model-dir", str(tiny_model_dir), "--device", "cpu"]
    assert main([*base, *model]) == 0
    assert (out / "pat-7.mha").is_file()  # a generic PET name: named after its folder
    assert main([*base, *model, "--name", "P7_baseline"]) == 0
    assert (out / "P7_baseline.mha").is_file()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--ct", "{d}/CTres.mha"], "give the PET too"),
        (["--pet", "{d}/SUV.mha"], "no CT given, and"),
        (["-i", "{d}/SUV.mha"], "is a file: give one study as --ct CT --pet PET"),
        (["-i", "{d}", "--ct", "{d}/CTres.mha", "--pet", "{d}/SUV.mha"], "not both"),
        (["--ct", "{d}/CTres.mha", "--pet", "{d}/SUV.mha", "--name", "a/b"], "case name"),
        (["--ct", "{d}/CTres.mha", "--pet", "{d}/CTres.mha"], "both the CT and the PET"),
        (["--ct", "{d}/CTres.mha", "--pet", "{d}/none.mha"], "PET not found"),
        (["--ct", "{d}", "--pet", "{d}/SUV.mha"], "both as DICOM folders, or both as files"),
        (["-i", "{d}", "--name", "x"], "names the study of --ct/--pet"),
    ],
)
def test_single_study_mistakes_are_one_line(argv, says, tiny_model_dir, tmp_path, capsys):
    study = write_study(tmp_path / "s", files=("CTres", "SUV"), suffix=".mha")
    out = tmp_path / "out"
    argv = [a.format(d=study) for a in argv]
    assert main(["predict", *argv, "-o", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not out.exists() or not list(out.glob("*.mha"))


@given(st.text(max_size=40))
def test_case_names_are_file_names_and_stable(text):
    name = case_name(text)
    assert name and case_name(name) == name and checked_case_name(name) == name
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert name[0] not in "-." and name[-1] not in "-."


@given(st.text(min_size=1, max_size=20))
def test_a_user_case_name_is_taken_only_as_given(text):
    if case_name(text) == text:
        assert checked_case_name(text) == text
    else:
        with pytest.raises(InputError):
            checked_case_name(text)


def test_pair_case_names(tmp_path):
    study = write_study(tmp_path / "Patient 1", files=("CTres", "SUV"))
    assert pair_case(study / "CTres.nii.gz", study / "SUV.nii.gz").name == "Patient-1"
    (study / "SUV.nii.gz").rename(study / "baseline_pet.nii.gz")
    assert pair_case(study / "CTres.nii.gz", study / "baseline_pet.nii.gz").name == "baseline_pet"
