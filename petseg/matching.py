"""autoPET V's lesion detection measure (DMM) and its false-positive/false-negative volumes.

Lesions are the 18-connected components of each mask (as in :mod:`petseg.metrics`). A
predicted component and a ground-truth component *match* when their intersection over union
is at least 0.1; any match counts, with no one-to-one assignment (two predicted pieces on one
lesion are both true positives, one prediction spanning two lesions detects both).

- recall = matched ground-truth lesions / ground-truth lesions;
- precision = matched predicted components / predicted components (0 without any);
- DMM = F1 = 2 precision recall / (precision + recall), 0 when both are 0, NaN when the
  ground truth has no lesion (a lesion-free case has no detection score);
- FPV = volume of the predicted components that match no lesion, FNV = volume of the
  lesions that no component matches (unlike autoPET III, which counts only components that
  touch nothing: a predicted sliver on a large lesion is a false positive here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from petseg.metrics import Labelled

MATCH_IOU = 0.1


@dataclass(frozen=True)
class LesionMatch:
    gt_lesions: int
    pred_lesions: int
    matched_gt: int
    matched_pred: int
    fpv_ml: float
    fnv_ml: float

    @property
    def recall(self) -> float:
        return self.matched_gt / self.gt_lesions if self.gt_lesions else math.nan

    @property
    def precision(self) -> float:
        if not self.gt_lesions:
            return math.nan
        return self.matched_pred / self.pred_lesions if self.pred_lesions else 0.0

    @property
    def dmm(self) -> float:
        r, p = self.recall, self.precision
        if math.isnan(r):
            return math.nan
        return 0.0 if r + p == 0 else 2 * r * p / (r + p)

    def row(self) -> dict[str, float]:
        return {"dmm": self.dmm, "dmm_fpv_ml": self.fpv_ml, "dmm_fnv_ml": self.fnv_ml}


def component_iou(g: Labelled, p: Labelled) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ground-truth label, predicted label, IoU) of every pair of overlapping components;
    pairs that do not overlap have IoU 0 and are not listed."""
    both = (g.labels > 0) & (p.labels > 0)
    if not both.any():
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    stride = np.int64(p.count + 1)
    codes, inter = np.unique(g.labels[both].astype(np.int64) * stride + p.labels[both], return_counts=True)
    gl, pl = codes // stride, codes % stride
    union = g.sizes[gl] + p.sizes[pl] - inter
    return gl, pl, inter / union


def lesion_match(g: Labelled, p: Labelled, *, voxel_volume_ml: float, iou: float = MATCH_IOU) -> LesionMatch:
    """DMM counts and volumes of one case from its labelled masks."""
    gl, pl, overlap = component_iou(g, p)
    good = overlap >= iou
    gt_hit = np.zeros(g.count + 1, bool)
    pred_hit = np.zeros(p.count + 1, bool)
    gt_hit[gl[good]] = True
    pred_hit[pl[good]] = True
    fp = int(p.sizes[1:][~pred_hit[1:]].sum())
    fn = int(g.sizes[1:][~gt_hit[1:]].sum())
    return LesionMatch(
        g.count, p.count, int(gt_hit.sum()), int(pred_hit.sum()), fp * voxel_volume_ml, fn * voxel_volume_ml
    )
