"""Inputs that read but are wrong, and files that would make a reader hang or read outside its
folder: each is refused in one line naming the file and the value (or warned about), never
run to an exit-0 result. One test (or case) per finding of the second hostile round."""

import gzip
import os
import shutil
import signal
import struct
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.checks import check_network_size, coverage
from petseg.cli import main
from petseg.errors import InputError
from petseg.io import read_image
from petseg.preprocess import validate_pair
from petseg.settings import Settings

from conftest import DIRECTIONS, ROOT, RUN_FILES, blob_study, make_image

sys.path.insert(0, str(ROOT))


def study():
    """A blob study with air in front of the body (a CT in HU)."""
    ct, pet = blob_study(ct_grid="same")
    hu = sitk.GetArrayFromImage(ct)
    hu[:, :3, :] = -1000.0
    out = sitk.GetImageFromArray(hu)
    out.CopyInformation(ct)
    return out, pet


def refusal(ct, pet, **settings):
    with pytest.raises(InputError) as err:
        validate_pair(ct, pet, settings=Settings(**settings), ct_source="ct.nii.gz", pet_source="pet.nii.gz")
    assert "\n" not in str(err.value)
    return str(err.value)


def predict_folder(tmp_path, ct, pet, *extra, ext=".nii.gz"):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    for channel, image in (("0000", ct), ("0001", pet)):
        sitk.WriteImage(image, str(src / f"case_{channel}{ext.lower()}"))  # ITK writes lower-case names only
        if ext != ext.lower():
            (src / f"case_{channel}{ext.lower()}").rename(src / f"case_{channel}{ext}")
    return src


def outputs(folder):
    return (
        sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name not in RUN_FILES) if folder.exists() else []
    )


# --- geometry: a human study in mm, CT and PET in one space --------------------------------------


def test_a_ct_moved_sideways_is_refused_with_both_boxes():
    ct, pet = study()
    ct.SetOrigin(tuple(np.asarray(ct.GetOrigin()) + (400.0, 0.0, 0.0)))
    message = refusal(ct, pet)
    assert "do not overlap in space" in message and "CT x " in message and "PET x " in message


def test_a_ct_covering_a_fifth_of_the_transaxial_area_is_refused():
    ct, pet = study()
    ct.SetOrigin(tuple(np.asarray(ct.GetOrigin()) + (0.8 * 40 * 3.1, 0.0, 0.0)))
    assert "of the PET's transaxial area" in refusal(ct, pet)


def test_coverage_is_measured_along_the_patients_axes_whatever_the_storage_order():
    """A PET stored with its axes permuted and a CT of its first third along head-feet: the
    same refusal as for the same study stored plainly."""
    ct, pet = study()
    short = ct[:, :, :10]
    plain = refusal(short, pet)
    permuted = sitk.PermuteAxes(pet, [1, 2, 0])
    assert coverage(short, permuted) == coverage(short, pet)
    assert "of the PET's axial extent" in plain and "of the PET's axial extent" in refusal(short, permuted)


def test_coverage_of_oblique_grids_counts_what_really_overlaps():
    """A thin CT strip across the PET's diagonal: its bounding box covers the PET, the CT does not."""
    ct, pet = study()
    strip = sitk.Image([140, 10, 40], sitk.sitkFloat32)
    strip.SetSpacing((2.0, 2.0, 4.3))
    rotation = DIRECTIONS["oblique"] @ np.diag([1.0, -1.0, 1.0])
    strip.SetDirection(tuple(rotation.ravel()))
    centre = np.asarray(pet.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in pet.GetSize()]))
    strip.SetOrigin(tuple(centre - rotation @ (np.array([139, 9, 39]) * np.array([2.0, 2.0, 4.3]) / 2)))
    covered = coverage(strip, pet)
    assert covered.axial == 1.0 and covered.transaxial < 0.25
    assert "of the PET's transaxial area" in refusal(strip - 1000.0, pet)


