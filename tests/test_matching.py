"""autoPET V's DMM (lesion F1 at IoU >= 0.1) and its volumes, against hand-built cases, an
independent brute-force computation and the real autoPET III PSMA masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from petseg.matching import MATCH_IOU, lesion_match
from petseg.metrics import Labelled

from conftest import SHARED

EIGHTEEN = ndimage.generate_binary_structure(3, 2)  # faces and edges: 18-connectivity


def _match(gt, pred, ml=1.0):
    return lesion_match(Labelled.of(gt), Labelled.of(pred), voxel_volume_ml=ml)


def _cube(shape=(20, 20, 20)):
    return np.zeros(shape, bool)


def brute_force(gt: np.ndarray, pred: np.ndarray) -> tuple[float, int, int]:
    """DMM, unmatched predicted voxels and unmatched lesion voxels, by scipy's labelling and
    explicit sets of voxel indices for every pair of components."""
    g, ng = ndimage.label(gt, structure=EIGHTEEN)
    p, np_ = ndimage.label(pred, structure=EIGHTEEN)
    gsets = [set(np.flatnonzero(g == i)) for i in range(1, ng + 1)]
    psets = [set(np.flatnonzero(p == j)) for j in range(1, np_ + 1)]
    hit = [[len(a & b) / len(a | b) >= MATCH_IOU for b in psets] for a in gsets]
    gt_hit = [any(row) for row in hit]
    pred_hit = [any(hit[i][j] for i in range(ng)) for j in range(np_)]
    fp = sum(len(s) for s, h in zip(psets, pred_hit) if not h)
    fn = sum(len(s) for s, h in zip(gsets, gt_hit) if not h)
    if ng == 0:
        return math.nan, fp, fn
    recall = sum(gt_hit) / ng
    precision = sum(pred_hit) / np_ if np_ else 0.0
    dmm = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return dmm, fp, fn


def test_a_low_iou_overlap_is_no_match_and_a_high_one_is():
    gt, small, larger = _cube(), _cube(), _cube()
    gt[5:15, 5:15, 5:15] = True  # 1000 voxels
    small[8:10, 8:10, 8:10] = True  # 8 inside: IoU 0.008
    larger[6:11, 6:11, 6:11] = True  # 125 inside: IoU 0.125
    m = _match(gt, small, ml=0.5)
    assert (m.dmm, m.fpv_ml, m.fnv_ml) == (0.0, 4.0, 500.0)
    m = _match(gt, larger)
    assert (m.dmm, m.fpv_ml, m.fnv_ml) == (1.0, 0.0, 0.0)


def test_a_pure_false_positive_halves_precision():
    gt, pred = _cube(), _cube()
    gt[2:6, 2:6, 2:6] = pred[2:6, 2:6, 2:6] = True
    pred[12:15, 12:15, 12:15] = True  # 27 voxels, far from any lesion
    m = _match(gt, pred)
    assert (m.recall, m.precision, m.fpv_ml, m.fnv_ml) == (1.0, 0.5, 27.0, 0.0)
    assert m.dmm == pytest.approx(2 / 3)


def test_an_empty_ground_truth_has_no_dmm_but_its_false_positive_volume():
    gt, pred = _cube(), _cube()
    pred[3:5, 3:5, 3:5] = True
    m = _match(gt, pred)
    assert math.isnan(m.dmm) and (m.fpv_ml, m.fnv_ml) == (8.0, 0.0)
    both_empty = _match(gt, gt)
    assert math.isnan(both_empty.dmm) and (both_empty.fpv_ml, both_empty.fnv_ml) == (0.0, 0.0)
    gt[3:5, 3:5, 3:5] = True
    missed = _match(gt, _cube())
    assert (missed.dmm, missed.fnv_ml) == (0.0, 8.0)


def test_two_predictions_on_one_lesion_both_count_and_one_spanning_two_detects_both():
    gt, pred = _cube(), _cube()
    gt[5:15, 5:15, 5:15] = True
    pred[5:10, 5:15, 5:15] = True  # IoU 0.5
    pred[11:15, 5:15, 5:15] = True  # a gap at 10: another component, IoU 0.4
    m = _match(gt, pred)
    assert (m.pred_lesions, m.matched_pred, m.dmm) == (2, 2, 1.0)
    gt, pred = _cube(), _cube()
    gt[2:7, 2:7, 2:7] = gt[2:7, 2:7, 12:17] = True
    pred[2:7, 2:7, 2:17] = True  # both lesions and the gap: IoU 125 / 375 each
    m = _match(gt, pred)
    assert (m.gt_lesions, m.matched_gt, m.dmm) == (2, 2, 1.0)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    gt=arrays(bool, (7, 8, 6), elements=st.booleans()),
    pred=arrays(bool, (7, 8, 6), elements=st.booleans()),
)
def test_dmm_equals_a_brute_force_computation(gt, pred):
    m = _match(gt, pred)
    dmm, fp, fn = brute_force(gt, pred)
    assert (m.fpv_ml, m.fnv_ml) == (fp, fn)
    assert (math.isnan(m.dmm) and math.isnan(dmm)) or m.dmm == pytest.approx(dmm)


PSMA = SHARED / "autopet3-psma-masks"


@pytest.mark.skipif(not PSMA.is_dir(), reason="../shared/reference not present")
def test_dmm_of_the_nnunet_baseline_on_a_real_psma_case():
    read = lambda name: sitk.GetArrayFromImage(sitk.ReadImage(str(PSMA / name))) > 0  # noqa: E731
    gt, pred = read("ground-truth.nii.gz"), read("prediction-nnunet-baseline.nii.gz")
    m = _match(gt, pred)
    assert m.gt_lesions == 112
    # independent: scipy's labelling, per lesion the predicted components inside its box
    g, ng = ndimage.label(gt, structure=EIGHTEEN)
    p, np_ = ndimage.label(pred, structure=EIGHTEEN)
    gsize, psize = np.bincount(g.ravel()), np.bincount(p.ravel())
    gt_hit, pred_hit = np.zeros(ng + 1, bool), np.zeros(np_ + 1, bool)
    for i, box in enumerate(ndimage.find_objects(g), start=1):
        inside = p[box][g[box] == i]
        for j, inter in zip(*np.unique(inside[inside > 0], return_counts=True)):
            if inter / (gsize[i] + psize[j] - inter) >= MATCH_IOU:
                gt_hit[i] = pred_hit[j] = True
    recall, precision = gt_hit.sum() / ng, pred_hit.sum() / np_
    assert (m.matched_gt, m.matched_pred, m.pred_lesions) == (gt_hit.sum(), pred_hit.sum(), np_)
    assert m.dmm == pytest.approx(2 * recall * precision / (recall + precision))
    assert 0 < m.dmm < 1
    ml = float(np.prod(sitk.ReadImage(str(PSMA / "ground-truth.nii.gz")).GetSpacing())) / 1000
    m_ml = lesion_match(Labelled.of(gt), Labelled.of(pred), voxel_volume_ml=ml)
    assert m_ml.fpv_ml == pytest.approx(psize[1:][~pred_hit[1:]].sum() * ml)
    assert m_ml.fnv_ml == pytest.approx(gsize[1:][~gt_hit[1:]].sum() * ml)
