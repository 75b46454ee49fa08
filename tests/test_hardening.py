"""Faults and messy inputs: each ends in one line on stderr (no traceback), a non-zero exit
code and exactly the expected files, or in a result with a WARNING that names the value."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import petseg.io
import petseg.layout
from petseg.cli import main
from petseg.errors import InputError, ModelError

from conftest import ROOT, RUN_FILES, blob_study, predict_cli
from dicom_helpers import write_series

sys.path.insert(0, str(ROOT))
import process  # noqa: E402


def files_under(root):
    """Files under ``root`` except the run manifest (a record of what happened, failures included)."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name not in RUN_FILES)


def study(*, ct_values=None, pet_scale=1.0, ct_slices=None):
    """blob_study with air around the body (a CT in HU), optionally changed."""
    ct, pet = blob_study(ct_grid="same")
    hu = sitk.GetArrayFromImage(ct)
    hu[:, :3, :] = -1000.0  # air in front of the patient
    if ct_values is not None:
        hu = ct_values(hu)
    new_ct = sitk.GetImageFromArray(hu.astype(np.float32))
    new_ct.CopyInformation(ct)
    if ct_slices is not None:
        new_ct = new_ct[:, :, :ct_slices]
    return new_ct, pet * pet_scale


def nnunet_case(root, ct, pet, name="case", ext=".nii.gz"):
    root.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct, str(root / f"{name}_0000{ext}"))
    sitk.WriteImage(pet, str(root / f"{name}_0001{ext}"))
    return root


def one_error_line(capsys, prog="petseg"):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith(f"{prog}: error:") or " ERROR " in ln]
    assert "Traceback" not in "\n".join(err)
    return err, errors


# --- full disk and half-written output ----------------------------------------------------------