def test_a_whole_body_ct_narrower_than_the_pet_is_accepted():
    """autoPET's CTs (500 mm) are narrower than their PETs (814 mm): 38 % of the transaxial area."""
    pet = make_image(
        np.ones((100, 100, 40), np.float32) * 3, spacing=(8.14, 8.14, 4.0), origin=(-403, -403, 0), direction=np.eye(3)
    )
    ct = make_image(
        np.full((100, 100, 40), -1000.0, np.float32),
        spacing=(5.0, 5.0, 4.0),
        origin=(-247.5, -247.5, 0),
        direction=np.eye(3),
    )
    covered = coverage(ct, pet)
    assert covered.axial == 1.0 and covered.transaxial == pytest.approx(0.38, abs=0.02)
    validate_pair(ct, pet, settings=Settings())


@pytest.mark.parametrize(
    "spacing, problem",
    [
        ((0.004, 0.004, 0.004), "spacing 0.004 x 0.004 x 0.004 mm lies outside 0.3-10 mm"),  # a header in metres
        ((0.1, 0.1, 10.0), "spacing 0.1 x 0.1 x 10 mm lies outside"),
        ((50.0, 50.0, 50.0), "spacing 50 x 50 x 50 mm lies outside"),
    ],
)
def test_spacings_of_no_human_scan_are_refused(spacing, problem):
    ct, pet = study()
    for image in (ct, pet):
        image.SetSpacing(spacing)
    assert problem in refusal(ct, pet)


@pytest.mark.parametrize("pixels, spacing", [((300, 20, 30), (10.0, 2.4, 4.3)), ((12, 12, 30), (3.1, 3.1, 4.3))])
def test_a_transaxial_field_of_view_beyond_a_body_is_refused(pixels, spacing):
    pet = make_image(np.ones(pixels, np.float32) * 3, spacing=spacing, origin=(0, 0, 0), direction=np.eye(3))
    ct = make_image(np.full(pixels, -1000.0, np.float32), spacing=spacing, origin=(0, 0, 0), direction=np.eye(3))
    assert "the transaxial extent must lie within 50-1000 mm" in refusal(ct, pet)


def test_a_two_slice_pet_makes_too_small_a_network_grid():
    ct, pet = study()
    with pytest.raises(InputError, match="fewer than 8 voxels along an axis"):
        check_network_size(pet[:, :, :2], (2.0, 2.0, 2.0), source="pet")


def test_a_network_grid_beyond_the_budget_is_refused_before_any_allocation():
    pet = sitk.Image([100, 100, 300], sitk.sitkFloat32)
    pet.SetSpacing((10.0, 10.0, 10.0))  # 1 m x 1 m x 3 m at 2 mm: 375 M voxels
    with pytest.raises(InputError, match="above the budget of 250,000,000 voxels"):
        check_network_size(pet, (2.0, 2.0, 2.0), source="pet")


def test_an_origin_beyond_any_scanner_is_refused(tmp_path):
    ct, _ = study()
    ct.SetOrigin((1e30, 0.0, 0.0))
    sitk.WriteImage(ct, str(tmp_path / "ct.mha"))
    with pytest.raises(InputError, match="origin .* is not a finite point"):
        read_image(tmp_path / "ct.mha")


# --- values: SUV and HU, the right way round ----------------------------------------------------


def test_swapped_ct_and_pet_are_named_as_swapped():
    ct, pet = study()
    message = refusal(pet, ct)  # the PET given as CT and the CT as PET
    assert "CT and PET look swapped" in message and "Bq/ml" not in message


def test_a_pet_far_below_zero_is_refused_and_one_like_a_ct_says_so():
    ct, pet = study()
    values = sitk.GetArrayFromImage(pet)
    values[values < 2] = -500.0  # background -500, lesions as they were
    shifted = sitk.GetImageFromArray(values)
    shifted.CopyInformation(pet)
    assert "PET minimum -500 lies far below 0 (values of a CT in HU?)" in refusal(ct, shifted)
    noisy = sitk.GetArrayFromImage(pet)
    noisy[0, 0, :5] = -3.0  # reconstruction noise: fine
    image = sitk.GetImageFromArray(noisy)
    image.CopyInformation(pet)
    validate_pair(ct, image, settings=Settings())


def test_a_pet_without_uptake_is_refused_and_a_faint_one_warned(caplog):
    ct, pet = study()
    assert "is too low for SUV" in refusal(ct, pet / 6.0 * 1e-6)
    with caplog.at_level("WARNING"):
        validate_pair(ct, pet / 6.0, settings=Settings(), pet_source="pet.nii.gz")
    assert any("PET maximum 1 SUV is low for a human PET" in r.getMessage() for r in caplog.records)


