"""DICOM input: series discovery, SUVbw conversion and its refusals, DICOM-SEG and reports."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.cli import main
from petseg.dicom import find_series, read_ct, read_pet_suv
from petseg.errors import InputError

from conftest import SHARED
from dicom_helpers import write_series

SHAPE = (6, 10, 12)  # (z, y, x)
ACTIVITY = np.linspace(1000.0, 30000.0, np.prod(SHAPE)).reshape(SHAPE)  # Bq/ml
HALF_LIFE = 6586.2


def suv_of(elapsed_s, weight=70.0, dose=3.7e8):
    return ACTIVITY * weight * 1000.0 / (dose * 2 ** (-elapsed_s / HALF_LIFE))


def read(folder, **kw):
    image, datasets = read_pet_suv(folder, **kw)
    return sitk.GetArrayFromImage(image), image, datasets


def test_start_decay_correction_and_geometry(tmp_path):
    write_series(tmp_path / "pet", ACTIVITY)
    suv, image, _ = read(tmp_path / "pet")
    np.testing.assert_allclose(suv, suv_of(3600.0), rtol=2e-4)  # int16 storage with slope 0.01
    assert image.GetSpacing() == pytest.approx((4.0, 3.5, 3.0))
    assert image.GetOrigin() == pytest.approx((-100.0, -80.0, 50.0))


def test_admin_decay_correction_does_not_decay_the_dose(tmp_path):
    write_series(tmp_path / "pet", ACTIVITY, decay_correction="ADMIN")
    np.testing.assert_allclose(read(tmp_path / "pet")[0], suv_of(0.0), rtol=2e-4)


@pytest.mark.parametrize("with_date", [False, True])
def test_injection_before_midnight_scan_after(tmp_path, with_date):
    kw = dict(series_date="20200102", series_time="003000", injection_time="233000")
    if with_date:
        kw["injection_datetime"] = "20200101233000"
    write_series(tmp_path / "pet", ACTIVITY, **kw)
    np.testing.assert_allclose(read(tmp_path / "pet")[0], suv_of(3600.0), rtol=2e-4)


def test_rescale_slope_differs_per_slice(tmp_path):
    slopes = [1.0, 3.0, 1.5, 7.0, 2.5, 5.0]  # Bq/ml per stored unit
    write_series(tmp_path / "pet", ACTIVITY, slopes=slopes, decay_correction="ADMIN")
    got = read(tmp_path / "pet")[0]
    for k, slope in enumerate(slopes):  # exact up to the storage rounding of that slice
        np.testing.assert_allclose(got[k], suv_of(0.0)[k], atol=slope * 70000 / 3.7e8 * 0.51)


def test_slices_are_sorted_by_position_not_file_name(tmp_path):
    paths = write_series(tmp_path / "pet", ACTIVITY, decay_correction="ADMIN")
    for i, path in enumerate(reversed(paths)):
        path.rename(path.with_name(f"x{i:03d}.dcm"))
    np.testing.assert_allclose(read(tmp_path / "pet")[0], suv_of(0.0), rtol=2e-4)


def test_units_already_suv_and_philips_counts(tmp_path):
    write_series(tmp_path / "gml", ACTIVITY / 1000, units="GML", dose=None, weight=None)
    np.testing.assert_allclose(read(tmp_path / "gml")[0], ACTIVITY / 1000, rtol=1e-3, atol=0.006)
    write_series(tmp_path / "cnts", ACTIVITY, units="CNTS")
    import pydicom

    for path in (tmp_path / "cnts").iterdir():  # the Philips private SUV scale factor
        ds = pydicom.dcmread(path)
        ds.add_new((0x7053, 0x0010), "LO", "Philips PET Private Group")
        ds.add_new((0x7053, 0x1000), "DS", "0.0002")
        ds.save_as(path)
    np.testing.assert_allclose(read(tmp_path / "cnts")[0], ACTIVITY * 0.0002, rtol=2e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(weight=0.0), "patient weight 0.0 kg is missing or absurd"),
        (dict(weight=None), "patient weight 0.0 kg is missing or absurd"),
        (dict(dose=0.0), "injected dose 0.0 Bq is missing or not positive"),
        (dict(half_life=None), "half-life"),
        (dict(injection_datetime="20200101120000"), "is after the decay-correction reference time"),
        (dict(injection_datetime="20191230100000"), "h between injection and scan: implausible"),
        (dict(injection_time=None), "no injection time"),
        (dict(units="PROPCPS"), "PET units PROPCPS"),
        (dict(units="CNTS"), "without a Philips SUV scale factor"),
        (dict(decay_correction="NONE"), "Decay Correction NONE"),
    ],
)
def test_refused_inputs_are_one_line_errors(tmp_path, kwargs, message):
    write_series(tmp_path / "pet", ACTIVITY, **kwargs)
    with pytest.raises(InputError, match=message) as err:
        read_pet_suv(tmp_path / "pet")
    assert str(tmp_path / "pet") in str(err.value) and "\n" not in str(err.value)


def test_several_series_are_listed_unless_one_is_chosen(tmp_path):
    write_series(tmp_path / "mixed" / "a", ACTIVITY)
    write_series(tmp_path / "mixed" / "b", ACTIVITY * 2)
    write_series(tmp_path / "mixed" / "ct", np.zeros(SHAPE), modality="CT")
    (tmp_path / "mixed" / "README.txt").write_text("not dicom")
    series = find_series(tmp_path / "mixed")
    assert sorted(s.modality for s in series) == ["CT", "PT", "PT"]
    with pytest.raises(InputError, match="2 PT series found, choose one with --pet-series UID") as err:
        read_pet_suv(tmp_path / "mixed")
    pets = [s for s in series if s.modality == "PT"]
    assert all(s.uid in str(err.value) for s in pets)
    doubled = read_pet_suv(tmp_path / "mixed", uid=pets[0].uid)[0]
    assert sitk.GetArrayViewFromImage(doubled).max() > 0
    assert read_ct(tmp_path / "mixed").GetSize() == (12, 10, 6)


REF_DICOM = SHARED / "sts001-fdg-pet-dicom" / "pet"
REF_SUV = SHARED / "ibsi-sts-pet-ct" / "STS_001" / "PET_image.nii.gz"


@pytest.mark.skipif(not (REF_DICOM.is_dir() and REF_SUV.is_file()), reason="../shared/reference not present")
def test_real_fdg_series_matches_the_independent_suv_export():
    suv, datasets = read_pet_suv(REF_DICOM)
    assert suv.GetSize() == (128, 128, 267) and len(datasets) == 267
    reference = sitk.ReadImage(str(REF_SUV))
    ours = sitk.GetArrayFromImage(sitk.Resample(suv, reference, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0))
    ref = sitk.GetArrayFromImage(reference)
    diff = np.abs(ours - ref)
    assert diff.max() < 1e-3  # measured: 0.00078 (the export's rounding is ~0.0008)
    assert np.median(diff / np.maximum(np.abs(ref), 1e-6)) < 1e-5  # measured: 1.2e-7


def _phantom_dicom(tmp_path):
    """A phantom study as DICOM: PET in Bq/ml (START), CT in HU, one frame of reference."""
    from petseg.phantom import make_study

    study = make_study(seed=9, shape=(24, 20, 40), spacing=(8.0, 9.0, 10.0), n_lesions=2)
    elapsed, weight, dose = 3600.0, 70.0, 3.7e8
    suv = sitk.GetArrayFromImage(study.pet)
    activity = suv * dose * 2 ** (-elapsed / HALF_LIFE) / (weight * 1000.0)
    origin = study.pet.GetOrigin()
    kw = dict(spacing=study.pet.GetSpacing(), origin=origin, study_uid="1.2.3.4", frame_uid="1.2.3.5")
    write_series(tmp_path / "pet", activity, slopes=np.full(40, activity.max() / 30000), **kw)
    write_series(tmp_path / "ct", sitk.GetArrayFromImage(study.ct).astype(float), modality="CT", **kw)
    return study


def test_convert_dicom_writes_the_autopet_files(tmp_path):
    study = _phantom_dicom(tmp_path)
    assert (
        main(
            [
                "convert-dicom",
                "--pet-dicom",
                str(tmp_path / "pet"),
                "--ct-dicom",
                str(tmp_path / "ct"),
                "-o",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["CT.nii.gz", "CTres.nii.gz", "SUV.nii.gz"]
    suv = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "SUV.nii.gz")))
    np.testing.assert_allclose(suv, sitk.GetArrayFromImage(study.pet), atol=2e-3)


def test_predict_dicom_writes_mask_dicom_seg_and_report(tmp_path, tiny_model_dir):
    import highdicom as hd
    import pydicom

    _phantom_dicom(tmp_path)
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--pet-dicom",
                str(tmp_path / "pet"),
                "--ct-dicom",
                str(tmp_path / "ct"),
                "-o",
                str(out),
                "--model-dir",
                str(tiny_model_dir),
                "--device",
                "cpu",
                "--dicom-seg",
                "--report",
            ]
        )
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    (mask_name,) = [n for n in names if n.endswith(".nii.gz")]
    case = mask_name[: -len(".nii.gz")]
    assert names == [f"{case}.nii.gz", f"{case}_lesions.csv", f"{case}_lesions.json", f"{case}_seg.dcm"]
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out / mask_name)))
    seg = hd.seg.segread(out / f"{case}_seg.dcm")
    assert seg.SeriesDescription.startswith("petseg")
    pet_series_uid = pydicom.dcmread(next((tmp_path / "pet").iterdir())).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == pet_series_uid
    pet_files = sorted((tmp_path / "pet").iterdir())
    sop_uids = [pydicom.dcmread(p).SOPInstanceUID for p in pet_files]  # files are in slice order here
    volume = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(volume, mask)
    report = json.loads((out / f"{case}_lesions.json").read_text())
    assert report["lesion_count"] == len(report["lesions"])


def test_report_numbers_by_construction(tmp_path):
    from petseg.report import lesion_report

    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:4, 3:5, 4:6] = 1  # 8 voxels around index (x 4.5, y 3.5, z 2.5)
    pet = np.ones(mask.shape, np.float32)
    pet[mask > 0] = 3.0
    pet[3, 4, 5] = 7.0
    images = []
    for array in (mask, pet):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 3.0, 4.0))
        image.SetOrigin((10.0, 20.0, 30.0))
        images.append(image)
    report = lesion_report(images[0], images[1], case="c")
    assert report["lesion_count"] == 1 and report["tmtv_ml"] == pytest.approx(8 * 0.024)
    (lesion,) = report["lesions"]
    assert (lesion["centroid_x_mm"], lesion["centroid_y_mm"], lesion["centroid_z_mm"]) == (19.0, 30.5, 40.0)
    assert lesion["suv_max"] == 7.0 and lesion["suv_mean"] == pytest.approx((7 * 3 + 7) / 8)
    assert report["tlg"] == pytest.approx(0.024 * (7 * 3 + 7))
