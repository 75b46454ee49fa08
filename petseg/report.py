"""Per-study lesion report (JSON + CSV): totals and one row per lesion, from the evaluation's measures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.io import write_csv, write_text
from petseg.metrics import Labelled, lesion_table, totals, voxel_ml


def lesion_report(mask: sitk.Image, pet: sitk.Image, *, case: str) -> dict:
    """Lesion count, TMTV (ml), TLG, SUVmax, SUVmean for the study; per lesion its centroid
    in patient coordinates (mm, LPS), volume (ml), SUVmax and SUVmean."""
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
                }
            )
    return {
        "case": case,
        "lesion_count": stats.count,
        "tmtv_ml": stats.tmtv_ml,
        "tlg": stats.tlg,
        "suv_max": None if stats.count == 0 else stats.suv_max,
        "suv_mean": None if stats.count == 0 else stats.suv_mean,
        "coordinates": "patient (LPS), mm",
        "lesions": lesions,
    }


def write_report(report: dict, out_dir: str | Path) -> list[Path]:
    """``<case>_lesions.json`` and ``<case>_lesions.csv`` (one row per lesion)."""
    out_dir = Path(out_dir)
    case = report["case"]
    json_path = write_text(json.dumps(report, indent=2) + "\n", out_dir / f"{case}_lesions.json")
    rows = report["lesions"] or [
        {
            "lesion": "",
            "centroid_x_mm": "",
            "centroid_y_mm": "",
            "centroid_z_mm": "",
            "volume_ml": "",
            "suv_max": "",
            "suv_mean": "",
        }
    ]
    csv_path = write_csv([{"case": case, **row} for row in rows], out_dir / f"{case}_lesions.csv")
    return [json_path, csv_path]
