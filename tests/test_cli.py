"""The petseg command line over the package."""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.cli import main
from petseg.layout import find_cases

from conftest import RUN_FILES, blob_study


def outputs(folder):
    """Names in an output folder, without the run manifest."""
    return sorted(p.name for p in folder.iterdir() if p.name not in RUN_FILES)


def _nnunet_folder(root, cases=("psma_a_1", "fdg_b_2"), ext=".nii.gz"):
    root.mkdir(parents=True)
    for name in cases:
        ct, pet = blob_study()
        sitk.WriteImage(ct, str(root / f"{name}_0000{ext}"))
        sitk.WriteImage(pet, str(root / f"{name}_0001{ext}"))
    return root


def test_predict_an_nnunet_folder_writes_one_mask_per_case(tiny_model_dir, tmp_path):
    src = _nnunet_folder(tmp_path / "in")
    assert (
        main(
            [
                "predict",
                "-i",
                str(src),
                "-o",
                str(tmp_path / "out"),
                "--model-dir",
                str(tiny_model_dir),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    written = outputs(tmp_path / "out")
    assert written == ["fdg_b_2.nii.gz", "psma_a_1.nii.gz"]
    mask = sitk.ReadImage(str(tmp_path / "out" / "fdg_b_2.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(src / "fdg_b_2_0001.nii.gz")).GetSize()


def test_predict_a_grand_challenge_folder(gc_input, tiny_model_dir, tmp_path):
    assert (
        main(
            [
                "predict",
                "-i",
                str(gc_input),
                "-o",
                str(tmp_path / "out"),
                "--model-dir",
                str(tiny_model_dir),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert outputs(tmp_path / "out") == ["3f1c0a6e-case.mha"]


def test_a_bad_case_does_not_stop_the_others(tiny_model_dir, tmp_path, caplog):
    src = _nnunet_folder(tmp_path / "in", ext=".mha")
    pet = sitk.ReadImage(str(src / "fdg_b_2_0001.mha"))
    zero = sitk.GetImageFromArray(np.zeros(pet.GetSize()[::-1], np.float32))
    zero.CopyInformation(pet)
    sitk.WriteImage(zero, str(src / "fdg_b_2_0001.mha"))
    code = main(
        ["predict", "-i", str(src), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    )
    assert code == 1
    assert outputs(tmp_path / "out") == ["psma_a_1.mha"]
    assert "fdg_b_2_0001.mha: PET is all zero" in caplog.text


def test_a_case_without_its_pet_is_skipped_and_the_others_run(tiny_model_dir, tmp_path, capsys):
    src = _nnunet_folder(tmp_path / "in", ext=".mha")
    (src / "fdg_b_2_0001.mha").unlink()
    (src / "lonely_0001.mha").write_bytes((src / "psma_a_1_0001.mha").read_bytes())
    args = ["predict", "-i", str(src), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)]
    assert main([*args, "--device", "cpu"]) == 1
    assert outputs(tmp_path / "out") == ["psma_a_1.mha"]
    err = capsys.readouterr().err
    assert f"{src / 'fdg_b_2_0001.mha'}: PET of case fdg_b_2 not found" in err
    assert f"{src / 'lonely_0001.mha'}: CT of case lonely not found" in err
    summary = [ln for ln in err.splitlines() if "case(s) failed" in ln]
    assert len(summary) == 1 and "fdg_b_2_0001.mha" in summary[0] and "lonely_0001.mha" in summary[0]
    assert "Traceback" not in err


def test_missing_pet_and_empty_folders_are_one_line_errors(tmp_path, capsys):
    src = _nnunet_folder(tmp_path / "in", cases=("a",))
    (src / "a_0001.nii.gz").unlink()
    assert main(["predict", "-i", str(src), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert f"{src / 'a_0001.nii.gz'}: PET of case a not found (expected beside its CT a_0000.nii.gz)" in err
    assert not (tmp_path / "o").exists()
    (tmp_path / "empty").mkdir()
    assert main(["predict", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "o")]) == 1
    assert "no cases found" in capsys.readouterr().err


def test_find_cases_ignores_other_files(tmp_path):
    src = _nnunet_folder(tmp_path / "in", cases=("x",))
    (src / "notes.txt").write_text("hi")
    (src / "x_0002.nii.gz").write_bytes(b"")
    cases, problems = find_cases(src)
    assert [c.name for c in cases] == ["x"] and problems == []


def test_phantom_command_is_deterministic(tmp_path):
    args = [
        "phantom",
        "-n",
        "2",
        "--seed",
        "4",
        "--tracer",
        "psma",
        "--shape",
        "24",
        "20",
        "40",
        "--spacing",
        "8",
        "9",
        "10",
    ]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a" / "imagesTr").iterdir())
    assert len(names) == 4 and all(n.startswith("psma_") for n in names)
    for name in names:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a" / "imagesTr" / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "imagesTr" / name)))
        np.testing.assert_array_equal(a, b)


def test_module_entry_point_and_help():
    result = subprocess.run([sys.executable, "-m", "petseg", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("predict", "import-weights", "phantom", "compare"):
        assert command in result.stdout


def test_predict_with_qc_writes_a_picture_per_case(gc_input, tiny_model_dir, tmp_path):
    assert (
        main(
            [
                "predict",
                "-i",
                str(gc_input),
                "-o",
                str(tmp_path / "out"),
                "--model-dir",
                str(tiny_model_dir),
                "--device",
                "cpu",
                "--qc",
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    assert outputs(tmp_path / "out") == ["3f1c0a6e-case.mha", "3f1c0a6e-case_qc.png"]
    assert (tmp_path / "out" / "3f1c0a6e-case_qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("direction", ["identity", "oblique"])
@pytest.mark.parametrize("threshold", [None, "0.3"])
def test_saved_probability_thresholded_is_the_mask_voxel_for_voxel(direction, threshold, tiny_model_dir, tmp_path):
    from conftest import DIRECTIONS

    src = tmp_path / "in"
    src.mkdir()
    ct, pet = blob_study(direction=DIRECTIONS[direction], spacing=(3.1, 2.4, 4.3))
    sitk.WriteImage(ct, str(src / "case_0000.nii.gz"))
    sitk.WriteImage(pet, str(src / "case_0001.nii.gz"))
    args = ["predict", "-i", str(src), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)]
    args += ["--device", "cpu", "--save-probabilities", *(["--threshold", threshold] if threshold else [])]
    assert main(args) == 0
    mask = sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz"))
    probability = sitk.ReadImage(str(tmp_path / "out" / "case_probability.nii.gz"))
    assert probability.GetPixelID() == sitk.sitkFloat32 and mask.GetPixelID() == sitk.sitkUInt8
    for image in (mask, probability):
        assert image.GetSize() == pet.GetSize()
        np.testing.assert_allclose(image.GetDirection(), pet.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(image.GetOrigin(), pet.GetOrigin(), atol=1e-4)
    p = sitk.GetArrayFromImage(probability)
    expected = (p > float(threshold or 0.5)).astype(np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)
    assert expected.sum() > 0 and p.min() >= 0 and p.max() <= 1
    if threshold is None:  # the random tiny network puts probabilities on both sides of 0.5
        assert expected.sum() < expected.size


def test_save_uncertainty_writes_the_fold_std_named_in_its_header(tiny_model_dir, tmp_path):
    src = _nnunet_folder(tmp_path / "in", cases=("case",), ext=".mha")
    args = ["predict", "-i", str(src), "-o", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)]
    assert main([*args, "--device", "cpu", "--save-uncertainty", "--save-probabilities"]) == 0
    names = outputs(tmp_path / "out")
    assert names == ["case.mha", "case_probability.mha", "case_uncertainty.mha"]
    std = sitk.ReadImage(str(tmp_path / "out" / "case_uncertainty.mha"))
    assert std.GetMetaData("petseg_map") == "standard deviation of the folds' foreground probabilities"
    values = sitk.GetArrayFromImage(std)
    assert std.GetPixelID() == sitk.sitkFloat32 and values.min() >= 0 and 0 < values.max() <= 0.5


def test_report_and_qc_carry_each_lesions_confidence(tiny_model_dir, tmp_path):
    src = _nnunet_folder(tmp_path / "in", cases=("case",), ext=".nii.gz")
    out = tmp_path / "out"
    args = ["predict", "-i", str(src), "-o", str(out), "--model-dir", str(tiny_model_dir), "--device", "cpu"]
    assert main([*args, "--report", "--qc", "--threshold", "0.3"]) == 0
    assert outputs(out) == [
        "case.nii.gz",
        "case_lesions.csv",
        "case_lesions.json",
        "case_qc.png",
    ]
    report = json.loads((out / "case_lesions.json").read_text())
    assert report["folds"] == 2 and report["lesion_count"] > 0
    for lesion in report["lesions"]:
        assert 0.3 < lesion["probability_mean"] <= lesion["probability_max"] <= 1
        assert lesion["uncertainty_mean"] >= 0 and lesion["fold_vote"] in (0, 1, 2)
        assert lesion["doubtful"] == (lesion["fold_vote"] < 2)
    header = (out / "case_lesions.csv").read_text().splitlines()[0].split(",")
    assert {"probability_mean", "probability_max", "uncertainty_mean", "fold_vote", "folds", "doubtful"} <= set(header)


def _clicks_json(path, points):
    path.write_text(json.dumps({"points": [{"point": list(p), "name": kind} for kind, p in points]}))
    return path


def _predict(src, out, model_dir, *extra):
    return main(["predict", "-i", str(src), "-o", str(out), "--model-dir", str(model_dir), "--device", "cpu", *extra])


def _mask(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_predict_with_clicks_in_voxels_or_mm_gives_the_same_mask(click_model_dir, tmp_path, caplog):
    src = _nnunet_folder(tmp_path / "in", cases=("psma_a_1",))
    pet = sitk.ReadImage(str(src / "psma_a_1_0001.nii.gz"))
    voxels = [("tumor", (20, 18, 15)), ("background", (5, 30, 25))]
    by_index = _clicks_json(tmp_path / "voxels.json", voxels)
    in_mm = _clicks_json(
        tmp_path / "mm.json", [(kind, pet.TransformContinuousIndexToPhysicalPoint(p)) for kind, p in voxels]
    )
    assert _predict(src, tmp_path / "none", click_model_dir) == 0
    with caplog.at_level("INFO"):
        assert _predict(src, tmp_path / "voxels", click_model_dir, "--clicks", str(by_index)) == 0
    assert f"clicks from {by_index}: 1 tumour, 1 background" in caplog.text
    assert _predict(src, tmp_path / "mm", click_model_dir, "--clicks", str(in_mm), "--clicks-world") == 0
    none, voxel_mask, mm_mask = (_mask(tmp_path / d / "psma_a_1.nii.gz") for d in ("none", "voxels", "mm"))
    assert not np.array_equal(voxel_mask, none)  # the clicks reached the network
    assert np.array_equal(voxel_mask, mm_mask)


def test_predict_with_a_clicks_folder_redoes_a_case_whose_clicks_changed(click_model_dir, tmp_path, caplog):
    src = _nnunet_folder(tmp_path / "in")  # psma_a_1, fdg_b_2
    folder = tmp_path / "clicks"
    folder.mkdir()
    clicks = _clicks_json(folder / "psma_a_1_clicks.json", [("tumor", (20, 18, 15))])
    _clicks_json(folder / "fdg_b_2.json", [("tumor", (20, 18, 15))])  # misnamed: used by no case
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert _predict(src, out, click_model_dir, "--clicks", str(folder)) == 0
    assert "1 file(s) match no case (<case>_clicks.json), not used: fdg_b_2.json" in caplog.text
    assert "1 of 2 case(s) have clicks, the others run without" in caplog.text
    first = _mask(out / "psma_a_1.nii.gz")
    caplog.clear()
    with caplog.at_level("INFO"):
        assert _predict(src, out, click_model_dir, "--clicks", str(folder)) == 0
    assert "0 done, 2 skipped" in caplog.text
    _clicks_json(clicks, [("tumor", (20, 18, 15)), ("background", (12, 10, 12))])
    caplog.clear()
    with caplog.at_level("INFO"):
        assert _predict(src, out, click_model_dir, "--clicks", str(folder)) == 0
    assert "1 done, 1 skipped" in caplog.text  # only the case whose clicks changed
    assert not np.array_equal(_mask(out / "psma_a_1.nii.gz"), first)


def test_bad_clicks_arguments_fail_with_one_line_before_the_model_loads(click_model_dir, tmp_path, capsys, monkeypatch):
    import petseg.cli.predict

    monkeypatch.setattr(petseg.cli.predict, "make_predictor", lambda *a, **k: pytest.fail("the model was loaded"))
    one = _nnunet_folder(tmp_path / "one", cases=("psma_a_1",))
    two = _nnunet_folder(tmp_path / "two")
    good = _clicks_json(tmp_path / "c.json", [("tumor", (1, 2, 3))])
    bad = tmp_path / "bad.json"
    bad.write_text('{"points": [{"point": [1, 2, 3], "name": "lesion"}]}')
    cases = [
        (two, good, "is one file but the input holds 2 cases: give a folder"),
        (one, tmp_path / "missing.json", "missing.json: no such file or folder"),
        (one, bad, "bad.json: points[0].name: value not allowed, got 'lesion'"),
    ]
    for src, clicks, message in cases:
        assert _predict(src, tmp_path / "out", click_model_dir, "--clicks", str(clicks)) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
