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

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from petseg.checks import check_mask, check_same_grid
from petseg.clicks import MAX_CLICKS, Clicks
from petseg.geometry import Grid
from petseg.io import atomic_path, read_image
from petseg.metrics import CONNECTIVITY, case_metrics, voxel_ml
from petseg.stages import load_study, restore_prediction, with_clicks

log = logging.getLogger(__name__)

MEASURES = ("dsc", "fpv_ml", "fnv_ml")


def next_click(gt: np.ndarray, pred: np.ndarray, *, grid: Grid) -> tuple[str, np.ndarray] | None:
    """(kind, point in mm) of the next simulated click, from (z, y, x) masks on ``grid``; None
    when prediction and ground truth agree."""
    best = None
    for kind, error in (("tumor", gt & ~pred), ("background", pred & ~gt)):
        if not error.any():
            continue
        labels, count = cc3d.connected_components(error, connectivity=CONNECTIVITY, return_N=True)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), kind, labels, largest)
    if best is None:
        return None
    _, kind, labels, largest = best
    box = ndimage.find_objects(labels)[largest - 1]
    zyx = region_centre(labels[box] == largest, spacing=grid.spacing[::-1])
    zyx += [s.start for s in box]
    return kind, grid.to_physical(zyx[::-1])


def region_centre(region: np.ndarray, *, spacing: Sequence[float]) -> np.ndarray:
    """Index (float, array order) of the voxel of ``region`` farthest in mm from its border
    (ties: the first in array order). The array's faces count as border, so a region cut by
    them (a lesion at the edge of a patch or scan) gets its click inside, not on the face."""
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[(slice(1, -1),) * region.ndim]
    return np.array(np.unravel_index(np.argmax(distance), region.shape), float)


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
    prep = load_study(ct=ct, pet=pet, settings=predictor.settings, timings=timings)
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
            restored = restore_prediction(maps, clicked.record, settings=predictor.settings, timings=timings)
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
