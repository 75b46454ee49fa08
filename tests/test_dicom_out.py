"""DICOM out and what it says: RT Structure Sets that read back onto the PET grid voxel for
voxel (and a third party's, read as MIRP reads it), output names without identifying data,
the SUV calculation in the log and the report, Philips' private scale factors."""

import json
import logging

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_dicom import ACTIVITY, HALF_LIFE, _phantom_dicom

from petseg.cli import main
from petseg.dicom import read_pet, read_pet_suv
from petseg.errors import InputError
from petseg.rtstruct import fill_contours, read_rtstruct, slice_contours, write_rtstruct

from conftest import SHARED
from dicom_helpers import write_series

REF = SHARED


def lesions_zyx(shape=(6, 10, 12)) -> np.ndarray:
    """A ring with a hole, a lone voxel, two voxels touching only at a corner, a blob at the edge."""
    m = np.zeros(shape, np.uint8)
    m[1, 2:7, 2:7] = 1
    m[1, 4, 4] = 0
    m[2, 8, 10] = 1
    m[3, 1, 1] = m[3, 2, 2] = 1
    m[4:6, 0:3, 9:12] = 1
    return m


@given(arrays(np.uint8, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 1)))
@settings(max_examples=200, deadline=None)
def test_contours_fill_back_to_the_same_slice(slice_yx):
    np.testing.assert_array_equal(fill_contours(slice_contours(slice_yx), slice_yx.shape), slice_yx > 0)


