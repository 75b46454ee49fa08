"""autoPET V's interactive protocol: an initial mask, then 5 scribble corrections.

Per study the model runs at step 0 without guidance and at each step 1..5 with every scribble
point so far (:mod:`petseg.scribbles` draws the next one from the errors of the last mask,
on the PET grid). Per step: Dice (1 when prediction and truth are both empty), DMM and its
FPV/FNV (:mod:`petseg.matching`). Per study, each measure's area over steps 0..5 (trapezoid
rule) divided by the 5 steps, so an AUC lies in the measure's own range (a constant Dice of 1
has AUC 1); the challenge ranks by half Dice-AUC, half DMM-AUC, and ``score`` is that mean
of the pooled AUCs. DMM is NaN on a lesion-free study, so its AUC is too, and it is left out
of the DMM means.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.checks import check_mask, check_same_grid
from petseg.clicks import Clicks
from petseg.io import read_image
from petseg.matching import lesion_match
from petseg.metrics import Labelled, voxel_ml
from petseg.scribbles import Scribble, simulate_scribble
from petseg.stages import load_study, restore_prediction, with_clicks

log = logging.getLogger(__name__)

STEPS = 5
MEASURES = ("dice", "dmm", "fpv_ml", "fnv_ml")


@dataclass
class Run:
    """One study through the protocol: a row per step 0..steps, the scribbles drawn."""

    case: str
    rows: list[dict]
    scribbles: list[Scribble] = field(default_factory=list)

    def auc(self, measure: str) -> float:
        return normalised_area(np.array([row[measure] for row in self.rows], float))


def normalised_area(values: np.ndarray) -> float:
    """Trapezoid area over steps 0..n divided by n; NaN if any value is NaN."""
    if len(values) < 2 or not np.isfinite(values).all():
        return math.nan
    return float(np.sum((values[1:] + values[:-1]) / 2) / (len(values) - 1))


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """2|G∩P| / (|G| + |P|), and 1 when both are empty (autoPET V)."""
    total = int(gt.sum()) + int(pred.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(gt & pred)) / total


def case_rng(seed: int, case: str) -> np.random.Generator:
    """One generator per study, the same whatever the order or number of studies."""
    return np.random.default_rng([seed, zlib.crc32(case.encode())])


def protocol_case(
    predictor, *, case: str, ct: Path | None, pet: Path, gt: Path, style: str, steps: int = STEPS, seed: int = 0
) -> Run:
    """Run ``predictor`` through steps 0..``steps`` of the protocol on one study."""
    timings: dict[str, float] = {}
    settings = dataclasses.replace(predictor.settings, max_clicks=None)  # scribbles: see restore's removal
    prep = load_study(ct=ct, pet=pet, settings=settings, timings=timings, device=predictor.device)
    native = prep.record.native
    gt_image = read_image(gt, role="ground truth")
    check_same_grid(
        native.stamp(sitk.Image(list(native.size), sitk.sitkUInt8)),
        gt_image,
        reference_source=f"the PET {pet}",
        other_source=str(gt),
    )
    truth = sitk.GetArrayFromImage(gt_image)
    check_mask(truth, source=gt, role="ground truth")
    truth, ml = truth > 0, voxel_ml(gt_image)
    g = Labelled.of(truth)
    rng = case_rng(seed, case)
    takes_guidance = predictor.settings.click_sigma_mm is not None
    run, given, prediction = Run(case, []), Clicks(), None
    for step in range(steps + 1):
        scribble = run.scribbles[-1] if step and run.scribbles else None
        if prediction is None or (takes_guidance and scribble is not None and scribble.z >= 0):
            guided = with_clicks(prep, given, settings=settings)
            maps = predictor.network_maps(guided)
            restored = restore_prediction(
                maps, guided.record, settings=settings, timings=timings, device=predictor.device
            )
            prediction = sitk.GetArrayFromImage(restored.mask) > 0
        m = lesion_match(g, Labelled.of(prediction), voxel_volume_ml=ml)
        run.rows.append(
            {
                "case": case,
                "step": step,
                "tumor_points": len(given.tumor),
                "background_points": len(given.background),
                "dice": dice(truth, prediction),
                "dmm": m.dmm,
                "fpv_ml": m.fpv_ml,
                "fnv_ml": m.fnv_ml,
                **_described(scribble),
            }
        )
        if step == steps:
            break
        nxt = simulate_scribble(truth, prediction, style=style, rng=rng) if takes_guidance else None
        if nxt is None:  # nothing left to correct (or no model input for it): the mask stays
            run.scribbles.append(Scribble("", "", np.zeros((0, 3), int), -1, 0))
            continue
        run.scribbles.append(nxt)
        physical = native.to_physical(nxt.points.astype(float))
        given = Clicks(
            given.tumor + (tuple(map(tuple, physical)) if nxt.kind == "tumor" else ()),
            given.background + (tuple(map(tuple, physical)) if nxt.kind == "background" else ()),
        )
    log.info(
        "%s: Dice %.3f -> %.3f, DMM %s -> %s over %d scribble step(s) (%s)",
        case,
        run.rows[0]["dice"],
        run.rows[-1]["dice"],
        _shown(run.rows[0]["dmm"]),
        _shown(run.rows[-1]["dmm"]),
        steps,
        style,
    )
    return run


def _described(scribble: Scribble | None) -> dict:
    if scribble is None or scribble.z < 0:
        return {"scribble": "", "scribble_style": "", "scribble_points": 0, "scribble_z": ""}
    return {
        "scribble": scribble.kind,
        "scribble_style": scribble.style,
        "scribble_points": len(scribble.points),
        "scribble_z": scribble.z,
    }


def _shown(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def summarize_runs(runs: Sequence[Run]) -> dict[str, float]:
    """Pooled as the challenge ranks: the mean over studies of each AUC (DMM over studies
    with lesions), their mean as the score, and each measure's mean at the first and last step."""
    out: dict[str, float] = {"cases": len(runs)}
    for measure in MEASURES:
        out[f"{measure}_auc"] = _nanmean([r.auc(measure) for r in runs])
        out[f"{measure}_step0"] = _nanmean([r.rows[0][measure] for r in runs])
        out[f"{measure}_final"] = _nanmean([r.rows[-1][measure] for r in runs])
    out["score"] = 0.5 * (out["dice_auc"] + out["dmm_auc"])
    return out


