"""Challenge metrics on hand-built masks whose every number is known by construction."""

import math

import numpy as np
import pytest

from petseg.metrics import Detection, Labelled, case_metrics, lesion_table, totals

from conftest import SHARED

ML = 2.0 * 3.0 * 4.0 / 1000.0  # anisotropic voxel (2 x 3 x 4 mm) = 0.024 ml


def empty():
    return np.zeros((20, 20, 20), np.uint8)


def cube(mask, start, size):
    z, y, x = start
    mask[z : z + size, y : y + size, x : x + size] = 1
    return mask


def test_missed_lesion_counts_as_false_negative_volume():
    gt = cube(cube(empty(), (1, 1, 1), 3), (10, 10, 10), 2)  # 27 + 8 voxels
    pred = cube(empty(), (1, 1, 1), 3)
    m = case_metrics(gt, pred, voxel_volume_ml=ML)
    assert m.dsc == pytest.approx(2 * 27 / (35 + 27))
    assert m.fnv_ml == pytest.approx(8 * ML) and m.fpv_ml == 0.0
    assert (m.gt_lesions, m.pred_lesions) == (2, 1)


def test_false_positive_blob_counts_whole_component():
    gt = cube(empty(), (1, 1, 1), 3)
    pred = cube(cube(empty(), (1, 1, 1), 3), (12, 12, 12), 4)  # a 64-voxel blob far away
    pred[2, 2, 4] = 1  # grows the true positive: still touches the ground truth, not an FP
    m = case_metrics(gt, pred, voxel_volume_ml=ML)
    assert m.fpv_ml == pytest.approx(64 * ML)
    assert m.fnv_ml == 0.0
    assert m.dsc == pytest.approx(2 * 27 / (27 + 28 + 64))


def test_edge_contact_joins_lesions_but_corner_contact_does_not():
    edge = cube(cube(empty(), (2, 2, 2), 3), (5, 5, 2), 3)  # share an edge (z and y both step)
    corner = cube(cube(empty(), (2, 2, 2), 3), (5, 5, 5), 3)  # share a single corner
    assert Labelled.of(edge).count == 1
    assert Labelled.of(corner).count == 2
    pred = cube(empty(), (2, 2, 2), 3)  # finds only the first cube
    assert case_metrics(edge, pred, voxel_volume_ml=ML).fnv_ml == 0.0  # joined: the lesion was hit
    assert case_metrics(corner, pred, voxel_volume_ml=ML).fnv_ml == pytest.approx(27 * ML)


def test_empty_ground_truth_gives_nan_dsc_and_fnv_and_all_of_pred_as_fpv():
    pred = cube(cube(empty(), (1, 1, 1), 2), (10, 10, 10), 3)
    m = case_metrics(empty(), pred, voxel_volume_ml=ML)
    assert math.isnan(m.dsc) and math.isnan(m.fnv_ml)
    assert m.fpv_ml == pytest.approx(35 * ML)
    m = case_metrics(empty(), empty(), voxel_volume_ml=ML)
    assert math.isnan(m.dsc) and m.fpv_ml == 0.0


def test_empty_prediction():
    gt = cube(empty(), (4, 4, 4), 3)
    m = case_metrics(gt, empty(), voxel_volume_ml=ML)
    assert m.dsc == 0.0 and m.fpv_ml == 0.0 and m.fnv_ml == pytest.approx(27 * ML)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="shape"):
        case_metrics(empty(), np.zeros((3, 3, 3)), voxel_volume_ml=ML)


