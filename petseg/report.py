"""Per-study lesion report (JSON + CSV): totals and one row per lesion, from the evaluation's
measures, and, when the ensemble's maps are given, each lesion's confidence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.atomic import atomic_paths
from petseg.checks import check_same_grid
from petseg.io import csv_text
from petseg.metrics import Labelled, lesion_table, totals, voxel_ml
from petseg.outputs import CaseOutputs

COLUMNS = ("lesion", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm", "volume_ml", "suv_max", "suv_mean")
CONFIDENCE_COLUMNS = ("probability_mean", "probability_max", "uncertainty_mean", "fold_vote", "folds", "doubtful")
DOUBTFUL_RULE = "doubtful: fewer than a majority of the folds' own masks (fold_vote <= folds / 2) overlap the lesion"


def majority(folds: int) -> int:
    """Smallest vote that is a majority of ``folds``: 3 of 5, 2 of 3, 2 of 2, 1 of 1."""
    return folds // 2 + 1


def lesion_report(
    mask: sitk.Image,
    pet: sitk.Image,
    *,
    case: str,
    probability: sitk.Image | None = None,
    uncertainty: sitk.Image | None = None,
    votes: sitk.Image | None = None,
    folds: int = 0,
) -> dict:
    """Lesion count, TMTV (ml), TLG, SUVmax, SUVmean for the study; per lesion its centroid
    in patient coordinates (mm, LPS), volume (ml), SUVmax and SUVmean. With the ensemble's
    maps on the same grid (see :class:`petseg.predictor.Prediction`), per lesion also the mean
    and maximum probability, the mean fold standard deviation, the fold vote (how many of
    ``folds`` folds' own masks overlap it, from the ``votes`` bits) and whether it is doubtful."""
    for role, image in (("probability", probability), ("uncertainty", uncertainty), ("fold votes", votes)):
        if image is not None:
            check_same_grid(mask, image, reference_source="the mask", other_source=role)
    if votes is not None and folds < 1:
        raise ValueError(f"fold votes need the fold count, got folds={folds}")
    labelled = Labelled.of(sitk.GetArrayViewFromImage(mask) > 0)
    ml = voxel_ml(pet)
    table = lesion_table(labelled, sitk.GetArrayViewFromImage(pet), voxel_volume_ml=ml)
    stats = totals(table)
    lesions = []
    if labelled.count:
        flat = np.flatnonzero(labelled.labels)
        labels = labelled.labels.ravel()[flat]
        zyx = np.unravel_index(flat, labelled.labels.shape)
        sizes = labelled.sizes[1:]
        means = [np.bincount(labels, weights=axis, minlength=labelled.count + 1)[1:] / sizes for axis in zyx]
        confidence = _confidence(labelled, flat, labels, probability, uncertainty, votes, folds)
        for i in range(labelled.count):
            index = (float(means[2][i]), float(means[1][i]), float(means[0][i]))  # (x, y, z)
            centre = pet.TransformContinuousIndexToPhysicalPoint(index)
            lesions.append(
                {
                    "lesion": i + 1,
                    "centroid_x_mm": round(centre[0], 2),
                    "centroid_y_mm": round(centre[1], 2),
                    "centroid_z_mm": round(centre[2], 2),
                    "volume_ml": float(table["mtv_ml"][i]),
                    "suv_max": float(table["suv_max"][i]),
                    "suv_mean": float(table["suv_mean"][i]),
                    **{key: values[i] for key, values in confidence.items()},
                }
            )
    report = {
        "case": case,
        "lesion_count": stats.count,
        "tmtv_ml": stats.tmtv_ml,
        "tlg": stats.tlg,
        "suv_max": None if stats.count == 0 else stats.suv_max,
        "suv_mean": None if stats.count == 0 else stats.suv_mean,
        "coordinates": "patient (LPS), mm",
    }
    if votes is not None:
        report["folds"] = folds
        report["doubtful_lesions"] = sum(lesion["doubtful"] for lesion in lesions)
        report["doubtful_rule"] = DOUBTFUL_RULE
    report["lesions"] = lesions
    return report


def _confidence(
    labelled: Labelled,
    flat: np.ndarray,
    labels: np.ndarray,
    probability: sitk.Image | None,
    uncertainty: sitk.Image | None,
    votes: sitk.Image | None,
    folds: int,
) -> dict[str, list]:
    """Per-lesion columns from the maps' values at the lesions' voxels (``flat`` indices)."""
    n, sizes = labelled.count, labelled.sizes[1:]
    columns: dict[str, list] = {}

    def at_lesions(image: sitk.Image) -> np.ndarray:
        return sitk.GetArrayViewFromImage(image).ravel()[flat]

    if probability is not None:
        p = at_lesions(probability).astype(np.float64)
        columns["probability_mean"] = [round(float(v), 4) for v in np.bincount(labels, p, n + 1)[1:] / sizes]
        peak = np.zeros(n + 1)
        np.maximum.at(peak, labels, p)
        columns["probability_max"] = [round(float(v), 4) for v in peak[1:]]
    if uncertainty is not None:
        u = at_lesions(uncertainty).astype(np.float64)
        columns["uncertainty_mean"] = [round(float(v), 4) for v in np.bincount(labels, u, n + 1)[1:] / sizes]
    if votes is not None:
        bits = at_lesions(votes).astype(np.uint64)
        vote = np.zeros(n, int)
        for f in range(folds):  # fold f votes for a lesion when its own mask touches any of its voxels
            own = (bits >> np.uint64(f)) & np.uint64(1)
            vote += np.bincount(labels, own.astype(float), n + 1)[1:] > 0
        columns["fold_vote"] = [int(v) for v in vote]
        columns["folds"] = [folds] * n
        columns["doubtful"] = [bool(v < majority(folds)) for v in vote]
    return columns


def doubtful_mask(mask: sitk.Image, report: dict) -> sitk.Image:
    """The report's doubtful lesions as a uint8 mask on the mask's grid (same labelling)."""
    labelled = Labelled.of(sitk.GetArrayViewFromImage(mask) > 0)
    doubtful = [lesion["lesion"] for lesion in report["lesions"] if lesion.get("doubtful")]
    out = sitk.GetImageFromArray(np.isin(labelled.labels, doubtful).astype(np.uint8))
    out.CopyInformation(mask)
    return out


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """``<case>_lesions.json`` and ``<case>_lesions.csv`` (one row per lesion; a study with
    none gets one row of empty fields, so the header is always there)."""
    out_dir = Path(out_dir)
    case = report["case"]
    columns = COLUMNS + (CONFIDENCE_COLUMNS if "folds" in report else ())
    rows = report["lesions"] or [dict.fromkeys(columns, "")]
    targets = CaseOutputs(Path(out_dir), case, "").report
    with atomic_paths(targets) as (json_tmp, csv_tmp):  # both or neither
        json_tmp.write_text(json.dumps(report, indent=2) + "\n")
        csv_tmp.write_text(csv_text([{"case": case, **row} for row in rows]))
    return list(targets)