class FullDiskSitk:
    """SimpleITK as petseg.io sees it on a full disk: WriteImage writes part of the file and
    raises nothing; everything else is the real module."""

    def __getattr__(self, name):
        return getattr(sitk, name)

    @staticmethod
    def WriteImage(image, path, useCompression=True):  # noqa: N802 (SimpleITK's name)
        sitk.WriteImage(image, path, useCompression)
        with open(path, "r+b") as fh:
            fh.truncate(max(1, os.path.getsize(path) // 3))


@pytest.fixture()
def full_disk(monkeypatch):
    monkeypatch.setattr(petseg.io, "sitk", FullDiskSitk())


def test_full_disk_predict_exits_1_and_publishes_nothing(full_disk, tiny_model_dir, tmp_path, capsys):
    src = nnunet_case(tmp_path / "in", *study())
    assert predict_cli(src, tmp_path / "out", tiny_model_dir, "--workers", "0") == 1  # the fault is patched in here
    _, errors = one_error_line(capsys)
    assert any(f"{tmp_path / 'out' / 'case.nii.gz'}: write failed, is the disk full?" in ln for ln in errors)
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize("interface", ["autopet3", "autopet4"])
def test_full_disk_container_exits_1_and_leaves_nothing(
    full_disk, interface, gc_input, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    args = ["--input", str(gc_input), "--output", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    assert process.main([*args, "--interface", interface]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "write failed, is the disk full?" in err[0], err
    assert files_under(out) == []


def test_json_failing_after_the_mask_leaves_neither(gc_input, tiny_model_dir, tmp_path, capsys, monkeypatch):
    real = petseg.io.os.replace

    def replace(src, dst):
        if str(dst).endswith(".mha"):
            raise OSError(28, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(petseg.io.os, "replace", replace)
    out = tmp_path / "out"
    args = ["--input", str(gc_input), "--output", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    assert process.main(args) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert files_under(out) == []  # data-centric-model.json was renamed first, then taken back


def test_real_tmpfs_without_space_is_refused_before_writing(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        ct, pet = study()
        with pytest.raises(petseg.io.OutputError, match="no space left for outputs"):
            petseg.io.write_image(ct, mount / "ct.nii.gz")
        assert os.listdir(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_convert_dicom_on_a_full_disk_writes_nothing(full_disk, tmp_path, capsys):
    write_series(tmp_path / "pet", ACTIVITY)
    assert main(["convert-dicom", "--pet-dicom", str(tmp_path / "pet"), "-o", str(tmp_path / "nifti")]) == 1
    assert "write failed" in capsys.readouterr().err
    assert files_under(tmp_path / "nifti") == []


KILLED_WRITER = """
import sys, time, SimpleITK as sitk, petseg.io
real = sitk.WriteImage
def slow(image, path, useCompression=True):
    with open(path, "wb") as fh:
        fh.write(b"partial")
        fh.flush()
    print("writing", flush=True)
    time.sleep(60)
petseg.io.sitk.WriteImage = slow
petseg.io.write_image(sitk.Image([8, 8, 8], sitk.sitkUInt8), sys.argv[1])
"""


def test_a_killed_write_leaves_no_target_and_the_next_run_cleans_up(tmp_path):
    target = tmp_path / "mask.mha"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert not target.exists() and len(leftovers) == 1 and ".partial" in leftovers[0]
    petseg.io.write_image(sitk.Image([8, 8, 8], sitk.sitkUInt8), target)
    assert [p.name for p in tmp_path.iterdir()] == ["mask.mha"]


ACTIVITY = np.linspace(1000.0, 20000.0, 4 * 6 * 5).reshape(4, 6, 5)  # Bq/ml, (z, y, x)


def drop(keyword):
    def damage(paths):
        import pydicom

        ds = pydicom.dcmread(paths[1])
        delattr(ds, keyword)
        ds.save_as(paths[1])
        return paths[1]

    return damage


def other_matrix(paths):
    import pydicom

    ds = pydicom.dcmread(paths[2])
    ds.Rows, ds.Columns = 3, 3
    ds.PixelData = np.zeros((3, 3), np.int16).tobytes()
    ds.save_as(paths[2])
    return paths[2]


def odd_time(paths):
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesTime = "25:99"
        ds.save_as(path)
    return paths[0]


@pytest.mark.parametrize(
    "damage, problem",
    [
        (drop("ImagePositionPatient"), "slice has no usable ImagePositionPatient"),
        (drop("PixelData"), "slice pixel data unusable"),
        (other_matrix, "slice matrix (3, 3) differs from the series' (6, 5)"),
        (odd_time, "malformed date/time '20200101' '25:99'"),
    ],
    ids=["no-position", "no-pixels", "mixed-matrix", "odd-time"],
)
def test_malformed_dicom_is_one_line_naming_the_file(damage, problem, tmp_path, capsys):
    bad = damage(write_series(tmp_path / "pet", ACTIVITY))
    assert main(["convert-dicom", "--pet-dicom", str(tmp_path / "pet"), "-o", str(tmp_path / "nifti")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: " in err[0] and problem in err[0], err
    assert files_under(tmp_path / "nifti") == []


def test_convert_dicom_of_a_pet_only_series_writes_the_suv(tmp_path, capsys):
    write_series(tmp_path / "pet", ACTIVITY)
    assert main(["convert-dicom", "--pet-dicom", str(tmp_path / "pet"), "-o", str(tmp_path / "nifti")]) == 0
    assert files_under(tmp_path / "nifti") == ["SUV.nii.gz"]


# --- silent wrong results: refused or warned before any network work ----------------------------


def nifti_with_nan(path, image):
    nib = pytest.importorskip("nibabel")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0).copy()
    array[3, 4, 5] = np.nan
    affine = np.diag([*image.GetSpacing(), 1.0])
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.mark.parametrize(
    "make, source, problem",
    [
        ("nan_nifti", "case_0001.nii.gz", "PET contains 1 NaN or infinite voxels"),
        ("bqml", "case_0001.nii.gz", "looks like Bq/ml or counts, not SUV"),
        ("negative_pet", "case_0001.nii.gz", "PET has no positive value"),
        ("stored_ct", "case_0000.nii.gz", "with no air: stored values without the rescale intercept?"),
        ("short_ct", "case_0000.nii.gz", "of the PET's axial extent"),
        ("sheared", "case_0001.nii.gz", "direction matrix is not orthonormal"),
        ("huge_spacing", "case_0000.nii.gz", "CT spacing 50 x 50 x 50 mm lies outside 0.3-10 mm per axis"),
    ],
)
def test_implausible_inputs_are_refused_before_the_network(make, source, problem, tiny_model_dir, tmp_path, capsys):
    ct, pet = study()
    if make == "bqml":
        ct, pet = study(pet_scale=5000.0)
    elif make == "negative_pet":
        ct, pet = study(pet_scale=-1.0)
    elif make == "stored_ct":
        ct, pet = study(ct_values=lambda hu: hu + 1024.0)
    elif make == "short_ct":
        ct, pet = study(ct_slices=6)
    elif make == "sheared":
        pet.SetDirection((1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))  # determinant 1, not orthonormal
    elif make == "huge_spacing":
        for image in (ct, pet):
            image.SetSpacing((50.0, 50.0, 50.0))
    ext = ".mha" if make == "sheared" else ".nii.gz"  # NIfTI's qform cannot hold a shear
    src = nnunet_case(tmp_path / "in", ct, pet, ext=ext)
    source = source.replace(".nii.gz", ext)
    if make == "nan_nifti":
        nifti_with_nan(src / "case_0001.nii.gz", pet)
    assert predict_cli(src, tmp_path / "out", tiny_model_dir) == 1
    _, errors = one_error_line(capsys)
    assert any(f"{src / source}: " in ln and problem in ln for ln in errors), errors
    assert files_under(tmp_path / "out") == []


def test_a_ct_without_air_and_a_partial_ct_run_with_warnings(tiny_model_dir, tmp_path, capsys):
    ct, pet = blob_study(ct_grid="same")  # CT 40 HU everywhere: no air
    ct = ct[:, :, :24]  # 80 % of the PET's axial extent
    src = nnunet_case(tmp_path / "in", ct, pet)
    assert predict_cli(src, tmp_path / "out", tiny_model_dir) == 0
    err = capsys.readouterr().err
    assert "CT minimum 40 HU: no air below -500 HU" in err and "CT covers only 80% of the PET's axial extent" in err
    assert files_under(tmp_path / "out") == ["case.nii.gz"]


# --- misleading messages -----------------------------------------------------------------------


def test_a_truncated_mha_says_so_in_one_line(tmp_path, capfd):
    ct, _ = study()
    path = tmp_path / "ct.mha"
    sitk.WriteImage(ct, str(path), useCompression=True)
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(InputError) as err:
        petseg.io.read_image(path, role="CT")
    assert "truncated, corrupt or not an image file" in str(err.value) and "No such file" not in str(err.value)
    assert capfd.readouterr().err == ""  # ITK's own MetaIO lines are not let through


def test_a_folder_where_an_image_is_expected(tmp_path):
    (tmp_path / "ct.mha").mkdir()
    with pytest.raises(InputError, match="expected an image file, found a folder"):
        petseg.io.read_image(tmp_path / "ct.mha", role="CT")


# --- security -----------------------------------------------------------------------------------


def test_a_model_file_outside_the_folder_is_refused(tiny_model_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "model.json").read_text())
    meta["folds"][0]["file"] = "../../../etc/passwd"
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="lies outside the model folder"):
        petseg.model.ModelFolder.open(model)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/petseg-pwned",))


def test_resume_refuses_a_checkpoint_that_runs_code(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"model": Payload()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # what train_fold's resume does
    assert not os.path.exists("/tmp/petseg-pwned")
    reader = (ROOT / "petseg" / "train" / "run.py").read_text()  # read_training_state, what resume calls
    assert "weights_only=True" in reader and "weights_only=False" not in reader


# --- qc and evaluate refuse masks they would misread -------------------------------------------


def test_qc_refuses_a_mask_on_another_grid(tmp_path, capsys):
    ct, pet = study()
    mask = sitk.Cast(pet > 2.5, sitk.sitkUInt8)
    mask.SetOrigin(tuple(o + 7.0 for o in mask.GetOrigin()))
    sitk.WriteImage(pet, str(tmp_path / "pet.nii.gz"))
    sitk.WriteImage(mask, str(tmp_path / "mask.nii.gz"))
    code = main(
        [
            "qc",
            "--pet",
            str(tmp_path / "pet.nii.gz"),
            "--mask",
            str(tmp_path / "mask.nii.gz"),
            "-o",
            str(tmp_path / "q.png"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'mask.nii.gz'}: grid differs from the PET" in err[0]
    assert not (tmp_path / "q.png").exists()


@pytest.mark.parametrize(
    "values, problem", [(0.7, "non-integer values (e.g. 0.7): a probability map?"), (-1.0, "negative values")]
)
def test_evaluate_refuses_probability_maps_and_negative_labels(values, problem, tmp_path, capsys):
    _, pet = study()
    gt = sitk.Cast(pet > 2.5, sitk.sitkFloat32)
    sitk.WriteImage(gt, str(tmp_path / "gt.nii.gz"))
    sitk.WriteImage(gt * values, str(tmp_path / "pred.nii.gz"))
    assert main(["evaluate", "--gt", str(tmp_path / "gt.nii.gz"), "--pred", str(tmp_path / "pred.nii.gz")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0] and "pred.nii.gz" in err[0]


# --- output paths, model folders, training options ---------------------------------------------


def test_output_that_is_a_file_is_refused_before_the_network(tiny_model_dir, tmp_path, capsys):
    src = nnunet_case(tmp_path / "in", *study())
    (tmp_path / "out").write_text("not a folder")
    assert predict_cli(src, tmp_path / "out", tiny_model_dir) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"petseg: error: {tmp_path / 'out'}: is a file; expected an output folder"]


def test_a_target_name_that_is_a_folder_is_refused(tiny_model_dir, tmp_path, capsys):
    src = nnunet_case(tmp_path / "in", *study())
    (tmp_path / "out" / "case.nii.gz").mkdir(parents=True)
    assert predict_cli(src, tmp_path / "out", tiny_model_dir) == 1
    _, errors = one_error_line(capsys)
    assert any("case.nii.gz: is a folder; cannot write a file there" in ln for ln in errors)


def test_unreadable_input_folder(tmp_path, capsys, monkeypatch):
    src = nnunet_case(tmp_path / "in", *study())
    if os.geteuid() == 0:  # root reads anything: deny as the file system would for another user
        real = os.access
        monkeypatch.setattr(petseg.layout.os, "access", lambda p, mode: False if p == src else real(p, mode))
    else:
        os.chmod(src, 0)
    try:
        assert main(["predict", "-i", str(src), "-o", str(tmp_path / "out")]) == 1
    finally:
        os.chmod(src, 0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"petseg: error: {src}: input folder is not readable (permission denied)"]


def test_model_json_with_an_argument_the_network_does_not_take(tiny_model_dir, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "model.json").read_text())
    meta["network"]["kwargs"]["dropout_rate"] = 0.1
    (model / "model.json").write_text(json.dumps(meta))
    src = nnunet_case(tmp_path / "in", *study())
    assert predict_cli(src, tmp_path / "out", model) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{model / 'model.json'}: invalid model description: network.kwargs: " in err[0]
    assert "unknown field dropout_rate" in err[0]


# --- every subcommand with every invalid option value: one line, no traceback ------------------

INVALID = [
    ["predict", "-i", "X", "-o", "O", "--device", "tpu7"],
    ["predict", "-i", "X", "-o", "O", "--sw-batch-size", "0"],
    ["predict", "-i", "X", "-o", "O", "--sw-batch-size", "two"],
    ["predict", "-i", "X", "-o", "O", "--time-budget", "0"],
    ["predict", "-i", "X", "-o", "O", "--precision", "fp8"],
    ["predict", "-o", "O"],
    ["predict", "-i", "X", "-o", "O", "--dicom-seg"],
    ["predict", "--pet-dicom", "X", "-o", "O"],
    ["convert-dicom", "-o", "O"],
    ["evaluate", "--gt", "X"],
    ["evaluate", "--gt", "X", "--pred", "Y"],
    ["qc", "--pet", "X", "--mask", "Y", "-o", "q.png", "--suv-window", "0"],
    ["qc", "--pet", "X", "--mask", "Y", "-o", "q.png"],
    ["import-weights", "-o", "O"],
    ["import-weights", "nope.pth", "-o", "O", "--channels", "0"],
    ["phantom", "-o", "O", "-n", "0"],
    ["phantom", "-o", "O", "--shape", "8", "8"],
    ["phantom", "-o", "O", "--spacing", "1", "-1", "1"],
    ["phantom", "-o", "O", "--tracer", "pib"],
    ["train", "-d", "X", "-o", "O", "--fold", "7"],
    ["train", "-d", "X", "-o", "O", "--epochs", "0"],
    ["train", "-d", "X", "-o", "O", "--patch-size", "0", "8", "8"],
    ["train", "-d", "X", "-o", "O", "--lr", "-1"],
    ["train", "-d", "X", "-o", "O", "--precision", "int8"],
    ["train", "-d", "X", "-o", "O", "--device", "gpu"],
    ["train", "-d", "X", "-o", "O", "--pos-neg", "0", "0"],
    ["train", "-d", "X", "-o", "O", "--num-workers", "-2"],
    ["assemble", "X", "-o", "O"],
    ["compare", "X", "Y", "--min-dice", "1.5"],
    ["nonsense"],
]


@pytest.mark.parametrize("argv", INVALID, ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_invalid_options_end_in_one_line_and_no_traceback(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: usage errors exit 2
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2), (code, err)
    assert len(err) == 1 and "error:" in err[0], err
    assert files_under(tmp_path) == []
