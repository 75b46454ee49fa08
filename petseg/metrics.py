"""autoPET challenge metrics and lesion measures, one connected-component labelling per mask.

Definitions follow the official autoPET III ``evaluation_metrics.py``:
lesions are 18-connected components; FPV is the volume of predicted components that
touch no ground-truth voxel, FNV the volume of ground-truth components that touch no
predicted voxel, DSC = 2|G∩P| / (|G| + |P|); volumes in ml from the ground truth's
spacing. With an empty ground truth, DSC and FNV are NaN and FPV is the whole predicted
volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk

CONNECTIVITY = 18


@dataclass(frozen=True)
class Labelled:
    """A binary mask's 18-connected components and their sizes (index 0 = background)."""

    labels: np.ndarray
    count: int
    sizes: np.ndarray  # voxels per label, sizes[0] = background

    @classmethod
    def of(cls, mask: np.ndarray) -> Labelled:
        labels, count = cc3d.connected_components(np.asarray(mask) > 0, connectivity=CONNECTIVITY, return_N=True)
        return cls(labels, int(count), np.bincount(labels.ravel(), minlength=count + 1))

    def touching(self, other: np.ndarray) -> np.ndarray:
        """Boolean per label (index 0 unused): does the component overlap ``other``?"""
        hit = np.zeros(self.count + 1, bool)
        hit[np.unique(self.labels[np.asarray(other) > 0])] = True
        hit[0] = False
        return hit


@dataclass(frozen=True)
class CaseMetrics:
    dsc: float
    fpv_ml: float
    fnv_ml: float
    gt_lesions: int
    pred_lesions: int


def voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def case_metrics(gt: np.ndarray, pred: np.ndarray, *, voxel_volume_ml: float) -> CaseMetrics:
    """DSC, FPV and FNV of one case (arrays of the same shape; nonzero = lesion)."""
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth shape {gt.shape} != prediction shape {pred.shape}")
    return labelled_metrics(Labelled.of(gt), Labelled.of(pred), voxel_volume_ml=voxel_volume_ml)


def labelled_metrics(g: Labelled, p: Labelled, *, voxel_volume_ml: float) -> CaseMetrics:
    """``case_metrics`` from already labelled masks (each mask is labelled once per case)."""
    gt, pred = g.labels, p.labels
    fp_voxels = int(p.sizes[1:][~p.touching(gt)[1:]].sum())
    if g.count == 0:
        return CaseMetrics(math.nan, fp_voxels * voxel_volume_ml, math.nan, 0, p.count)
    fn_voxels = int(g.sizes[1:][~g.touching(pred)[1:]].sum())
    g_total, p_total = int(g.sizes[1:].sum()), int(p.sizes[1:].sum())
    overlap = int(np.count_nonzero((g.labels > 0) & (p.labels > 0)))
    dsc = 2.0 * overlap / (g_total + p_total)
    return CaseMetrics(dsc, fp_voxels * voxel_volume_ml, fn_voxels * voxel_volume_ml, g.count, p.count)


@dataclass(frozen=True)
class Detection:
    """Lesion-level detection counts of one case (or summed over cases: pooled).

    Lesions are 18-connected components of each mask; a ground-truth lesion is *detected*
    when at least one predicted voxel lies in it; a predicted component is a *false-positive
    lesion* when none of its voxels lies in a ground-truth lesion. Precision counts predicted
    components that touch a ground-truth lesion, so two predicted pieces on one lesion are two
    true positives, and one prediction spanning two lesions detects both.
    """

    gt_lesions: int
    pred_lesions: int
    detected_lesions: int  # ground-truth lesions touched by the prediction
    true_positive_lesions: int  # predicted components touching a ground-truth lesion

    @classmethod
    def of(cls, g: Labelled, p: Labelled) -> Detection:
        return cls(g.count, p.count, int(g.touching(p.labels)[1:].sum()), int(p.touching(g.labels)[1:].sum()))

    @classmethod
    def pooled(cls, items: list[Detection]) -> Detection:
        """Counts summed over cases (pooled figures divide only after summing)."""
        return cls(*(sum(getattr(d, f) for d in items) for f in cls.__dataclass_fields__))

    @property
    def fn_lesions(self) -> int:
        return self.gt_lesions - self.detected_lesions

    @property
    def fp_lesions(self) -> int:
        return self.pred_lesions - self.true_positive_lesions

    @property
    def sensitivity(self) -> float:
        return self.detected_lesions / self.gt_lesions if self.gt_lesions else math.nan

    @property
    def precision(self) -> float:
        return self.true_positive_lesions / self.pred_lesions if self.pred_lesions else math.nan

    @property
    def f1(self) -> float:
        s, p = self.sensitivity, self.precision
        if math.isnan(s) or math.isnan(p):
            return math.nan
        return 0.0 if s + p == 0 else 2 * s * p / (s + p)

    def row(self) -> dict[str, float]:
        """The per-case CSV columns."""
        return {
            "detected_lesions": self.detected_lesions,
            "fn_lesions": self.fn_lesions,
            "fp_lesions": self.fp_lesions,
            "lesion_sensitivity": self.sensitivity,
            "lesion_precision": self.precision,
            "lesion_f1": self.f1,
        }


@dataclass(frozen=True)
class LesionStats:
    """Per-mask totals: lesion count, TMTV (ml), TLG (ml x SUV), SUVmax, SUVmean over all lesions."""

    count: int
    tmtv_ml: float
    tlg: float
    suv_max: float
    suv_mean: float


def lesion_table(labelled: Labelled, pet: np.ndarray, *, voxel_volume_ml: float) -> dict[str, np.ndarray]:
    """Per-lesion MTV (ml), SUVmean and SUVmax. One scan finds the lesion voxels; the rest
    works on those alone (a whole-body volume is ~50 M voxels, its lesions a few thousand)."""
    n = labelled.count
    if n == 0:
        return {"mtv_ml": np.zeros(0), "suv_mean": np.zeros(0), "suv_max": np.zeros(0)}
    flat = np.flatnonzero(labelled.labels)
    labels = labelled.labels.ravel()[flat]
    values = np.asarray(pet).ravel()[flat].astype(np.float64)
    sums = np.bincount(labels, weights=values, minlength=n + 1)[1:]
    maxima = np.full(n + 1, -np.inf)
    np.maximum.at(maxima, labels, values)
    sizes = labelled.sizes[1:].astype(np.float64)
    return {"mtv_ml": sizes * voxel_volume_ml, "suv_mean": sums / sizes, "suv_max": maxima[1:]}


def totals(table: dict[str, np.ndarray]) -> LesionStats:
    """The study's totals from ``lesion_table`` (TLG = sum of MTV x SUVmean)."""
    mtv = table["mtv_ml"]
    if len(mtv) == 0:
        return LesionStats(0, 0.0, 0.0, math.nan, math.nan)
    tlg = float((mtv * table["suv_mean"]).sum())
    tmtv = float(mtv.sum())
    return LesionStats(len(mtv), tmtv, tlg, float(table["suv_max"].max()), tlg / tmtv)
