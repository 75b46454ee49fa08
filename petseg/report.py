"""Per-study lesion report (JSON + CSV): the study's measures for every TMTV convention, one
row per lesion and, when the ensemble's maps are given, each lesion's confidence. Definitions:
docs/measures.md."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.atomic import atomic_paths
from petseg.checks import check_same_grid
from petseg.errors import ConfigError
from petseg.io import csv_text
from petseg.measures import (
    LIVER_PLAUSIBLE,
    LiverReference,
    centroids_mm,
    convention_mask,
    conventions,
    kept,
    liver_reference,
    sphere_region,
    study_measures,
)
from petseg.metrics import Labelled, lesion_table, voxel_ml
from petseg.normalise import Patient, normalisation
from petseg.outputs import CaseOutputs
from petseg.peak import PEAK_RADIUS_MM, lesion_peaks, sphere_kernel

log = logging.getLogger(__name__)

COLUMNS = (
    "lesion",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "voxels",
    "volume_ml",
    "suv_max",
    "suv_peak_local",
    "suv_peak_global",
    "suv_mean",
    "tlg",
)
CONFIDENCE_COLUMNS = ("probability_mean", "probability_max", "uncertainty_mean", "fold_vote", "folds", "doubtful")
DOUBTFUL_RULE = "doubtful: fewer than a majority of the folds' own masks (fold_vote <= folds / 2) overlap the lesion"
STUDY_MEASURES = ("lesion_count", "tmtv_ml", "tlg", "suv_max", "suv_mean", "dmax_mm", "sdmax_per_m")


@dataclass(frozen=True)
class ReportSettings:
    """How a mask is measured: the SUV normalisation (``bw``, ``lbm`` = SUL, ``bsa``), the
    smallest lesion counted (ml; 0 counts all) and, for the PERCIST convention, the centre of
    a 3 cm liver sphere (mm, LPS) when no liver mask is given."""

    suv: str = "bw"
    min_volume_ml: float = 0.0
    liver_centre_mm: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.min_volume_ml) and self.min_volume_ml >= 0):
            raise ConfigError("min_volume_ml", f"must be a volume >= 0 ml, got {self.min_volume_ml}")
        if self.liver_centre_mm is not None and not np.all(np.isfinite(self.liver_centre_mm)):
            raise ConfigError("liver_centre_mm", f"must be finite, got {self.liver_centre_mm}")


def majority(folds: int) -> int:
    """Smallest vote that is a majority of ``folds``: 3 of 5, 2 of 3, 2 of 2, 1 of 1."""
    return folds // 2 + 1


def lesion_report(
    mask: sitk.Image,
    pet: sitk.Image,
    *,
    case: str,
    settings: ReportSettings = ReportSettings(),
    patient: Patient | None = None,
    liver_mask: sitk.Image | None = None,
    liver_source: str = "liver mask",
    pet_source: str = "the PET",
    probability: sitk.Image | None = None,
    uncertainty: sitk.Image | None = None,
    votes: sitk.Image | None = None,
    folds: int = 0,
) -> dict:
    """The measures of ``mask`` (on the PET's grid) over ``pet`` (SUVbw): per study, for every
    convention of :mod:`petseg.measures`, and per lesion of the mask its centroid (patient
    coordinates, mm, LPS), voxels, volume (ml), SUVmax, both SUVpeaks (:mod:`petseg.peak`),
    SUVmean and TLG, in the unit ``settings.suv`` asks for (``patient`` gives weight, height
    and sex). With the ensemble's maps on the same grid (see :class:`petseg.predictor.Prediction`),
    per lesion also the mean and maximum probability, the mean fold standard deviation, the fold
    vote (how many of ``folds`` folds' own masks overlap it, from the ``votes`` bits) and whether
    it is doubtful."""
    check_same_grid(pet, mask, reference_source="the PET", other_source="the mask")
    for role, image in (("probability", probability), ("uncertainty", uncertainty), ("fold votes", votes)):
        if image is not None:
            check_same_grid(mask, image, reference_source="the mask", other_source=role)
    if votes is not None and folds < 1:
        raise ValueError(f"fold votes need the fold count, got folds={folds}")
    norm = normalisation(settings.suv, patient, source=pet_source)
    values = sitk.GetArrayViewFromImage(pet).astype(np.float32) * np.float32(norm.factor)
    ml = voxel_ml(pet)
    min_voxels = int(np.ceil(settings.min_volume_ml / ml - 1e-9)) if settings.min_volume_ml > 0 else 0
    labelled = kept(Labelled.of(sitk.GetArrayViewFromImage(mask) > 0), min_voxels)
    liver = _liver(pet, values, settings, liver_mask, liver_source, norm.factor)
    by_convention = {}
    for convention in conventions(norm.factor, norm.unit, liver):
        lesions = (
            labelled
            if convention.key == "mask"
            else kept(Labelled.of(convention_mask(convention, labelled, values)), min_voxels)
        )
        entry = {"rule": convention.rule}
        if convention.threshold is not None:
            entry["threshold"] = convention.threshold
        by_convention[convention.key] = entry | study_measures(lesions, values, pet, bsa_m2=norm.bsa_m2)
    table = lesion_table(labelled, values, voxel_volume_ml=ml)
    spacing_zyx = pet.GetSpacing()[::-1]
    local, best = lesion_peaks(values, labelled.labels, labelled.count, spacing_zyx)
    centres = centroids_mm(labelled, pet)
    flat = np.flatnonzero(labelled.labels)
    confidence = _confidence(labelled, flat, labelled.labels.ravel()[flat], probability, uncertainty, votes, folds)
    lesions = []
    for i in range(labelled.count):
        lesions.append(
            {
                "lesion": i + 1,
                **{f"centroid_{a}_mm": round(float(c), 2) for a, c in zip("xyz", centres[i])},
                "voxels": int(labelled.sizes[i + 1]),
                "volume_ml": float(table["mtv_ml"][i]),
                "suv_max": float(table["suv_max"][i]),
                "suv_peak_local": float(local[i]),
                "suv_peak_global": float(best[i]),
                "suv_mean": float(table["suv_mean"][i]),
                "tlg": float(table["mtv_ml"][i] * table["suv_mean"][i]),
                **{key: values_[i] for key, values_ in confidence.items()},
            }
        )
    top = np.flatnonzero(table["suv_max"] == table["suv_max"].max()) if labelled.count else []
    report = {
        "case": case,
        "suv": norm.as_dict() | ({"patient": _patient(patient)} if patient is not None else {}),
        "coordinates": "patient (LPS), mm",
        **{key: by_convention["mask"][key] for key in STUDY_MEASURES},
        # the study's peaks: IBSI's over the whole mask (the local one sits on the highest voxel)
        "suv_peak_local": float(local[top].max()) if labelled.count else None,
        "suv_peak_global": float(best.max()) if labelled.count else None,
        "peak_sphere": {"radius_mm": round(PEAK_RADIUS_MM, 4), "voxels": int(sphere_kernel(spacing_zyx).sum())},
        "min_volume_ml": settings.min_volume_ml,
    }
    if liver is not None:
        report["liver_reference"] = liver.as_dict()
    report["conventions"] = by_convention
    if votes is not None:
        report["folds"] = folds
        report["doubtful_lesions"] = sum(lesion["doubtful"] for lesion in lesions)
        report["doubtful_rule"] = DOUBTFUL_RULE
    report["lesions"] = lesions
    return report


def _patient(patient: Patient) -> dict:
    return {k: v for k, v in dataclasses.asdict(patient).items() if v not in (None, "")}


def _liver(pet, values, settings: ReportSettings, liver_mask, source: str, factor: float) -> LiverReference | None:
    if liver_mask is not None:
        check_same_grid(pet, liver_mask, reference_source="the PET", other_source=source)
        region = sitk.GetArrayViewFromImage(liver_mask) > 0
    elif settings.liver_centre_mm is not None:
        centre = ", ".join(f"{c:g}" for c in settings.liver_centre_mm)
        source = f"liver sphere (3 cm) at {centre} mm (LPS)"
        region = sphere_region(pet, settings.liver_centre_mm, source=source)
    else:
        return None
    liver = liver_reference(pet, values, region, source=source)
    low, high = (factor * bound for bound in LIVER_PLAUSIBLE)  # plausible in SUVbw, in the report's unit
    if not low <= liver.mean <= high:
        log.warning(
            "%s: mean %.3g is implausible for liver (expected %g-%g): is it in the liver?",
            source,
            liver.mean,
            low,
            high,
        )
    return liver


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
