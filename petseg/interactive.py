"""Interactive evaluation with autoPET IV's measures: 0..10 clicks simulated from the ground truth.

Per study the model runs once per step. Step 0 has no clicks; after each step the next click
goes to the centre of the largest remaining error region (the voxel farthest, in mm, from
the region's border, over 18-connected components of the missed and the false lesion
voxels on the PET grid): a tumour click for a missed region, a background click for a
false one. Per step: DSC, FPV and FNV (the challenge's definitions); per study and overall:
the value after the last click and the area under each curve over the steps (trapezoidal
rule, x = number of clicks, so a constant DSC of 1 over 0..10 clicks has area 10).
The clicks are error-driven, one per step; autoPET IV itself gives pre-simulated clicks
(a tumour and a background click per step), so these curves rank models like its curves,
but are not its numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.atomic import atomic_path
from petseg.checks import check_mask, check_same_grid
from petseg.clicks import MAX_CLICKS, Clicks, next_click
from petseg.io import read_image
from petseg.metrics import case_metrics, voxel_ml
from petseg.stages import load_study, restore_prediction, with_clicks

log = logging.getLogger(__name__)

MEASURES = ("dsc", "fpv_ml", "fnv_ml")


@dataclass
class Curve:
    """One study's measures per step (index = number of clicks)."""

    case: str
    rows: list[dict]

    def final(self, measure: str) -> float:
        return float(self.rows[-1][measure])

    def auc(self, measure: str) -> float:
        return area(np.array([row[measure] for row in self.rows], float))


def area(values: np.ndarray) -> float:
    """Trapezoidal area over steps 0..n (x = number of clicks); NaN if any value is NaN."""
    if len(values) < 2 or not np.isfinite(values).all():
        return math.nan
    return float(np.sum((values[1:] + values[:-1]) / 2))


def interactive_case(predictor, *, case: str, ct: Path, pet: Path, gt: Path, clicks: int = MAX_CLICKS) -> Curve:
    """Run ``predictor`` (its network stage) with 0..``clicks`` simulated clicks on one study."""
    timings: dict[str, float] = {}
    prep = load_study(ct=ct, pet=pet, settings=predictor.settings, timings=timings, device=predictor.device)
    gt_image = read_image(gt, role="ground truth")
    native = prep.record.native
    reference = native.stamp(sitk.Image(list(native.size), sitk.sitkUInt8))
    check_same_grid(reference, gt_image, reference_source=f"the PET {pet}", other_source=str(gt))
    truth = sitk.GetArrayFromImage(gt_image)
    check_mask(truth, source=gt, role="ground truth")
    truth = truth > 0
    ml = voxel_ml(gt_image)
    given = Clicks()
    rows, prediction, click = [], None, None
    last: dict = {"click": "", "click_x_mm": "", "click_y_mm": "", "click_z_mm": ""}
    takes_clicks = predictor.settings.click_sigma_mm is not None
    for step in range(clicks + 1):
        # a step without a new click (nothing left to fix) gives the previous result; a model
        # that takes no clicks gets none, so its curve is its automatic result at every step
        if step == 0 or click is not None:
            clicked = with_clicks(prep, given, settings=predictor.settings)
            maps = predictor.network_maps(clicked)
            restored = restore_prediction(
                maps, clicked.record, settings=predictor.settings, timings=timings, device=predictor.device
            )
            prediction = sitk.GetArrayFromImage(restored.mask) > 0
        m = case_metrics(truth, prediction, voxel_volume_ml=ml)
        rows.append(
            {
                "case": case,
                "clicks": step,
                "tumor_clicks": len(given.tumor),
                "background_clicks": len(given.background),
                "dsc": m.dsc,
                "fpv_ml": m.fpv_ml,
                "fnv_ml": m.fnv_ml,
                **last,  # the click this step added (patient coordinates, LPS)
            }
        )
        click = next_click(truth, prediction, grid=native) if step < clicks and takes_clicks else None
        last = dict.fromkeys(last, "")
        if click is not None:
            given = given.added(*click)
            last = {"click": click[0], **{f"click_{a}_mm": round(float(v), 2) for a, v in zip("xyz", click[1])}}
    log.info(
        "%s: DSC %s after 0 clicks, %s after %d",
        case,
        f"{rows[0]['dsc']:.3f}",
        f"{rows[-1]['dsc']:.3f}",
        clicks,
    )
    return Curve(case, rows)


def summarize_curves(curves: Sequence[Curve]) -> dict[str, float]:
    """Means over studies (NaN-aware) of each measure's final value and area, and per step."""
    out: dict[str, float] = {"cases": len(curves)}
    for measure in MEASURES:
        out[f"{measure}_final"] = _nanmean([c.final(measure) for c in curves])
        out[f"{measure}_auc"] = _nanmean([c.auc(measure) for c in curves])
    return out


def mean_per_step(curves: Sequence[Curve], measure: str) -> np.ndarray:
    return np.array([_nanmean([c.rows[i][measure] for c in curves]) for i in range(len(curves[0].rows))])


def _nanmean(values: Sequence[float]) -> float:
    values = np.asarray(values, float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def plot_curves(curves: Sequence[Curve], output: str | Path, *, title: str = "") -> Path:
    """PNG: mean DSC, FPV and FNV over the number of clicks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(len(curves[0].rows))
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, measure, label in zip(axes, MEASURES, ("DSC", "FPV (ml)", "FNV (ml)")):
        ax.plot(steps, mean_per_step(curves, measure), "o-", color="crimson")
        ax.set_xlabel("clicks")
        ax.set_title(f"mean {label}")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(output)


def evaluate_interactive(
    input_dir: str | Path, gt: str | Path, output_dir: str | Path, *, make_predictor, clicks: int = MAX_CLICKS
) -> tuple[dict[str, float], list[Path]]:
    """``petseg evaluate-interactive``: 0..``clicks`` simulated clicks on every case of an
    nnU-Net folder; per step (interactive.csv), per case (interactive_cases.csv) and the mean
    curves (interactive.png). ``make_predictor()`` is called once the inputs are checked.
    Returns the pooled summary and the files written."""
    from tqdm import tqdm

    from petseg.atomic import check_output_folder
    from petseg.errors import InputError
    from petseg.io import write_csv
    from petseg.layout import STUDY_LABEL, find_cases, index_images
    from petseg.outputs import INTERACTIVE_FILES

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
    if predictor.settings.click_sigma_mm is None and clicks > 0:
        log.warning("the model takes no clicks: every step gives the automatic result")
    curves = [
        interactive_case(predictor, case=c.name, ct=c.ct, pet=c.pet, gt=labels[c.name], clicks=clicks)
        for c in tqdm(cases, desc="interactive", unit="case", disable=True if len(cases) < 2 else None)
    ]
    steps, per_case, picture = (Path(output_dir) / name for name in INTERACTIVE_FILES)
    write_csv([row for c in curves for row in c.rows], steps)
    rows = [
        {"case": c.case, **{f"{m}_{k}": getattr(c, k)(m) for m in MEASURES for k in ("final", "auc")}} for c in curves
    ]
    write_csv(rows, per_case)
    plot_curves(curves, picture, title=f"{len(curves)} studies, 0-{clicks} simulated clicks")
    return summarize_curves(curves), [steps, per_case, picture]
