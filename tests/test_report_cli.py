"""``petseg report``: masks from anywhere measured with the code of ``predict --report``, one
study or a folder (docs/measures.md)."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.cli import main
from petseg.normalise import janmahasatian_lbm
from petseg.report import COLUMNS, STUDY_MEASURES

from conftest import DIRECTIONS, SHARED, blob_study, make_image, physical_points, predict_cli

MEASURED = [c for c in COLUMNS if c != "lesion"]


def _study(folder, name, **geometry):
    """A study whose PET (SUV 1) holds two apart spheres of SUV 6 and 9, radius 9 mm."""
    folder.mkdir(parents=True, exist_ok=True)
    ct, template = blob_study(**geometry)
    points = physical_points(template)
    centre = points.reshape(-1, 3).mean(axis=0)
    values = np.ones(template.GetSize(), np.float32)
    for offset, suv in ((-22.0, 6.0), (22.0, 9.0)):
        values[np.linalg.norm(points - centre - (offset, 0.0, 0.0), axis=-1) <= 9.0] = suv
    pet = make_image(
        values, spacing=template.GetSpacing(), origin=template.GetOrigin(), direction=template.GetDirection()
    )
    sitk.WriteImage(ct, str(folder / f"{name}_0000.nii.gz"))
    sitk.WriteImage(pet, str(folder / f"{name}_0001.nii.gz"))
    return pet


def _blob_mask(pet: sitk.Image) -> sitk.Image:
    mask = sitk.Cast(pet > 2.5, sitk.sitkUInt8)
    mask.CopyInformation(pet)
    return mask


def _report(*args) -> int:
    return main(["report", *map(str, args)])


def _json(path):
    return json.loads(path.read_text())


def _rows(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_folder_mode_and_predict_report_give_the_same_numbers(tiny_model_dir, tmp_path):
    src = tmp_path / "in"
    for name, direction in (("a", "oblique"), ("b", "flipped")):
        _study(src, name, direction=DIRECTIONS[direction])
    assert predict_cli(src, tmp_path / "pred", tiny_model_dir, "--report") == 0
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("a", "b"):
        (tmp_path / "pred" / f"{name}.nii.gz").rename(masks / f"{name}.nii.gz")
    assert _report("--pet", src, "--mask", masks, "-o", tmp_path / "rep") == 0
    studies = {row["case"]: row for row in _rows(tmp_path / "rep" / "studies.csv")}
    lesions = _rows(tmp_path / "rep" / "lesions.csv")
    assert sorted(studies) == ["a", "b"]
    for name in ("a", "b"):
        ours, theirs = (
            _json(tmp_path / "pred" / f"{name}_lesions.json"),
            _json(tmp_path / "rep" / f"{name}_lesions.json"),
        )
        assert ours["lesion_count"] == theirs["lesion_count"]
        for key in ("tmtv_ml", "suv_max", "suv_peak_local", "suv_peak_global", "dmax_mm"):
            assert ours[key] == theirs[key], key
        assert ours["conventions"] == theirs["conventions"]
        assert [{c: lesion[c] for c in MEASURED} for lesion in ours["lesions"]] == [
            {c: lesion[c] for c in MEASURED} for lesion in theirs["lesions"]
        ]
        row = studies[name]
        assert int(row["lesion_count_mask"]) == ours["lesion_count"]
        assert float(row["tmtv_ml_mask"]) == pytest.approx(ours["tmtv_ml"], rel=1e-5)  # CSV: 6 significant digits
        assert sum(r["case"] == name for r in lesions) == ours["lesion_count"]
        assert {f"{m}_{k}" for m in STUDY_MEASURES for k in ("mask", "suv2.5", "suv4.0", "41pct")} <= set(row)


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_a_single_study_reports_each_convention_and_lesion(tmp_path, direction):
    pet = _study(tmp_path / "in", "s", direction=DIRECTIONS[direction])
    sitk.WriteImage(_blob_mask(pet), str(tmp_path / "s_mask.nii.gz"))
    assert (
        _report("--pet", tmp_path / "in" / "s_0001.nii.gz", "--mask", tmp_path / "s_mask.nii.gz", "-o", tmp_path / "o")
        == 0
    )
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == ["s_0001_lesions.csv", "s_0001_lesions.json"]  # one study: no cohort tables
    report = _json(tmp_path / "o" / "s_0001_lesions.json")
    assert report["lesion_count"] == 2 and report["suv"]["unit"] == "SUVbw"
    assert report["suv_max"] == 9.0 and sorted(lesion["suv_mean"] for lesion in report["lesions"]) == [6.0, 9.0]
    assert report["conventions"]["suv4.0"]["tmtv_ml"] == report["tmtv_ml"]
    assert "percist" not in report["conventions"]  # no liver reference given
    lesion = report["lesions"][0]
    assert lesion["tlg"] == lesion["suv_mean"] * lesion["volume_ml"]
    centre = np.array([lesion[f"centroid_{a}_mm"] for a in "xyz"])
    index = pet.TransformPhysicalPointToIndex(tuple(centre))
    assert pet[index] == lesion["suv_max"]  # the centroid lies in its lesion, in patient coordinates


def test_a_mask_on_another_grid_is_resampled_onto_the_pet_and_said(tmp_path, caplog):
    pet = _study(tmp_path / "in", "s", spacing=(3.1, 2.4, 4.3))
    fine = sitk.Resample(
        _blob_mask(pet),
        [s * 2 for s in pet.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        pet.GetOrigin(),
        [s / 2 for s in pet.GetSpacing()],
        pet.GetDirection(),
        0,
        sitk.sitkUInt8,
    )
    sitk.WriteImage(fine, str(tmp_path / "fine.nii.gz"))
    sitk.WriteImage(_blob_mask(pet), str(tmp_path / "same.nii.gz"))
    pet_path = tmp_path / "in" / "s_0001.nii.gz"
    with caplog.at_level(logging.INFO, logger="petseg"):
        assert _report("--pet", pet_path, "--mask", tmp_path / "fine.nii.gz", "-o", tmp_path / "o1", "--name", "s") == 0
    assert "resampled (nearest) onto it" in caplog.text
    assert _report("--pet", pet_path, "--mask", tmp_path / "same.nii.gz", "-o", tmp_path / "o2", "--name", "s") == 0
    resampled, same = _json(tmp_path / "o1" / "s_lesions.json"), _json(tmp_path / "o2" / "s_lesions.json")
    assert resampled["lesion_count"] == same["lesion_count"] == 2
    assert resampled["tmtv_ml"] == pytest.approx(same["tmtv_ml"], rel=0.1)


def test_bad_masks_are_refused_in_one_line(tmp_path, capsys):
    pet = _study(tmp_path / "in", "s")
    pet_path = tmp_path / "in" / "s_0001.nii.gz"
    probability = sitk.Cast(pet, sitk.sitkFloat32) / 7.0
    sitk.WriteImage(probability, str(tmp_path / "prob.nii.gz"))
    far = _blob_mask(pet)
    far.SetOrigin((5000.0, 0.0, 0.0))
    sitk.WriteImage(far, str(tmp_path / "far.nii.gz"))
    cases = {
        "prob.nii.gz": "a probability map?",
        "far.nii.gz": "do not overlap in space",
    }
    for name, message in cases.items():
        assert _report("--pet", pet_path, "--mask", tmp_path / name, "-o", tmp_path / "o") != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and name in err[0], err
    # swapped: the mask given as the PET
    sitk.WriteImage(_blob_mask(pet), str(tmp_path / "mask.nii.gz"))
    assert _report("--pet", tmp_path / "mask.nii.gz", "--mask", pet_path, "-o", tmp_path / "o") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a mask given as the PET?" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_in_a_folder_a_failing_study_is_logged_and_the_others_go_on(tmp_path, capsys):
    src, masks = tmp_path / "in", tmp_path / "masks"
    masks.mkdir()
    for name in ("a", "b", "c"):
        pet = _study(src, name)
        if name != "b":
            sitk.WriteImage(_blob_mask(pet), str(masks / f"{name}.nii.gz"))
    assert _report("--pet", src, "--mask", masks, "-o", tmp_path / "o") == 1
    assert "no mask for case b" in capsys.readouterr().err
    assert [row["case"] for row in _rows(tmp_path / "o" / "studies.csv")] == ["a", "c"]
    assert not (tmp_path / "o" / "b_lesions.json").exists()
    # one-study options over a folder
    for extra in (["--liver-centre", "0", "0", "0"], ["--weight", "70"], ["--ct", str(src / "a_0000.nii.gz")]):
        assert _report("--pet", src, "--mask", masks, "-o", tmp_path / "o2", *extra) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "applies to one study" in err[0]


def test_a_liver_reference_gives_the_percist_convention(tmp_path):
    pet = _study(tmp_path / "in", "s")
    values = sitk.GetArrayFromImage(pet)
    values[:9] = 2.0  # a "liver" slab of SUV 2 (39 mm) at the first slices, away from the spheres
    liver_pet = sitk.GetImageFromArray(values)
    liver_pet.CopyInformation(pet)
    sitk.WriteImage(liver_pet, str(tmp_path / "study.nii.gz"))
    sitk.WriteImage(_blob_mask(liver_pet), str(tmp_path / "mask.nii.gz"))
    liver = sitk.GetImageFromArray((values == 2.0).astype(np.uint8))
    liver.CopyInformation(pet)
    sitk.WriteImage(liver, str(tmp_path / "liver.nii.gz"))
    args = ("--pet", tmp_path / "study.nii.gz", "--mask", tmp_path / "mask.nii.gz", "-o", tmp_path / "o")
    assert _report(*args, "--liver-mask", tmp_path / "liver.nii.gz") == 0
    report = _json(tmp_path / "o" / "study_lesions.json")
    assert report["liver_reference"]["mean"] == pytest.approx(2.0)
    assert report["liver_reference"]["sd"] == pytest.approx(0.0, abs=1e-6)
    assert report["liver_reference"]["threshold"] == pytest.approx(3.0)
    assert report["conventions"]["percist"]["lesion_count"] == 2
    centre = liver_pet.TransformIndexToPhysicalPoint((20, 18, 4))
    assert _report(*args, "--liver-centre", *centre) == 0
    assert _json(tmp_path / "o" / "study_lesions.json")["liver_reference"]["mean"] == pytest.approx(2.0)


def test_sul_needs_height_and_sex_and_says_which_is_missing(tmp_path, capsys):
    pet = _study(tmp_path / "in", "s")
    sitk.WriteImage(_blob_mask(pet), str(tmp_path / "m.nii.gz"))
    args = ("--pet", tmp_path / "in" / "s_0001.nii.gz", "--mask", tmp_path / "m.nii.gz", "-o", tmp_path / "o")
    assert _report(*args, "--suv", "lbm", "--weight", "80") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "height" in err[0] and "sex" in err[0]
    assert _report(*args, "--suv", "lbm", "--weight", "80", "--height", "180", "--sex", "M") == 0
    report = _json(tmp_path / "o" / "s_0001_lesions.json")
    factor = janmahasatian_lbm(80, 180, "M") / 80
    assert report["suv"]["unit"] == "SUL"
    assert report["suv_max"] == pytest.approx(9.0 * factor, rel=1e-6)
    assert report["conventions"]["mask"]["sdmax_per_m"] is not None


REF_PET = SHARED / "sts001-fdg-pet-dicom" / "pet"


@pytest.mark.skipif(not REF_PET.is_dir(), reason="../shared/reference not present")
def test_a_dicom_series_gives_sul_from_its_headers(tmp_path):
    from petseg.dicom import read_pet
    from petseg.rtstruct import read_rtstruct

    series = read_pet(REF_PET)
    rtstruct = next((REF_PET.parent / "rtstruct").iterdir())
    mask = read_rtstruct(rtstruct, series.image, roi="GTV_Mass")
    sitk.WriteImage(mask, str(tmp_path / "mass.nii.gz"))
    for suv in ("bw", "lbm"):
        assert _report("--pet", REF_PET, "--mask", tmp_path / "mass.nii.gz", "-o", tmp_path / suv, "--suv", suv) == 0
    bw, sul = _json(tmp_path / "bw" / "pet_lesions.json"), _json(tmp_path / "lbm" / "pet_lesions.json")
    assert sul["suv"]["patient"] == {"weight_kg": 71.0, "height_cm": 163.0, "sex": "M", "source": str(REF_PET)}
    factor = janmahasatian_lbm(71.0, 163.0, "M") / 71.0
    assert sul["suv"]["factor_from_suvbw"] == pytest.approx(factor)
    assert sul["suv_max"] == pytest.approx(bw["suv_max"] * factor, rel=1e-6)  # float32 voxels
    assert sul["suv_peak_global"] == pytest.approx(bw["suv_peak_global"] * factor, rel=1e-6)
    assert bw["tmtv_ml"] == sul["tmtv_ml"]
    assert "suv_calculation" in bw


def test_a_labelled_mask_is_measured_as_its_lesions(tmp_path):
    size, spacing = (20, 20, 20), (2.0, 2.0, 2.0)
    pet = np.ones(size, np.float32)
    labels = np.zeros(size, np.uint8)
    pet[2:6, 2:6, 2:6], labels[2:6, 2:6, 2:6] = 5.0, 1
    pet[12:16, 12:16, 12:16], labels[12:16, 12:16, 12:16] = 8.0, 2
    geometry = dict(spacing=spacing, origin=(10.0, -20.0, 30.0), direction=DIRECTIONS["permuted"])
    sitk.WriteImage(make_image(pet, **geometry), str(tmp_path / "p.nii.gz"))
    sitk.WriteImage(make_image(labels, **geometry), str(tmp_path / "m.nii.gz"))
    assert _report("--pet", tmp_path / "p.nii.gz", "--mask", tmp_path / "m.nii.gz", "-o", tmp_path / "o") == 0
    report = _json(tmp_path / "o" / "p_lesions.json")
    assert report["lesion_count"] == 2
    assert report["dmax_mm"] == pytest.approx(np.sqrt(3) * 10 * 2.0)
    assert sorted(lesion["suv_max"] for lesion in report["lesions"]) == [5.0, 8.0]


def test_a_mask_mirrored_by_its_header_is_warned_about(tmp_path, caplog):
    pet = _study(tmp_path / "in", "s")
    mirrored = _blob_mask(pet)
    direction = np.asarray(pet.GetDirection()).reshape(3, 3) @ np.diag([-1.0, 1.0, 1.0])
    far_corner = pet.TransformIndexToPhysicalPoint((pet.GetSize()[0] - 1, 0, 0))
    mirrored.SetDirection(direction.ravel().tolist())
    mirrored.SetOrigin(far_corner)  # the same box in space, the x axis reversed: an RAS/LPS export
    sitk.WriteImage(mirrored, str(tmp_path / "m.nii.gz"))
    with caplog.at_level(logging.INFO, logger="petseg"):
        assert (
            _report("--pet", tmp_path / "in" / "s_0001.nii.gz", "--mask", tmp_path / "m.nii.gz", "-o", tmp_path / "o")
            == 0
        )
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "another direction" in r.getMessage()]
    assert len(warned) == 1 and "m.nii.gz" in warned[0].getMessage()


def test_a_rerun_into_the_same_folder_leaves_no_stale_report(tmp_path):
    src, masks = tmp_path / "in", tmp_path / "masks"
    masks.mkdir()
    for name in ("a", "b"):
        sitk.WriteImage(_blob_mask(_study(src, name)), str(masks / f"{name}.nii.gz"))
    assert _report("--pet", src, "--mask", masks, "-o", tmp_path / "o") == 0
    assert (tmp_path / "o" / "b_lesions.json").is_file()
    (masks / "b.nii.gz").unlink()
    assert _report("--pet", src, "--mask", masks, "-o", tmp_path / "o") == 1
    assert not (tmp_path / "o" / "b_lesions.json").exists() and not (tmp_path / "o" / "b_lesions.csv").exists()
    assert [row["case"] for row in _rows(tmp_path / "o" / "studies.csv")] == ["a"]


def test_two_files_for_one_case_and_a_ct_that_is_the_pet_are_refused(tmp_path, capsys):
    pet = _study(tmp_path / "in", "s")
    masks = tmp_path / "masks"
    masks.mkdir()
    for ext in ("nii.gz", "mha"):
        sitk.WriteImage(_blob_mask(pet), str(masks / f"s.{ext}"))
    assert _report("--pet", tmp_path / "in", "--mask", masks, "-o", tmp_path / "o") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two mask images for case s" in err[0]
    pet_path, mask = tmp_path / "in" / "s_0001.nii.gz", masks / "s.mha"
    for ct in (pet_path, mask):
        assert _report("--pet", pet_path, "--mask", mask, "--ct", ct, "-o", tmp_path / "o") != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "given as the CT and as the PET or mask" in err[0]
    assert (
        _report("--pet", pet_path, "--mask", mask, "--ct", tmp_path / "in" / "s_0000.nii.gz", "-o", tmp_path / "o") == 0
    )


def test_a_liver_sphere_cut_by_the_image_edge_is_warned_about(tmp_path, caplog):
    pet = _study(tmp_path / "in", "s")
    sitk.WriteImage(_blob_mask(pet), str(tmp_path / "m.nii.gz"))
    corner = pet.TransformIndexToPhysicalPoint((0, 0, 0))
    args = ("--pet", tmp_path / "in" / "s_0001.nii.gz", "--mask", tmp_path / "m.nii.gz", "-o", tmp_path / "o")
    with caplog.at_level(logging.WARNING, logger="petseg"):
        assert _report(*args, "--liver-centre", *corner) == 0
    assert "the image's edge cuts the sphere" in caplog.text
    report = _json(tmp_path / "o" / "s_0001_lesions.json")
    assert 10 <= report["liver_reference"]["voxels"] < 100


def test_a_dicom_folder_of_any_name_is_measured_with_its_headers(tmp_path, capsys):
    from petseg.dicom import read_pet

    from dicom_helpers import write_series

    activity = np.full((12, 16, 20), 4000.0)
    activity[4:8, 5:10, 6:12] = 40000.0  # a hot block
    folder = tmp_path / "PET AC (WB)"
    write_series(folder, activity, spacing=(4.0, 4.0, 4.0), extra={"PatientSize": 1.75})
    series = read_pet(folder)
    mask = sitk.Cast(series.image > 0.5 * float(sitk.GetArrayViewFromImage(series.image).max()), sitk.sitkUInt8)
    sitk.WriteImage(mask, str(tmp_path / "m.nii.gz"))
    args = ("--pet", folder, "--mask", tmp_path / "m.nii.gz", "-o", tmp_path / "o", "--suv", "lbm")
    assert _report(*args) != 0  # the helper writes PatientSex "O"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sex (DICOM PatientSex (0010,0040) or --sex)" in err[0]
    assert _report(*args, "--sex", "f") == 0
    report = _json(tmp_path / "o" / "PET-AC-WB_lesions.json")
    assert report["suv"]["patient"]["sex"] == "F" and report["suv"]["patient"]["height_cm"] == 175.0
    assert report["suv"]["patient"]["source"] == f"the command line over {folder}"
    assert report["suv"]["factor_from_suvbw"] == pytest.approx(janmahasatian_lbm(70.0, 175.0, "F") / 70.0)
    assert report["lesion_count"] == 1 and report["lesions"][0]["voxels"] == 4 * 5 * 6