def test_every_check_runs_for_images_given_in_memory_too():
    ct, pet = study()
    bad = sitk.Image([40, 36, 30], sitk.sitkVectorFloat32, 3)
    assert "expected a scalar image" in refusal(ct, bad)


# --- confined reads -----------------------------------------------------------------------------


def metaimage(tmp_path, name="pet.mhd", compress=False):
    _, pet = study()
    sitk.WriteImage(pet, str(tmp_path / name), useCompression=compress)
    return tmp_path / name


def rewrite_header(path, old, new):
    data = path.read_bytes()
    assert old.encode() in data
    path.write_bytes(data.replace(old.encode(), new.encode(), 1))


@pytest.mark.parametrize(
    "data_file, problem",
    [
        ("/etc/passwd", "is outside the header's folder"),
        ("../pet.raw", "is outside the header's folder"),
        ("LIST 2D", "a list or pattern of files"),
        ("slice%03d.raw 0 9 1", "a list or pattern of files"),
        ("missing.raw", "not found beside the header"),
    ],
)
def test_a_metaimage_reads_its_voxels_only_from_beside_its_header(tmp_path, data_file, problem):
    path = metaimage(tmp_path)
    rewrite_header(path, "ElementDataFile = pet.raw", f"ElementDataFile = {data_file}")
    with pytest.raises(InputError, match=problem):
        read_image(path)


def test_a_link_beside_the_header_to_a_file_elsewhere_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    path = metaimage(tmp_path / "in")
    elsewhere = tmp_path / "elsewhere.raw"
    shutil.move(path.with_suffix(".raw"), elsewhere)
    os.symlink(elsewhere, path.with_suffix(".raw"))
    with pytest.raises(InputError, match="a link to a file outside the header's folder"):
        read_image(path)


@pytest.fixture()
def no_hang():
    """Fail a test that blocks (a reader waiting on a FIFO) instead of hanging the suite."""

    def expire(signum, frame):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_fifos_are_refused_without_reading_them(tmp_path, no_hang):
    """A FIFO as the image, as a header's data file or as a clicks file would block a reader forever."""
    fifo = tmp_path / "pet.mha"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_image(fifo)
    path = metaimage(tmp_path, "ct.mhd")
    os.remove(path.with_suffix(".raw"))
    os.mkfifo(path.with_suffix(".raw"))
    with pytest.raises(InputError, match="not a regular file"):
        read_image(path)
    from petseg.clicks import check_clicks_file

    os.mkfifo(tmp_path / "clicks.json")
    with pytest.raises(InputError, match="not a regular file"):
        check_clicks_file(tmp_path / "clicks.json")


def test_nrrd_data_files_are_confined_too(tmp_path):
    _, pet = study()
    sitk.WriteImage(pet, str(tmp_path / "pet.nhdr"))
    assert read_image(tmp_path / "pet.nhdr").GetSize() == pet.GetSize()
    rewrite_header(tmp_path / "pet.nhdr", "data file: pet.raw", "data file: /etc/passwd")
    with pytest.raises(InputError, match="is outside the header's folder"):
        read_image(tmp_path / "pet.nhdr")