def test_lesion_measures_by_construction():
    mask = cube(cube(empty(), (1, 1, 1), 2), (10, 10, 10), 3)
    pet = np.ones((20, 20, 20), np.float32)
    pet[1:3, 1:3, 1:3] = 4.0
    pet[10:13, 10:13, 10:13] = 2.0
    pet[11, 11, 11] = 9.0  # hottest voxel
    labelled = Labelled.of(mask)
    table = lesion_table(labelled, pet, voxel_volume_ml=ML)
    order = np.argsort(table["mtv_ml"])
    np.testing.assert_allclose(table["mtv_ml"][order], [8 * ML, 27 * ML])
    np.testing.assert_allclose(table["suv_max"][order], [4.0, 9.0])
    np.testing.assert_allclose(table["suv_mean"][order], [4.0, (26 * 2 + 9) / 27])
    stats = totals(table)
    assert stats.count == 2 and stats.tmtv_ml == pytest.approx(35 * ML)
    assert stats.tlg == pytest.approx(ML * (8 * 4 + 26 * 2 + 9))
    assert stats.suv_max == 9.0 and stats.suv_mean == pytest.approx((8 * 4 + 26 * 2 + 9) / 35)
    none = totals(lesion_table(Labelled.of(empty()), pet, voxel_volume_ml=ML))
    assert none.count == 0 and none.tmtv_ml == 0.0 and math.isnan(none.suv_max)


# --- conformance on the real autoPET III masks (official definitions, computed the slow way) ---

MASKS = SHARED / "autopet3-psma-masks"


def official_style(gt, pred, voxel_vol):
    """The official script's definitions, one component at a time (slow, independent)."""
    import cc3d

    gt_cc = cc3d.connected_components(gt, connectivity=18)
    pred_cc = cc3d.connected_components(pred, connectivity=18)
    fp = sum(int((pred_cc == i).sum()) for i in range(1, pred_cc.max() + 1) if not (gt[pred_cc == i] > 0).any())
    fn = sum(int((gt_cc == i).sum()) for i in range(1, gt_cc.max() + 1) if not (pred[gt_cc == i] > 0).any())
    dsc = 2 * (gt & pred).sum() / (gt.sum() + pred.sum())
    return dsc, fp * voxel_vol, fn * voxel_vol, gt_cc.max()


@pytest.mark.skipif(not MASKS.is_dir(), reason="../shared/reference/autopet3-psma-masks not present")
@pytest.mark.parametrize("prediction", ["prediction-nnunet-baseline", "prediction-datacentric-baseline"])
def test_conformance_on_real_autopet3_masks(prediction):
    import SimpleITK as sitk

    gt_img = sitk.ReadImage(str(MASKS / "ground-truth.nii.gz"))
    pred_img = sitk.ReadImage(str(MASKS / f"{prediction}.nii.gz"))
    voxel_vol = float(np.prod(gt_img.GetSpacing())) / 1000
    gt = sitk.GetArrayFromImage(gt_img) > 0
    pred = sitk.GetArrayFromImage(pred_img) > 0
    dsc, fpv, fnv, n_gt = official_style(gt, pred, voxel_vol)
    assert n_gt == 112
    m = case_metrics(gt, pred, voxel_volume_ml=voxel_vol)
    assert m.gt_lesions == 112
    assert m.dsc == pytest.approx(dsc, abs=1e-12)
    assert m.fpv_ml == pytest.approx(fpv, abs=1e-9)
    assert m.fnv_ml == pytest.approx(fnv, abs=1e-9)


# --- lesion detection --------------------------------------------------------------------------


def blobs(shape, boxes):
    mask = np.zeros(shape, bool)
    for z, y, x in boxes:
        mask[z, y, x] = True
    return mask


S = np.s_
GT_TWO = [(S[2:5], S[2:5], S[2:5]), (S[2:5], S[10:13], S[10:13])]  # two lesions, far apart


