"""Evaluate prediction folders against ground truth: per-case CSV, lesion CSV, summary, ranking."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.stats import rankdata
from tqdm import tqdm

from petseg.calibration import BODY_SUV, Calibration
from petseg.checks import check_mask, check_pet_range, check_same_grid, check_values
from petseg.documents import read_table
from petseg.errors import ConfigError, InputError
from petseg.io import read_image
from petseg.layout import STUDY_LABEL, STUDY_PET, index_images, strip_suffix
from petseg.matching import LesionMatch, lesion_match
from petseg.metrics import Detection, Labelled, labelled_metrics, lesion_table, totals, voxel_ml
from petseg.outputs import index_maps

log = logging.getLogger(__name__)

OVERALL = "all"  # the summary's row over every case; no group may take this name


@dataclass
class CaseResult:
    case: str
    dsc: float
    fpv_ml: float
    fnv_ml: float
    gt_lesions: int
    pred_lesions: int
    group: str
    detection: Detection
    extra: dict[str, float] = field(default_factory=dict)  # lesion measures with --pet
    calibration: Calibration | None = None  # with a probability map
    match: LesionMatch | None = None  # autoPET V's detection measure

    def row(self) -> dict:
        skip = ("extra", "detection", "group", "calibration", "match")
        base = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        ece = {} if self.calibration is None else {"ece": self.calibration.ece}
        dmm = {} if self.match is None else self.match.row()
        return {**base, **dmm, **self.detection.row(), "group": self.group, **ece, **self.extra}


def group_of(case: str, groups: dict[str, str] | None = None) -> str:
    """Tracer group: from a --groups table, else the case name's prefix (fdg_..., psma_...)."""
    if groups and case in groups:
        return groups[case]
    lower = case.lower()
    return next((g for g in ("fdg", "psma") if lower.startswith(g)), "other")


def match_cases(gt: Path, pred: Path) -> list[tuple[str, Path, Path]]:
    if gt.is_file() and pred.is_file():
        return [(strip_suffix(gt), gt, pred)]
    gts = index_images(gt, role="ground truth", study=STUDY_LABEL)
    preds = index_images(pred, role="prediction")
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise InputError(pred, f"no prediction for {len(missing)} case(s): {', '.join(missing[:5])}")
    return [(case, gts[case], preds[case]) for case in sorted(gts)]


def evaluate_case(
    case: str,
    gt_path: Path,
    pred_path: Path,
    *,
    pet_path: Path | None = None,
    prob_path: Path | None = None,
    group: str = "other",
) -> tuple[CaseResult, list[dict]]:
    gt_img = read_image(gt_path, role="ground truth")
    pred_img = read_image(pred_path, role="prediction")
    check_same_grid(gt_img, pred_img, reference_source=f"the ground truth {gt_path}", other_source=str(pred_path))
    check_mask(sitk.GetArrayViewFromImage(gt_img), source=gt_path, role="ground truth")
    check_mask(sitk.GetArrayViewFromImage(pred_img), source=pred_path, role="prediction")
    ml = voxel_ml(gt_img)
    labelled = {
        "gt": Labelled.of(sitk.GetArrayViewFromImage(gt_img) > 0),
        "pred": Labelled.of(sitk.GetArrayViewFromImage(pred_img) > 0),
    }
    m = labelled_metrics(labelled["gt"], labelled["pred"], voxel_volume_ml=ml)
    detection = Detection.of(labelled["gt"], labelled["pred"])
    result = CaseResult(case, m.dsc, m.fpv_ml, m.fnv_ml, m.gt_lesions, m.pred_lesions, group, detection)
    result.match = lesion_match(labelled["gt"], labelled["pred"], voxel_volume_ml=ml)
    lesions: list[dict] = []
    if pet_path is not None:
        pet_img = read_image(pet_path, role="PET")
        check_same_grid(gt_img, pet_img, reference_source=f"the ground truth {gt_path}", other_source=str(pet_path))
        pet = sitk.GetArrayViewFromImage(pet_img)
        check_values(pet, source=pet_path, role="PET")  # lesion SUVs from a PET predict would refuse: no
        check_pet_range(pet, source=pet_path)
        if prob_path is not None:
            prob_img = read_image(prob_path, role="probability map")
            check_same_grid(
                gt_img, prob_img, reference_source=f"the ground truth {gt_path}", other_source=str(prob_path)
            )
            probability = sitk.GetArrayViewFromImage(prob_img)
            gt = sitk.GetArrayViewFromImage(gt_img)
            result.calibration = Calibration.of(probability, gt, pet, source=str(prob_path))
        for role, other in (("gt", "pred"), ("pred", "gt")):
            table = lesion_table(labelled[role], pet, voxel_volume_ml=ml)
            stats = totals(table)
            result.extra.update({f"{role}_{k}": v for k, v in asdict(stats).items()})
            detected = labelled[role].touching(labelled[other].labels)[1:]
            for i in range(labelled[role].count):
                lesions.append(
                    {
                        "case": case,
                        "mask": role,
                        "lesion": i + 1,
                        "mtv_ml": table["mtv_ml"][i],
                        "suv_mean": table["suv_mean"][i],
                        "suv_max": table["suv_max"][i],
                        "detected" if role == "gt" else "true_positive": bool(detected[i]),
                    }
                )
    return result, lesions


