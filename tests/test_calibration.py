"""Expected calibration error and the reliability diagram (``petseg evaluate --prob``)."""

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.calibration import BINS, BODY_SUV, Calibration, reliability_diagram
from petseg.cli import main
from petseg.errors import InputError


def reference_ece(probability, gt, pet):
    """Plain loop over the bins, written apart from petseg.calibration."""
    body = pet > BODY_SUV
    p, y = probability[body].ravel(), (gt[body] > 0).ravel()
    total, n = 0.0, p.size
    for b in range(BINS):
        lo, hi = b / BINS, (b + 1) / BINS
        inside = (p >= lo) & ((p < hi) if b < BINS - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() / n * abs(y[inside].mean() - p[inside].mean())
    return total


def test_calibrated_probabilities_have_zero_ece_and_overconfident_ones_their_gap():
    pet = np.ones((4, 10, 10), np.float32)
    probability = np.full(pet.shape, 0.75, np.float32)
    gt = np.zeros(pet.shape, np.uint8)
    gt.reshape(-1)[:300] = 1  # 75 % of 400 voxels are lesion
    assert Calibration.of(probability, gt, pet).ece == pytest.approx(0.0, abs=1e-9)
    assert Calibration.of(np.full(pet.shape, 0.95, np.float32), 0 * gt, pet).ece == pytest.approx(0.95, abs=1e-6)


def test_voxels_outside_the_body_do_not_count():
    pet = np.ones((2, 4, 4), np.float32)
    pet[0] = 0.0  # air
    probability = np.zeros(pet.shape, np.float32)
    probability[0] = 0.9  # wrong, but outside the body
    calibration = Calibration.of(probability, np.zeros(pet.shape), pet)
    assert calibration.voxels == 16 and calibration.ece == 0.0


def test_bin_edges_and_pooling_match_a_plain_loop():
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(3):
        probability = rng.random((6, 7, 8)).astype(np.float32)
        probability.reshape(-1)[:3] = [0.0, 0.1, 1.0]  # edges: bin 0, bin 1, the last bin
        gt = rng.random(probability.shape) < probability**2
        pet = rng.random(probability.shape).astype(np.float32)
        cases.append((probability, gt, pet))
    for case in cases:
        assert Calibration.of(*case).ece == pytest.approx(reference_ece(*case), abs=1e-6)
    pooled = sum((Calibration.of(*case) for case in cases), Calibration())
    stacked = [np.concatenate([c[i] for c in cases]) for i in range(3)]
    assert pooled.ece == pytest.approx(reference_ece(*stacked), abs=1e-6)
    assert Calibration().voxels == 0 and np.isnan(Calibration().ece)


@pytest.mark.parametrize("bad", [1.5, -0.2, np.nan])
def test_values_that_are_not_probabilities_are_refused(bad):
    probability = np.full((2, 3, 4), 0.5, np.float32)
    probability[1, 1, 1] = bad
    with pytest.raises(InputError, match="not probabilities"):
        Calibration.of(probability, np.zeros(probability.shape), np.ones(probability.shape), source="p.nii.gz")


def test_reliability_diagram_is_a_png(tmp_path):
    rng = np.random.default_rng(1)
    probability = rng.random((5, 6, 7))
    calibration = Calibration.of(probability, rng.random(probability.shape) < probability, np.ones(probability.shape))
    path = reliability_diagram(calibration, tmp_path / "r.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 3.0, 4.0))
    image.SetOrigin((5.0, -7.0, 100.0))
    sitk.WriteImage(image, str(path))


def test_evaluate_prob_adds_ece_per_case_and_pooled_and_writes_the_diagram(tmp_path, capsys):
    rng = np.random.default_rng(2)
    pooled_cases = []
    for case in ("fdg_a_1", "psma_b_2"):
        probability = rng.random((8, 9, 10)).astype(np.float32)
        gt = (rng.random(probability.shape) < probability).astype(np.uint8)
        pet = np.ones(probability.shape, np.float32)
        _write(gt, tmp_path / "gt" / f"{case}.nii.gz")
        _write((probability > 0.5).astype(np.uint8), tmp_path / "pred" / f"{case}.nii.gz")
        _write(probability, tmp_path / "pred" / f"{case}_probability.nii.gz")
        _write(pet, tmp_path / "pet" / f"{case}_0001.nii.gz")
        pooled_cases.append((probability, gt, pet))
    out = tmp_path / "metrics.csv"
    args = ["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--out", str(out)]
    assert main([*args, "--pet", str(tmp_path / "pet"), "--prob", str(tmp_path / "pred")]) == 0
    with out.open() as fh:
        rows = {row["case"]: row for row in csv.DictReader(fh)}
    for (probability, gt, pet), case in zip(pooled_cases, ("fdg_a_1", "psma_b_2")):
        assert float(rows[case]["ece"]) == pytest.approx(reference_ece(probability, gt, pet), abs=1e-6)
    stacked = [np.concatenate([c[i] for c in pooled_cases]) for i in range(3)]
    assert f"ECE {reference_ece(*stacked):.4f}" in capsys.readouterr().out
    assert (tmp_path / "metrics_reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_prob_without_pet_is_one_line(tmp_path, capsys):
    _write(np.zeros((4, 4, 4), np.uint8), tmp_path / "gt" / "a.nii.gz")
    _write(np.zeros((4, 4, 4), np.uint8), tmp_path / "pred" / "a.nii.gz")
    args = [
        "evaluate",
        "--gt",
        str(tmp_path / "gt"),
        "--pred",
        str(tmp_path / "pred"),
        "--prob",
        str(tmp_path / "pred"),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give the PET too" in err[0]
