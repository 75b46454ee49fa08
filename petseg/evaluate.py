"""Evaluate prediction folders against ground truth: per-case CSV, lesion CSV, summary, ranking."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.stats import rankdata
from tqdm import tqdm

from petseg.errors import InputError
from petseg.io import list_images, read_image, strip_suffix, write_text
from petseg.metrics import Labelled, check_same_grid, labelled_metrics, lesion_table, totals, voxel_ml

log = logging.getLogger(__name__)


@dataclass
class CaseResult:
    case: str
    dsc: float
    fpv_ml: float
    fnv_ml: float
    gt_lesions: int
    pred_lesions: int
    group: str
    extra: dict[str, float] = field(default_factory=dict)  # lesion measures with --pet

    def row(self) -> dict:
        base = {k: v for k, v in asdict(self).items() if k != "extra"}
        return {**base, **self.extra}


def group_of(case: str, groups: dict[str, str] | None = None) -> str:
    """Tracer group: from a --groups table, else the case name's prefix (fdg_..., psma_...)."""
    if groups and case in groups:
        return groups[case]
    lower = case.lower()
    return next((g for g in ("fdg", "psma") if lower.startswith(g)), "other")


def _index(path: Path, *, role: str, pet: bool = False) -> dict[str, Path]:
    """case name -> file, for a file or a folder. PET files may carry the nnU-Net _0001 suffix."""
    if path.is_file():
        return {strip_suffix(path): path}
    if not path.is_dir():
        raise InputError(path, f"{role} not found")
    out = {}
    for file in list_images(path):
        name = strip_suffix(file)
        if pet and name.endswith("_0001"):
            name = name[: -len("_0001")]
        out[name] = file
    if not out:
        raise InputError(path, f"no {role} images found")
    return out


def match_cases(gt: Path, pred: Path) -> list[tuple[str, Path, Path]]:
    if gt.is_file() and pred.is_file():
        return [(strip_suffix(gt), gt, pred)]
    gts, preds = _index(gt, role="ground truth"), _index(pred, role="prediction")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise InputError(pred, f"no prediction for {len(missing)} case(s): {', '.join(missing[:5])}")
    return [(case, gts[case], preds[case]) for case in sorted(gts)]


def evaluate_case(
    case: str, gt_path: Path, pred_path: Path, *, pet_path: Path | None = None, group: str = "other"
) -> tuple[CaseResult, list[dict]]:
    gt_img = read_image(gt_path, role="ground truth")
    pred_img = read_image(pred_path, role="prediction")
    check_same_grid(gt_img, pred_img, gt_source=str(gt_path), pred_source=str(pred_path))
    ml = voxel_ml(gt_img)
    labelled = {"gt": Labelled.of(sitk.GetArrayViewFromImage(gt_img) > 0),
                "pred": Labelled.of(sitk.GetArrayViewFromImage(pred_img) > 0)}  # fmt: skip
    m = labelled_metrics(labelled["gt"], labelled["pred"], voxel_volume_ml=ml)
    result = CaseResult(case, m.dsc, m.fpv_ml, m.fnv_ml, m.gt_lesions, m.pred_lesions, group)
    lesions: list[dict] = []
    if pet_path is not None:
        pet_img = read_image(pet_path, role="PET")
        check_same_grid(gt_img, pet_img, gt_source=str(gt_path), pred_source=str(pet_path))
        pet = sitk.GetArrayViewFromImage(pet_img)
        for role, other in (("gt", "pred"), ("pred", "gt")):
            table = lesion_table(labelled[role], pet, voxel_volume_ml=ml)
            stats = totals(table)
            result.extra.update({f"{role}_{k}": v for k, v in asdict(stats).items()})
            detected = labelled[role].touching(labelled[other].labels)[1:]
            for i in range(labelled[role].count):
                lesions.append({"case": case, "mask": role, "lesion": i + 1, "mtv_ml": table["mtv_ml"][i],
                                "suv_mean": table["suv_mean"][i], "suv_max": table["suv_max"][i],
                                "detected" if role == "gt" else "true_positive": bool(detected[i])})  # fmt: skip
    return result, lesions


def evaluate(
    *,
    gt: str | Path,
    pred: str | Path,
    pet: str | Path | None = None,
    groups: dict[str, str] | None = None,
) -> tuple[list[CaseResult], list[dict]]:
    """Evaluate one prediction (file or folder) against the ground truth."""
    cases = match_cases(Path(gt), Path(pred))
    pets = _index(Path(pet), role="PET", pet=True) if pet else {}
    results, lesions = [], []
    for case, gt_path, pred_path in tqdm(cases, desc="evaluate", unit="case", disable=len(cases) < 2):
        if pet and case not in pets:
            raise InputError(pet, f"no PET for case {case}")
        result, rows = evaluate_case(case, gt_path, pred_path, pet_path=pets.get(case), group=group_of(case, groups))
        results.append(result)
        lesions += rows
    return results, lesions


def summarize(results: Sequence[CaseResult]) -> dict[str, dict[str, float]]:
    """Mean DSC / FPV / FNV overall and per group (NaNs excluded), with case counts."""
    by_group: dict[str, list[CaseResult]] = {"all": list(results)}
    for r in results:
        by_group.setdefault(r.group, []).append(r)
    summary = {}
    for name, rows in by_group.items():
        summary[name] = {"cases": len(rows)}
        for key in ("dsc", "fpv_ml", "fnv_ml"):
            values = np.array([getattr(r, key) for r in rows], float)
            summary[name][key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return summary


def rank(summaries: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    """autoPET ranking of several predictions: per group, rank each metric (DSC high,
    FPV/FNV low is better), score = 0.5 rank_DSC + 0.25 rank_FPV + 0.25 rank_FNV; the final
    score is the mean over groups (lower is better)."""
    names = list(summaries)
    groups = sorted({g for s in summaries.values() for g in s if g != "all"})
    scores = {n: [] for n in names}
    for g in groups:
        def values(key, sign):
            return [sign * summaries[n].get(g, {}).get(key, math.nan) for n in names]

        # NaN (metric undefined in this group) ranks last
        r = {key: rankdata(np.nan_to_num(values(key, sign), nan=np.inf), method="min")
             for key, sign in (("dsc", -1), ("fpv_ml", 1), ("fnv_ml", 1))}  # fmt: skip
        for i, n in enumerate(names):
            scores[n].append(0.5 * r["dsc"][i] + 0.25 * r["fpv_ml"][i] + 0.25 * r["fnv_ml"][i])
    table = [{"prediction": n, "score": float(np.mean(scores[n])), **{f"score_{g}": s for g, s in zip(groups, scores[n])}}
             for n in names]  # fmt: skip
    return sorted(table, key=lambda row: row["score"])


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """CSV with the union of keys, first-seen order (so ``case,dsc,fpv_ml,fnv_ml`` lead)."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return write_text(buffer.getvalue(), path)


def _fmt(value):
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.6g}"
    return value


def read_groups(path: str | Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"case", "group"} <= set(reader.fieldnames):
            raise InputError(path, "a groups table needs the columns case,group")
        return {row["case"]: row["group"] for row in reader}