@pytest.mark.parametrize(
    "pred_boxes, expected",
    [
        # (detected, fn, fp, sensitivity, precision)
        ([GT_TWO[0]], (1, 1, 0, 0.5, 1.0)),  # a missed lesion
        ([*GT_TWO, (S[12:14], S[2:4], S[12:14])], (2, 0, 1, 1.0, 2 / 3)),  # a false blob
        ([(S[3:4], S[3:12], S[3:12])], (2, 0, 0, 1.0, 1.0)),  # one prediction touching both lesions
        ([(S[2:3], S[2:5], S[2:5]), (S[4:5], S[2:5], S[2:5])], (1, 1, 0, 0.5, 1.0)),  # two pieces on one lesion
    ],
    ids=["missed", "false-blob", "touching-two", "two-pieces"],
)
def test_detection_on_hand_built_masks(pred_boxes, expected):
    gt, pred = blobs((16, 16, 16), GT_TWO), blobs((16, 16, 16), pred_boxes)
    d = Detection.of(Labelled.of(gt), Labelled.of(pred))
    assert (d.detected_lesions, d.fn_lesions, d.fp_lesions) == expected[:3]
    assert d.sensitivity == pytest.approx(expected[3]) and d.precision == pytest.approx(expected[4])
    s, p = expected[3], expected[4]
    assert d.f1 == pytest.approx(2 * s * p / (s + p))


def test_detection_with_empty_ground_truth_or_prediction():
    gt, empty = blobs((8, 8, 8), [GT_TWO[0]]), np.zeros((8, 8, 8), bool)
    no_gt = Detection.of(Labelled.of(empty), Labelled.of(gt))
    assert math.isnan(no_gt.sensitivity) and no_gt.precision == 0.0 and no_gt.fp_lesions == 1
    assert math.isnan(no_gt.f1)
    no_pred = Detection.of(Labelled.of(gt), Labelled.of(empty))
    assert no_pred.sensitivity == 0.0 and math.isnan(no_pred.precision) and no_pred.fn_lesions == 1
    assert math.isnan(no_pred.f1)
    both = Detection.of(Labelled.of(empty), Labelled.of(empty))
    assert math.isnan(both.sensitivity) and math.isnan(both.precision)


def test_pooled_detection_sums_counts_before_dividing():
    a = Detection(gt_lesions=1, pred_lesions=1, detected_lesions=1, true_positive_lesions=1)
    b = Detection(gt_lesions=9, pred_lesions=0, detected_lesions=0, true_positive_lesions=0)
    pooled = Detection.pooled([a, b])
    assert pooled.sensitivity == pytest.approx(0.1)  # not the mean of 1.0 and 0.0
    assert pooled.precision == 1.0 and pooled.fn_lesions == 9


def independent_detection(gt, pred):
    """Plain scipy: 18-connectivity is generate_binary_structure(3, 2)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, 2)
    gl, gn = ndimage.label(gt, structure)
    pl, pn = ndimage.label(pred, structure)
    detected = len(set(np.unique(gl[pred]).tolist()) - {0})
    touching = len(set(np.unique(pl[gt]).tolist()) - {0})
    return gn, pn, detected, touching


@pytest.mark.skipif(not MASKS.is_dir(), reason="../shared/reference/autopet3-psma-masks not present")
@pytest.mark.parametrize(
    "prediction, counts",
    [
        # (gt lesions, predicted, detected, fn, fp)
        ("prediction-nnunet-baseline", (112, 88, 90, 22, 8)),
        ("prediction-datacentric-baseline", (112, 98, 95, 17, 16)),
    ],
)
def test_detection_on_real_autopet3_masks(prediction, counts):
    import SimpleITK as sitk

    gt = sitk.GetArrayFromImage(sitk.ReadImage(str(MASKS / "ground-truth.nii.gz"))) > 0
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(MASKS / f"{prediction}.nii.gz"))) > 0
    d = Detection.of(Labelled.of(gt), Labelled.of(pred))
    assert (d.gt_lesions, d.pred_lesions, d.detected_lesions, d.fn_lesions, d.fp_lesions) == counts
    gn, pn, detected, touching = independent_detection(gt, pred)
    assert (gn, pn, detected, pn - touching) == (d.gt_lesions, d.pred_lesions, d.detected_lesions, d.fp_lesions)