def test_rtstruct_round_trip_on_the_pet_series(tmp_path):
    write_series(tmp_path / "pet", ACTIVITY, origin=(-100.0, -80.0, 50.0), spacing=(4.0, 3.5, 3.0))
    pet = read_pet(tmp_path / "pet")
    mask = sitk.GetImageFromArray(lesions_zyx())
    mask.CopyInformation(pet.image)
    assert write_rtstruct(mask, pet.datasets, tmp_path / "rt.dcm") == 1.0
    back = read_rtstruct(tmp_path / "rt.dcm", pet.image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), lesions_zyx())
    ds = pydicom.dcmread(tmp_path / "rt.dcm")
    assert ds.Modality == "RTSTRUCT" and ds.StudyInstanceUID == pet.datasets[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == pet.datasets[0].FrameOfReferenceUID
    sops = {d.SOPInstanceUID: d for d in pet.datasets}
    for contour in ds.ROIContourSequence[0].ContourSequence:  # each on the PET slice it names
        z = float(contour.ContourData[2])
        assert float(sops[contour.ContourImageSequence[0].ReferencedSOPInstanceUID].ImagePositionPatient[2]) == z


def test_an_empty_mask_gives_an_roi_without_contours(tmp_path):
    write_series(tmp_path / "pet", ACTIVITY)
    pet = read_pet(tmp_path / "pet")
    empty = sitk.Image(pet.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(pet.image)
    assert write_rtstruct(empty, pet.datasets, tmp_path / "rt.dcm") == 1.0
    assert not sitk.GetArrayFromImage(read_rtstruct(tmp_path / "rt.dcm", pet.image)).any()


@pytest.mark.skipif(not (REF / "sts001-fdg-pet-dicom").is_dir(), reason="../shared/reference not present")
def test_a_clinical_rtstruct_reads_as_the_ibsi_export_of_the_same_tumour(tmp_path):
    pet = read_pet(REF / "sts001-fdg-pet-dicom" / "pet")
    rtstruct = next((REF / "sts001-fdg-pet-dicom" / "rtstruct").iterdir())
    with pytest.raises(InputError, match="holds 2 ROIs, name one: GTV_Edema, GTV_Mass"):
        read_rtstruct(rtstruct, pet.image)
    mass = read_rtstruct(rtstruct, pet.image, roi="GTV_Mass")
    ibsi = sitk.ReadImage(str(REF / "ibsi-sts-pet-ct" / "STS_001" / "PET_mask.nii.gz"))
    ours = sitk.GetArrayFromImage(sitk.Resample(mass, ibsi, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    assert ours.sum() == sitk.GetArrayFromImage(mass).sum() > 1000  # all of it lies in the IBSI crop
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(ibsi) > 0)
    assert write_rtstruct(mass, pet.datasets, tmp_path / "rt.dcm") == 1.0  # and ours gives it back


def test_not_an_rtstruct_and_a_missing_roi_are_one_line(tmp_path):
    write_series(tmp_path / "pet", ACTIVITY)
    pet = read_pet(tmp_path / "pet")
    with pytest.raises(InputError, match="not a readable RT Structure Set"):
        read_rtstruct(next((tmp_path / "pet").iterdir()), pet.image)
    mask = sitk.GetImageFromArray(lesions_zyx())
    mask.CopyInformation(pet.image)
    write_rtstruct(mask, pet.datasets, tmp_path / "rt.dcm")
    with pytest.raises(InputError, match="no ROI 'GTV' \\(it holds Lesion\\)"):
        read_rtstruct(tmp_path / "rt.dcm", pet.image, roi="GTV")


def _predict(tmp_path, model, *extra):
    args = ["predict", "--pet-dicom", str(tmp_path / "pet"), "--ct-dicom", str(tmp_path / "ct")]
    return main([*args, "-o", str(tmp_path / "out"), "--model-dir", str(model), "--device", "cpu", *extra])


def test_dicom_outputs_carry_no_identifying_names_unless_asked(tmp_path, tiny_model_dir, caplog):
    _phantom_dicom(tmp_path)
    with caplog.at_level(logging.DEBUG, logger="petseg"):
        assert _predict(tmp_path, tiny_model_dir, "--rtstruct", "--report", "--dicom-seg", "-v") == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    case = names[0].split("_")[0].split(".")[0]
    assert case.startswith("pet-") and len(case) == 16
    assert all("PH001" not in n and "20200101" not in n and "Phantom" not in n for n in names)
    assert f"{case}_rtstruct.dcm" in names and f"{case}_seg.dcm" in names
    assert "SUV: units BQML, method SUVbw" in caplog.text and "Dice 1.0000 with the mask" in caplog.text
    rt = read_rtstruct(tmp_path / "out" / f"{case}_rtstruct.dcm", read_pet(tmp_path / "pet").image)
    mask = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(rt), sitk.GetArrayFromImage(mask))
    report = json.loads((tmp_path / "out" / f"{case}_lesions.json").read_text())
    audit = report["suv_calculation"]
    assert audit["weight_kg"] == 70.0 and audit["dose_bq"] == 3.7e8 and audit["elapsed_s"] == 3600.0
    assert audit["factor"] == pytest.approx(70_000.0 / (3.7e8 * 2 ** (-3600.0 / HALF_LIFE)))
    (tmp_path / "out").rename(tmp_path / "first")
    assert _predict(tmp_path, tiny_model_dir) == 0
    assert (tmp_path / "out" / f"{case}.nii.gz").is_file()  # stable: the same series, the same name
    assert _predict(tmp_path, tiny_model_dir, "--dicom-names") == 0
    assert (tmp_path / "out" / "PH001_20200101.nii.gz").is_file()


@pytest.mark.parametrize("flag", ["--rtstruct", "--dicom-names", "--dicom-seg"])
def test_dicom_output_options_need_dicom_input(flag, tmp_path, tiny_model_dir, capsys):
    args = ["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--model-dir", str(tiny_model_dir), flag]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "needs DICOM input" in err[0]


def _philips(folder, tag, value):
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
        ds.add_new(tag, "DS", value)
        ds.save_as(path)


def test_philips_counts_with_the_activity_scale_factor_give_the_bqml_suv(tmp_path):
    write_series(tmp_path / "bqml", ACTIVITY)
    write_series(tmp_path / "cnts", ACTIVITY / 2.5, units="CNTS")  # counts x 2.5 = Bq/ml
    _philips(tmp_path / "cnts", (0x7053, 0x1009), "2.5")
    expected = sitk.GetArrayFromImage(read_pet_suv(tmp_path / "bqml")[0])
    philips = read_pet(tmp_path / "cnts")
    np.testing.assert_allclose(sitk.GetArrayFromImage(philips.image), expected, rtol=2e-4)
    assert philips.suv.activity_scale == 2.5 and philips.suv.method == "SUVbw"


def test_the_suv_factor_wins_over_the_activity_scale(tmp_path):
    write_series(tmp_path / "cnts", ACTIVITY, units="CNTS")
    _philips(tmp_path / "cnts", (0x7053, 0x1000), "0.0002")
    _philips(tmp_path / "cnts", (0x7053, 0x1009), "2.5")
    pet = read_pet(tmp_path / "cnts")
    assert pet.suv.factor == 0.0002 and pet.suv.method.startswith("Philips SUV scale factor")


def test_admin_decay_correction_is_recorded(tmp_path):
    write_series(tmp_path / "pet", ACTIVITY, decay_correction="ADMIN")
    audit = read_pet(tmp_path / "pet").suv.as_dict()
    assert audit["decay_correction"] == "ADMIN" and "elapsed_s" not in audit
    assert audit["factor"] == pytest.approx(70_000.0 / 3.7e8)


@pytest.mark.parametrize("extra", [["--ct", "ct.nii.gz"], ["-i", "."], ["--pet", "pet.nii.gz"]])
def test_dicom_folders_and_files_together_are_refused(extra, tmp_path, tiny_model_dir, capsys):
    _phantom_dicom(tmp_path)
    assert _predict(tmp_path, tiny_model_dir, *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not both" in err[0] and extra[0] in err[0]


def test_a_bad_name_is_refused_before_any_work(tmp_path, tiny_model_dir, capsys):
    _phantom_dicom(tmp_path)
    assert _predict(tmp_path, tiny_model_dir, "--name", "P 7") == 1
    assert "case name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_pet_only_model_reads_no_ct_series(tmp_path, pet_model_dir):
    _phantom_dicom(tmp_path)
    for path in (tmp_path / "ct").iterdir():  # a CT folder that would not read
        path.write_bytes(b"not DICOM")
    assert _predict(tmp_path, pet_model_dir) == 0
    assert len(list((tmp_path / "out").glob("pet-*.nii.gz"))) == 1