def _nanmean(values: Sequence[float]) -> float:
    values = np.asarray(values, float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def scribbles_document(runs: Sequence[Run]) -> dict:
    """Per study, the points each step added (PET voxel indices x, y, z), as autoPET's files."""
    return {
        r.case: [
            {"step": i + 1, "kind": s.kind, "style": s.style, "z": s.z, "points": s.points.tolist()}
            for i, s in enumerate(r.scribbles)
            if s.z >= 0
        ]
        for r in runs
    }


def evaluate_protocol(
    input_dir: str | Path,
    gt: str | Path,
    output_dir: str | Path,
    *,
    make_predictor,
    style: str,
    steps: int = STEPS,
    seed: int = 0,
) -> tuple[dict[str, float], list[Path]]:
    """``petseg evaluate-interactive --protocol autopet5``: every case of an nnU-Net folder
    through the protocol; per step, per case, and the scribbles drawn."""
    from petseg.atomic import check_output_folder
    from petseg.errors import InputError
    from petseg.io import write_csv, write_text
    from petseg.layout import STUDY_LABEL, find_cases, index_images
    from petseg.outputs import AUTOPET5_FILES

    cases, problems = find_cases(input_dir)
    if problems:
        raise problems[0]
    if not cases:
        raise InputError(input_dir, "no cases (<case>_0000 CT and <case>_0001 PET)")
    labels = index_images(gt, role="ground truth", study=STUDY_LABEL)
    missing = [c.name for c in cases if c.name not in labels]
    if missing:
        raise InputError(gt, f"no ground truth for {len(missing)} case(s): {', '.join(missing[:5])}")
    check_output_folder(output_dir)
    predictor = make_predictor()
    if predictor.settings.click_sigma_mm is None:
        log.warning("the model takes no guidance: every step gives the automatic result")
    runs = [
        protocol_case(
            predictor, case=c.name, ct=c.ct, pet=c.pet, gt=labels[c.name], style=style, steps=steps, seed=seed
        )
        for c in cases
    ]
    per_step, per_case, drawn = (Path(output_dir) / name for name in AUTOPET5_FILES)
    write_csv([row for r in runs for row in r.rows], per_step)
    write_csv([{"case": r.case, **{f"{m}_auc": r.auc(m) for m in MEASURES}} for r in runs], per_case)
    write_text(json.dumps(scribbles_document(runs)) + "\n", drawn)
    return summarize_runs(runs), [per_step, per_case, drawn]
