"""petseg evaluate / qc over files and folders."""

import csv
import math

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.cli import main
from petseg.errors import InputError
from petseg.evaluate import evaluate, group_of, rank, summarize

SPACING = (2.0, 3.0, 4.0)
ML = 0.024


def write(array, path, spacing=SPACING):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((5.0, -7.0, 100.0))
    sitk.WriteImage(image, str(path))
    return path


def masks():
    gt = np.zeros((12, 14, 16), np.uint8)
    gt[1:4, 1:4, 1:4] = 1  # 27 voxels, found
    gt[8:10, 8:10, 8:10] = 1  # 8 voxels, missed
    pred = np.zeros_like(gt)
    pred[1:4, 1:4, 1:4] = 1
    pred[6:8, 12:14, 1:3] = 1  # 8-voxel false positive
    return gt, pred


@pytest.fixture()
def folders(tmp_path):
    gt, pred = masks()
    write(gt, tmp_path / "gt" / "fdg_a_1.nii.gz")
    write(pred, tmp_path / "pred" / "fdg_a_1.nii.gz")
    write(np.zeros_like(gt), tmp_path / "gt" / "psma_b_1.nii.gz")  # negative case
    write(pred, tmp_path / "pred" / "psma_b_1.nii.gz")
    pet = np.ones(gt.shape, np.float32)
    pet[gt > 0] = 5.0
    pet[2, 2, 2] = 12.0
    write(pet, tmp_path / "pet" / "fdg_a_1_0001.nii.gz")
    write(pet, tmp_path / "pet" / "psma_b_1_0001.nii.gz")
    return tmp_path


def test_folder_evaluation_csv_and_summary(folders, capsys):
    out = folders / "results.csv"
    assert (
        main(
            [
                "evaluate",
                "--gt",
                str(folders / "gt"),
                "--pred",
                str(folders / "pred"),
                "--pet",
                str(folders / "pet"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(open(out)))
    assert open(out).readline().startswith("case,dsc,fpv_ml,fnv_ml")
    a, b = rows
    assert a["case"] == "fdg_a_1" and a["group"] == "fdg"
    assert float(a["dsc"]) == pytest.approx(2 * 27 / (35 + 35))
    assert float(a["fpv_ml"]) == pytest.approx(8 * ML) and float(a["fnv_ml"]) == pytest.approx(8 * ML)
    assert b["dsc"] == "nan" and b["fnv_ml"] == "nan" and float(b["fpv_ml"]) == pytest.approx(35 * ML)
    assert int(a["gt_count"]) == 2 and float(a["gt_suv_max"]) == 12.0
    assert float(a["gt_tlg"]) == pytest.approx(ML * (34 * 5 + 12))
    assert float(a["pred_tmtv_ml"]) == pytest.approx(35 * ML)
    detection = ["detected_lesions", "fn_lesions", "fp_lesions", "lesion_sensitivity", "lesion_precision", "lesion_f1"]
    assert all(column in a for column in detection)
    assert int(a["detected_lesions"]) + int(a["fn_lesions"]) == int(a["gt_lesions"])
    assert b["lesion_sensitivity"] == "nan" and int(b["fp_lesions"]) == int(b["pred_lesions"])  # empty GT
    lesions = list(csv.DictReader(open(folders / "results_lesions.csv")))
    gt_lesions = [r for r in lesions if r["case"] == "fdg_a_1" and r["mask"] == "gt"]
    assert sorted(r["detected"] for r in gt_lesions) == ["False", "True"]
    text = capsys.readouterr().out
    assert "fdg:    1 cases  DSC 0.7714" in text and "psma:    1 cases  DSC nan" in text
    assert "lesions: sensitivity" in text


def test_pair_of_files_and_grid_mismatch(folders):
    results, _ = evaluate(gt=folders / "gt" / "fdg_a_1.nii.gz", pred=folders / "pred" / "fdg_a_1.nii.gz")
    assert len(results) == 1 and results[0].gt_lesions == 2
    gt, _ = masks()
    write(gt, folders / "other" / "fdg_a_1.nii.gz", spacing=(2.0, 3.0, 5.0))
    with pytest.raises(InputError, match="grid differs from the ground truth"):
        evaluate(gt=folders / "gt" / "fdg_a_1.nii.gz", pred=folders / "other" / "fdg_a_1.nii.gz")


def test_missing_prediction_is_named(folders):
    (folders / "pred" / "psma_b_1.nii.gz").unlink()
    with pytest.raises(InputError, match="no prediction for 1 case\\(s\\): psma_b_1"):
        evaluate(gt=folders / "gt", pred=folders / "pred")


def test_groups_from_prefix_or_table():
    assert group_of("FDG_x_1") == "fdg" and group_of("psma_y") == "psma" and group_of("case7") == "other"
    assert group_of("case7", {"case7": "psma"}) == "psma"


def test_ranking_formula():
    def s(dsc, fpv, fnv):
        return {"fdg": {"dsc": dsc, "fpv_ml": fpv, "fnv_ml": fnv}, "all": {}}

    # A best DSC, worst FP/FN; B middle; C worst DSC, best FP/FN
    table = rank({"A": s(0.9, 9.0, 9.0), "B": s(0.8, 5.0, 5.0), "C": s(0.7, 1.0, 1.0)})
    scores = {row["prediction"]: row["score"] for row in table}
    assert scores == {"A": 0.5 * 1 + 0.25 * 3 + 0.25 * 3, "B": 2.0, "C": 0.5 * 3 + 0.25 + 0.25}
    assert [row["prediction"] for row in table] == ["A", "B", "C"]


def test_summary_means_exclude_nan(folders):
    results, _ = evaluate(gt=folders / "gt", pred=folders / "pred")
    summary = summarize(results)
    assert summary["all"]["cases"] == 2
    assert summary["all"]["dsc"] == pytest.approx(2 * 27 / 70)
    assert summary["all"]["fpv_ml"] == pytest.approx((8 + 35) * ML / 2)
    assert math.isnan(summary["psma"]["fnv_ml"])


def test_multiple_predictions_are_ranked(folders, capsys):
    gt, _ = masks()
    write(gt, folders / "perfect" / "fdg_a_1.nii.gz")
    write(np.zeros_like(gt), folders / "perfect" / "psma_b_1.nii.gz")
    assert (
        main(
            [
                "evaluate",
                "--gt",
                str(folders / "gt"),
                "--pred",
                str(folders / "pred"),
                "--pred",
                str(folders / "perfect"),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert text.index(f"1. {folders / 'perfect'}") < text.index(f"2. {folders / 'pred'}")


def test_qc_png(folders, tmp_path):
    out = tmp_path / "qc.png"
    assert (
        main(
            [
                "qc",
                "--pet",
                str(folders / "pet" / "fdg_a_1_0001.nii.gz"),
                "--mask",
                str(folders / "pred" / "fdg_a_1.nii.gz"),
                "--gt",
                str(folders / "gt" / "fdg_a_1.nii.gz"),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    import matplotlib.image

    picture = matplotlib.image.imread(out)
    assert picture.shape[0] > 200 and picture.shape[1] > 200
    red = (picture[..., 0] > 0.8) & (picture[..., 1] < 0.3) & (picture[..., 2] < 0.3)
    assert red.any(), "predicted lesions must be outlined in red"