def evaluate(
    *,
    gt: str | Path,
    pred: str | Path,
    pet: str | Path | None = None,
    prob: str | Path | None = None,
    groups: dict[str, str] | None = None,
) -> tuple[list[CaseResult], list[dict]]:
    """Evaluate one prediction (file or folder) against the ground truth; with ``prob``, the
    probability maps' calibration too (inside the body, which needs ``pet``)."""
    if prob is not None and pet is None:
        raise ConfigError("prob", f"calibration is measured inside the body (PET > {BODY_SUV} SUV): give the PET too")
    cases = match_cases(Path(gt), Path(pred))
    if pet and Path(pet).is_file() and len(cases) == 1:
        pets = {cases[0][0]: Path(pet)}  # one study: its PET whatever the file is called
    else:
        pets = index_images(pet, role="PET", channel=1, study=STUDY_PET) if pet else {}
    probs = (index_maps(prob, kind="probability") if Path(prob).is_dir() else {cases[0][0]: Path(prob)}) if prob else {}
    if groups:
        unnamed = [case for case, _, _ in cases if case not in groups]
        if unnamed:
            log.warning(
                "the groups table does not name %d of the %d case(s) (e.g. %s): they take their name prefix's group",
                len(unnamed),
                len(cases),
                unnamed[0],
            )
    results, lesions = [], []
    for case, gt_path, pred_path in tqdm(cases, desc="evaluate", unit="case", disable=True if len(cases) < 2 else None):
        if pet and case not in pets:
            raise InputError(pet, f"no PET for case {case}")
        if prob and case not in probs:
            raise InputError(prob, f"no probability map for case {case} (expected {case}_probability.<ext>)")
        result, rows = evaluate_case(
            case, gt_path, pred_path, pet_path=pets.get(case), prob_path=probs.get(case), group=group_of(case, groups)
        )
        results.append(result)
        lesions += rows
    return results, lesions