def test_a_huge_header_over_a_tiny_file_is_refused_before_allocating(tmp_path):
    path = metaimage(tmp_path, "ct.mha")
    rewrite_header(path, "DimSize = 40 36 30", "DimSize = 100000 100000 100000")
    with pytest.raises(InputError, match="voxel data of 172,800 bytes where the header declares 4,000,000,000,000,000"):
        read_image(path)
    _, pet = study()
    data = nifti_bytes(pet, tmp_path)
    data[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)
    (tmp_path / "pet.nii.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(InputError, match="is 27,000,000,000,000 voxels, above the 1,000,000,000 allowed"):
        read_image(tmp_path / "pet.nii.gz")
    data[40:56] = struct.pack("<8h", 3, 1000, 1000, 600, 1, 1, 1, 1)
    data[70:72] = struct.pack("<h", 64)  # float64: 0.6 G voxels, 4.5 GiB as stored
    (tmp_path / "pet.nii.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(InputError, match="at 8 bytes a voxel is 4.5 GiB, above the 4 GiB allowed"):
        read_image(tmp_path / "pet.nii.gz")


@pytest.mark.parametrize("compress", [True, False])
def test_a_metaimage_with_non_finite_geometry_is_refused(tmp_path, compress):
    path = metaimage(tmp_path, "ct.mha", compress=compress)
    offset = next(ln for ln in path.read_bytes().split(b"\n") if ln.startswith(b"Offset")).decode()
    rewrite_header(path, offset, "Offset = nan 0 0")
    with pytest.raises(InputError, match="header field 'Offset' holds 'nan 0 0': expected 3 finite numbers"):
        read_image(path)


def test_corrupt_compressed_metaimage_data_are_refused(tmp_path):
    """ITK decompresses these into garbage without an error."""
    path = metaimage(tmp_path, "ct.mha", compress=True)
    data = bytearray(path.read_bytes())
    start = data.index(b"LOCAL\n") + 6
    middle = (start + len(data)) // 2
    data[middle : middle + 50] = bytes(b ^ 0xFF for b in data[middle : middle + 50])
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="compressed voxel data are corrupt"):
        read_image(path)
    path = metaimage(tmp_path, "pet.mha", compress=True)
    size = next(ln for ln in path.read_bytes().split(b"\n") if ln.startswith(b"CompressedDataSize")).decode()
    rewrite_header(path, size, "CompressedDataSize = 100")
    with pytest.raises(InputError, match="compressed voxel data are truncated"):
        read_image(path)


def nifti_bytes(image, folder):
    sitk.WriteImage(image, str(folder / "original.nii.gz"))
    return bytearray(gzip.decompress((folder / "original.nii.gz").read_bytes()))


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda b: b.__setitem__(slice(108, 112), struct.pack("<f", float("nan"))), "vox_offset nan"),
        (lambda b: b.__setitem__(slice(108, 112), struct.pack("<f", 100.0)), "vox_offset 100"),
        (lambda b: b.__setitem__(slice(80, 84), struct.pack("<f", 0.0)), "pixdim .* is not a positive voxel size"),
        (lambda b: b.__setitem__(slice(84, 88), struct.pack("<f", 5.0)), "disagrees with the sform's voxel size"),
    ],
)
def test_nifti_headers_itk_would_read_wrongly_are_refused(tmp_path, damage, problem):
    _, pet = study()
    data = nifti_bytes(pet, tmp_path)
    damage(data)
    (tmp_path / "pet.nii.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(InputError, match=problem):
        read_image(tmp_path / "pet.nii.gz")


def test_bitpix_does_not_switch_off_the_nifti_data_checks(tmp_path):
    _, pet = study()
    data = nifti_bytes(pet, tmp_path)
    data[72:74] = struct.pack("<h", 0)  # bitpix 0: the voxel size comes from the datatype
    (tmp_path / "pet.nii.gz").write_bytes(gzip.compress(bytes(data[: len(data) // 2])))
    with pytest.raises(InputError, match="bytes of voxel data missing"):
        read_image(tmp_path / "pet.nii.gz")


def test_a_plain_nifti_named_nii_gz_reads(tmp_path):
    _, pet = study()
    sitk.WriteImage(pet, str(tmp_path / "pet.nii"))
    shutil.copy(tmp_path / "pet.nii", tmp_path / "pet.nii.gz")
    assert read_image(tmp_path / "pet.nii.gz").GetSize() == pet.GetSize()


def test_a_vector_image_of_one_component_reads_as_scalar(tmp_path):
    _, pet = study()
    sitk.WriteImage(sitk.Compose(pet), str(tmp_path / "pet.nrrd"))
    image = read_image(tmp_path / "pet.nrrd")
    assert image.GetNumberOfComponentsPerPixel() == 1 and image.GetSize() == pet.GetSize()


# --- layouts: what a user's folder holds --------------------------------------------------------


def test_upper_case_extensions_are_read_and_outputs_get_lower_case_ones(tiny_model_dir, tmp_path):
    ct, pet = study()
    src = predict_folder(tmp_path, ct, pet, ext=".NII.GZ")
    out = tmp_path / "out"
    assert main(["predict", "-i", str(src), "-o", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]) == 0
    assert outputs(out) == ["case.nii.gz"]


def test_detached_headers_give_single_file_outputs(tiny_model_dir, tmp_path):
    """A .mhd output written through a temporary name would point at a data file that keeps
    the temporary name (and is removed as stale): outputs are single files."""
    ct, pet = study()
    src = predict_folder(tmp_path, ct, pet, ext=".mhd")
    out = tmp_path / "out"
    assert main(["predict", "-i", str(src), "-o", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]) == 0
    assert outputs(out) == ["case.mha"]
    assert read_image(out / "case.mha").GetSize() == pet.GetSize()


@pytest.mark.parametrize("kind", ["folder", "fifo", "broken link"])
def test_a_partner_file_that_is_not_an_image_file_is_named_for_what_it_is(tiny_model_dir, tmp_path, capsys, kind):
    ct, pet = study()
    src = predict_folder(tmp_path, ct, pet)
    target = src / "case_0001.nii.gz"
    target.unlink()
    {"folder": target.mkdir, "fifo": lambda: os.mkfifo(target), "broken link": lambda: target.symlink_to("gone")}[
        kind
    ]()
    argv = ["predict", "-i", str(src), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)]
    assert main([*argv, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    expected = {"folder": "found a folder", "fifo": "not a regular file", "broken link": "a broken symbolic link"}
    assert expected[kind] in err and "not found (expected beside" not in err and "Traceback" not in err


def test_evaluate_refuses_a_pet_predict_would_refuse_and_pairs_a_single_file(tmp_path, capsys):
    ct, pet = study()
    mask = sitk.Cast(pet > 3, sitk.sitkUInt8)
    for name, image in (("gt.nii.gz", mask), ("pred.nii.gz", mask), ("any_name.nii.gz", pet)):
        sitk.WriteImage(image, str(tmp_path / name))
    argv = ["evaluate", "--gt", str(tmp_path / "gt.nii.gz"), "--pred", str(tmp_path / "pred.nii.gz")]
    assert main([*argv, "--pet", str(tmp_path / "any_name.nii.gz")]) == 0
    sitk.WriteImage(pet * 5000.0, str(tmp_path / "bqml.nii.gz"))
    capsys.readouterr()
    assert main([*argv, "--pet", str(tmp_path / "bqml.nii.gz")]) == 1
    assert "looks like Bq/ml" in capsys.readouterr().err


def test_an_oblique_study_is_not_refused_by_the_new_checks():
    ct, pet = blob_study(direction=DIRECTIONS["oblique"])
    validate_pair(ct, pet, settings=Settings())


# --- headers read as strictly as ITK reads them (third hostile round) ---------------------------


@pytest.mark.parametrize(
    "old, new, problem",
    [
        # MetaIO's keys are case-sensitive: a look-alike before the real field would shadow it for us
        ("ElementDataFile = LOCAL", "elementdatafile = LOCAL\nElementDataFile = /dev/zero", "is given twice"),
        ("CompressedData = True", "CompressedData = True\ncompresseddata = False", "is given twice"),
        ("Offset = 0 0 0", "Offset = -92 -85.5", "'Offset' holds '-92 -85.5': expected 3 finite numbers"),
    ],
)
def test_metaimage_fields_that_itk_would_read_otherwise_are_refused(tmp_path, old, new, problem):
    path = metaimage(tmp_path, "ct.mha", compress=True)
    data = path.read_bytes()
    if old == "Offset = 0 0 0":
        old = next(ln for ln in data.split(b"\n") if ln.startswith(b"Offset")).decode()
    rewrite_header(path, old, new)
    with pytest.raises(InputError, match=problem):
        read_image(path)


def test_local_spelled_otherwise_is_a_file_name(tmp_path):
    """MetaIO treats only ``LOCAL`` as inline data: ``LoCaL`` names a file (here a link out)."""
    path = metaimage(tmp_path, "pet.mhd")
    os.symlink("/dev/zero", tmp_path / "LoCaL")
    rewrite_header(path, "ElementDataFile = pet.raw", "ElementDataFile = LoCaL")
    with pytest.raises(InputError, match="a link to a file outside the header's folder"):
        read_image(path)


def test_compressed_metaimage_data_need_their_size(tmp_path):
    path = metaimage(tmp_path, "ct.mha", compress=True)
    size = next(ln for ln in path.read_bytes().split(b"\n") if ln.startswith(b"CompressedDataSize")).decode()
    rewrite_header(path, size + "\n", "")
    with pytest.raises(InputError, match="compressed voxel data without a CompressedDataSize"):
        read_image(path)


def test_uncompressed_data_of_another_size_than_declared_are_refused(tmp_path):
    path = metaimage(tmp_path, "ct.mha")
    path.write_bytes(path.read_bytes() + b"\0" * 400)
    with pytest.raises(InputError, match="where the header declares 172,800"):
        read_image(path)


def nrrd_header(tmp_path, *lines, data=True):
    _, pet = study()
    sitk.WriteImage(pet, str(tmp_path / "pet.nhdr"))
    text = (tmp_path / "pet.nhdr").read_text()
    for old, new in lines:
        text = text.replace(old, new)
    (tmp_path / "pet.nhdr").write_text(text)
    return tmp_path / "pet.nhdr"


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("data file: pet.raw", "data file: LOCAL", "'LOCAL' is not found beside the header"),  # Teem opens "LOCAL"
        ("data file: pet.raw", "data file: /etc/passwd\ndata file:=pet.raw", "is outside the header's folder"),
        ("data file: pet.raw", "data file: pet.raw\ndatafile: ../x.raw", "is given twice"),
        ("space origin: ", "spaceorigin: (nan,nan,nan)\n# ", "'spaceorigin' holds"),
    ],
)
def test_nrrd_fields_that_teem_would_read_otherwise_are_refused(tmp_path, old, new, problem):
    path = nrrd_header(tmp_path, (old, new))
    with pytest.raises(InputError, match=problem):
        read_image(path)


@pytest.mark.parametrize(
    "setup",
    ["symlinked pair", "space in the name", "long header", "two gzip members", "./ data file"],
)
def test_legitimate_files_the_strict_parse_must_still_read(tmp_path, setup):
    _, pet = study()
    if setup == "symlinked pair":  # autoPET data are often links into a read-only store
        (tmp_path / "store").mkdir()
        sitk.WriteImage(pet, str(tmp_path / "store" / "pet.mhd"), useCompression=True)
        (tmp_path / "in").mkdir()
        for name in ("pet.mhd", "pet.zraw"):
            os.symlink(tmp_path / "store" / name, tmp_path / "in" / name)
        path = tmp_path / "in" / "pet.mhd"
    elif setup == "space in the name":
        path = tmp_path / "my pet.mhd"
        sitk.WriteImage(pet, str(path))
    elif setup == "long header":  # Slicer's segmentations carry 100s of KiB of metadata
        long = sitk.Image(pet)
        for i in range(1000):
            long.SetMetaData(f"Segment{i}_Name", "x" * 80)
        path = tmp_path / "pet.nrrd"
        sitk.WriteImage(long, str(path), useCompression=True)
    elif setup == "two gzip members":  # what bgzip and `cat a.gz b.gz` write
        raw = sitk.GetArrayFromImage(pet).astype("<f4").tobytes()
        path = nrrd_header(tmp_path, ("encoding: raw", "encoding: gzip"))
        (tmp_path / "pet.raw").write_bytes(gzip.compress(raw[:30000]) + gzip.compress(raw[30000:]))
    else:
        path = nrrd_header(tmp_path, ("data file: pet.raw", "data file: ./pet.raw"))
    image = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(pet))


def test_nifti_qform_and_offsets_itk_would_drop_are_refused(tmp_path):
    _, pet = study()
    data = nifti_bytes(pet, tmp_path)
    data[252:256] = struct.pack("<2h", 1, 0)  # qform only
    data[268:272] = struct.pack("<f", float("nan"))  # qoffset_x
    (tmp_path / "q.nii.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(InputError, match="qform quaternion/offset"):
        read_image(tmp_path / "q.nii.gz")
    data = nifti_bytes(pet, tmp_path)
    data[108:112] = struct.pack("<f", 1e10)
    (tmp_path / "o.nii.gz").write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(InputError, match="vox_offset 1e"):
        read_image(tmp_path / "o.nii.gz")


def test_a_nifti2_file_is_named_as_such(tmp_path):
    header = struct.pack("<i", 540) + b"n+2\0" + b"\0" * 540
    (tmp_path / "pet.nii").write_bytes(header)
    from petseg.nifti import check_nifti_data

    with pytest.raises(InputError, match="is a NIfTI-2 file, which ITK does not read"):
        check_nifti_data(tmp_path / "pet.nii", role="PET")
