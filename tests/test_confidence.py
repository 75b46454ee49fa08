"""Per-lesion confidence: fold votes, mean/max probability, mean uncertainty, doubtful lesions."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from petseg.metrics import Labelled
from petseg.predictor import Predictor
from petseg.report import doubtful_mask, lesion_report, majority, write_report

from conftest import DIRECTIONS, SMALL, Oracle, blob_study


class Nothing(torch.nn.Module):
    """A fold that predicts no lesion anywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones_like(x[:, :1])
        return torch.cat([5 * ones, -5 * ones], dim=1)


CONFIDENCE = SMALL.with_overrides(uncertainty=True, fold_votes=True, fold_batchnorm=False, channels_last=False)


def _report(folds, *, threshold=0.5, direction=DIRECTIONS["oblique"]):
    ct, pet = blob_study(direction=direction, spacing=(3.1, 2.4, 4.3))
    prediction = Predictor(folds, settings=CONFIDENCE.with_overrides(threshold=threshold)).predict_images(ct, pet)
    report = lesion_report(
        prediction.mask,
        pet,
        case="c",
        probability=prediction.probability,
        uncertainty=prediction.uncertainty,
        votes=prediction.votes,
        folds=prediction.folds,
    )
    return prediction, report


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_one_fold_predicting_nothing_gets_every_lesion_n_minus_1_of_n(direction):
    prediction, report = _report([Oracle(), Oracle(), Oracle(), Oracle(), Nothing()], direction=DIRECTIONS[direction])
    assert report["lesion_count"] >= 1 and report["folds"] == 5
    assert [lesion["fold_vote"] for lesion in report["lesions"]] == [4] * report["lesion_count"]
    assert report["doubtful_lesions"] == 0
    bits = sitk.GetArrayFromImage(prediction.votes)
    assert prediction.votes.GetPixelID() == sitk.sitkUInt8
    assert not (bits & 0b10000).any()  # the empty fold's bit is never set
    mask = sitk.GetArrayFromImage(prediction.mask) > 0
    assert ((bits & 0b01111) == 0b01111)[mask].all()  # the oracles' own masks cover the lesions


def test_a_lesion_only_a_minority_of_folds_find_is_doubtful():
    # mean probability is a third of the oracle's: at threshold 0.2 the lesions survive on one vote
    _, report = _report([Oracle(), Nothing(), Nothing()], threshold=0.2)
    assert report["lesion_count"] >= 1
    assert all(lesion["fold_vote"] == 1 and lesion["doubtful"] for lesion in report["lesions"])
    assert report["doubtful_lesions"] == report["lesion_count"]
    for lesion in report["lesions"]:  # the oracle says ~1 inside, the others 0: mean <= 1/3
        assert 0.2 < lesion["probability_mean"] <= lesion["probability_max"] <= 1 / 3 + 1e-4
        assert lesion["uncertainty_mean"] > 0.3  # std of (p, 0, 0) is 0.47 p


def test_identical_folds_are_unanimous_and_certain():
    _, report = _report([Oracle(), Oracle(), Oracle()])
    for lesion in report["lesions"]:
        assert lesion["fold_vote"] == 3 and not lesion["doubtful"]
        assert lesion["uncertainty_mean"] < 1e-3
        assert lesion["probability_max"] > 0.9


def test_confidence_columns_match_the_maps_lesion_by_lesion():
    prediction, report = _report([Oracle(), Oracle(), Nothing()])
    labelled = Labelled.of(sitk.GetArrayFromImage(prediction.mask))
    p = sitk.GetArrayFromImage(prediction.probability)
    u = sitk.GetArrayFromImage(prediction.uncertainty)
    for lesion in report["lesions"]:
        inside = labelled.labels == lesion["lesion"]
        assert lesion["probability_mean"] == pytest.approx(p[inside].mean(), abs=1e-4)
        assert lesion["probability_max"] == pytest.approx(p[inside].max(), abs=1e-4)
        assert lesion["uncertainty_mean"] == pytest.approx(u[inside].mean(), abs=1e-4)
        assert lesion["fold_vote"] == 2 and lesion["folds"] == 3


@pytest.mark.parametrize("folds", [1, 2, 3, 4, 5, 6])
def test_majority_is_more_than_half(folds):
    assert majority(folds) > folds / 2 >= majority(folds) - 1


def test_doubtful_mask_holds_exactly_the_doubtful_lesions_and_the_csv_has_the_columns(tmp_path):
    mask_array = np.zeros((12, 10, 8), np.uint8)
    mask_array[1:3, 1:3, 1:3] = 1  # lesion 1: all three folds
    mask_array[8:11, 6:9, 5:7] = 1  # lesion 2: one fold
    votes_array = np.zeros_like(mask_array)
    votes_array[1:3, 1:3, 1:3] = 0b111
    votes_array[9, 7, 6] = 0b010  # one voxel of one fold's own mask is enough to count its vote
    images = []
    for array in (mask_array, np.full(mask_array.shape, 2.0, np.float32), votes_array):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((2.0, 3.0, 4.0))
        image.SetOrigin((5.0, -7.0, 11.0))
        images.append(image)
    mask, pet, votes = images
    report = lesion_report(mask, pet, case="c", votes=votes, folds=3)
    assert [(lesion["fold_vote"], lesion["doubtful"]) for lesion in report["lesions"]] == [(3, False), (1, True)]
    doubtful = sitk.GetArrayFromImage(doubtful_mask(mask, report))
    expected = np.zeros_like(mask_array)
    expected[8:11, 6:9, 5:7] = 1
    np.testing.assert_array_equal(doubtful, expected)
    json_path, csv_path = write_report(report, tmp_path)
    assert json.loads(json_path.read_text())["doubtful_lesions"] == 1
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [row["doubtful"] for row in rows] == ["False", "True"]
    empty = lesion_report(sitk.Image(mask) * 0, pet, case="e", votes=votes, folds=3)
    _, empty_csv = write_report(empty, tmp_path)
    assert "fold_vote" in empty_csv.read_text().splitlines()[0]


def test_votes_on_another_grid_are_refused():
    mask = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    votes = sitk.Image([8, 8, 8], sitk.sitkUInt8)
    votes.SetSpacing((2.0, 1.0, 1.0))
    with pytest.raises(Exception, match="fold votes"):
        lesion_report(mask, mask, case="c", votes=votes, folds=2)


def _orange_pixels(path) -> int:
    import matplotlib.image

    rgb = matplotlib.image.imread(str(path))[..., :3]
    return int(np.count_nonzero((rgb[..., 0] > 0.9) & (np.abs(rgb[..., 1] - 0.55) < 0.1) & (rgb[..., 2] < 0.2)))


def test_qc_outlines_doubtful_lesions_in_orange(tmp_path):
    from petseg.qc import render_qc

    prediction, report = _report([Oracle(), Nothing(), Nothing()], threshold=0.2)
    _, pet = blob_study(direction=DIRECTIONS["oblique"], spacing=(3.1, 2.4, 4.3))
    doubtful = doubtful_mask(prediction.mask, report)
    marked = render_qc(pet=pet, mask=prediction.mask, doubtful=doubtful, output=tmp_path / "marked.png")
    plain = render_qc(pet=pet, mask=prediction.mask, output=tmp_path / "plain.png")
    assert _orange_pixels(marked) > 50 and _orange_pixels(plain) == 0