def summarize(results: Sequence[CaseResult]) -> dict[str, dict[str, float]]:
    """Mean DSC / FPV / FNV and autoPET V's DMM overall and per group (NaNs excluded), with case counts, the
    pooled lesion detection (counts summed over the group's cases, then divided) and, with
    probability maps, the pooled ECE (bins summed over the group's cases)."""
    by_group: dict[str, list[CaseResult]] = {OVERALL: list(results)}
    for r in results:
        by_group.setdefault(r.group, []).append(r)
    summary = {}
    for name, rows in by_group.items():
        summary[name] = {"cases": len(rows)}
        for key in ("dsc", "fpv_ml", "fnv_ml"):
            values = np.array([getattr(r, key) for r in rows], float)
            summary[name][key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        for key, value in _mean_rows([r.match.row() for r in rows if r.match is not None]).items():
            summary[name][key] = value
        summary[name].update(Detection.pooled([r.detection for r in rows]).row())
        calibrations = [r.calibration for r in rows if r.calibration is not None]
        if calibrations:
            summary[name]["ece"] = sum(calibrations, Calibration()).ece
    return summary


def _mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the rows, NaN excluded (DMM is NaN on lesion-free cases)."""
    out = {}
    for key in rows[0] if rows else ():
        values = np.array([row[key] for row in rows], float)
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
    return out


def pooled_calibration(results: Sequence[CaseResult]) -> Calibration | None:
    """The bins of every case's calibration added up (None without probability maps)."""
    calibrations = [r.calibration for r in results if r.calibration is not None]
    return sum(calibrations, Calibration()) if calibrations else None


def rank(summaries: dict[str, dict[str, dict[str, float]]]) -> list[dict]:
    """autoPET ranking of several predictions: per group, rank each metric (DSC high,
    FPV/FNV low is better), score = 0.5 rank_DSC + 0.25 rank_FPV + 0.25 rank_FNV; the final
    score is the mean over groups (lower is better)."""
    names = list(summaries)
    groups = sorted({g for s in summaries.values() for g in s if g != OVERALL})
    scores = {n: [] for n in names}
    for g in groups:
        r = {}
        for key, sign in (("dsc", -1), ("fpv_ml", 1), ("fnv_ml", 1)):
            values = [sign * summaries[n].get(g, {}).get(key, math.nan) for n in names]
            r[key] = rankdata(np.nan_to_num(values, nan=np.inf), method="min")  # NaN (undefined) ranks last
        for i, n in enumerate(names):
            scores[n].append(0.5 * r["dsc"][i] + 0.25 * r["fpv_ml"][i] + 0.25 * r["fnv_ml"][i])
    table = [
        {"prediction": n, "score": float(np.mean(scores[n])), **{f"score_{g}": s for g, s in zip(groups, scores[n])}}
        for n in names
    ]
    return sorted(table, key=lambda row: row["score"])


def read_groups(path: str | Path) -> dict[str, str]:
    """case -> group from a UTF-8 CSV with the columns case,group (a case given twice must
    name the same group)."""
    groups: dict[str, str] = {}
    for row in read_table(path, role="groups table", columns=("case", "group")):
        if row["group"] == OVERALL:
            raise InputError(path, f"case {row['case']!r}: group name {OVERALL!r} is reserved for all cases together")
        if groups.setdefault(row["case"], row["group"]) != row["group"]:
            raise InputError(
                path, f"case {row['case']!r} is in two groups, {groups[row['case']]!r} and {row['group']!r}"
            )
    return groups


@dataclass
class EvaluationRun:
    """What :func:`evaluate_predictions` measured and wrote."""

    summaries: dict[str, dict[str, dict[str, float]]]  # prediction -> group -> measure
    written: list[Path] = field(default_factory=list)

    def ranking(self) -> list[dict]:
        return rank(self.summaries) if len(self.summaries) > 1 else []


def evaluate_predictions(
    *,
    gt: str | Path,
    preds: Sequence[str | Path],
    pet: str | Path | None = None,
    prob: str | Path | None = None,
    groups: str | Path | None = None,
    table: str | Path | None = None,
    reliability: str | Path | None = None,
) -> EvaluationRun:
    """``petseg evaluate``: each prediction against the ground truth; the per-case ``table``
    (and its lesion table beside it), and with ``prob`` the reliability diagram."""
    from petseg.io import write_csv
    from petseg.outputs import evaluation_extras

    if prob and len(preds) > 1:
        raise ConfigError("--prob", "give one --pred with --prob (the maps belong to one prediction)")
    lesions_path, default_diagram = evaluation_extras(table)
    group_of_case = read_groups(groups) if groups else None
    run = EvaluationRun(summaries={})
    rows, lesion_rows = [], []
    for pred in preds:
        results, lesions = evaluate(gt=gt, pred=pred, pet=pet, prob=prob, groups=group_of_case)
        calibration = pooled_calibration(results)
        if calibration is not None:
            from petseg.calibration import reliability_diagram

            run.written.append(reliability_diagram(calibration, reliability or default_diagram))
        tag = {"prediction": str(pred)} if len(preds) > 1 else {}
        rows += [{**r.row(), **tag} for r in results]
        lesion_rows += [{**r, **tag} for r in lesions]
        run.summaries[str(pred)] = summarize(results)
    if table:
        run.written.append(write_csv(rows, table))
        if lesion_rows:
            run.written.append(write_csv(lesion_rows, lesions_path))
    return run
