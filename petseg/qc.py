"""QC pictures: coronal and sagittal PET MIPs with lesion outlines, numbered as the lesion
report numbers them; with a ground truth, found, missed and false lesions apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from petseg.atomic import atomic_path
from petseg.checks import check_mask, check_same_grid
from petseg.errors import ConfigError
from petseg.metrics import Labelled

LPS = "LPS"  # array (z, y, x): x towards the patient's left, y posterior, z superior
# outline colours (RGB): distinct from each other and from the grey PET, also for red-green
# colour blindness (found green vs false red differ in brightness, missed is blue)
COLOURS = {
    "found": "#00b000",
    "missed": "#1f5fff",
    "false": "#ff1a1a",
    "predicted": "#ff1a1a",
    "doubtful": "#ff8c00",
}
MAX_NUMBERS = 60  # lesion numbers drawn at the most (beyond that they only cover each other)
VIEWS = {"coronal": ("R", "L"), "sagittal": ("A", "P")}  # what lies at the left and right edge


@dataclass(frozen=True)
class Outlines:
    """The lesion classes of a QC picture, as native (z, y, x) arrays, and the prediction's
    lesion labels (1..n, the report's lesion numbers)."""

    classes: dict[str, np.ndarray]  # class name -> bool mask
    labels: np.ndarray
    count: int

    @classmethod
    def of(cls, mask: np.ndarray, gt: np.ndarray | None = None, doubtful: np.ndarray | None = None) -> Outlines:
        """With ``gt``: predicted lesions that touch a true one are "found", the others "false";
        true lesions no prediction touches are "missed" (18-connected, as the metrics). Without:
        "predicted", and "doubtful" for the lesions in ``doubtful``."""
        predicted = Labelled.of(mask)
        if gt is None and doubtful is None:
            classes = {"predicted": predicted.labels > 0}
        elif gt is None:
            unsure = np.asarray(doubtful) > 0
            classes = {"predicted": (predicted.labels > 0) & ~unsure, "doubtful": unsure}
        else:
            truth = Labelled.of(gt)
            found = predicted.touching(truth.labels > 0)[predicted.labels]
            classes = {
                "found": found,
                "missed": ~truth.touching(predicted.labels > 0)[truth.labels] & (truth.labels > 0),
                "false": (predicted.labels > 0) & ~found,
            }
        return cls(classes, predicted.labels, predicted.count)

    def counts(self) -> dict[str, int]:
        """Lesions per class (18-connected components)."""
        return {name: Labelled.of(m).count for name, m in self.classes.items()}


def _lps_array(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    oriented = sitk.DICOMOrient(image, LPS)
    return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()


def _lps(array: np.ndarray, like: sitk.Image) -> np.ndarray:
    image = sitk.GetImageFromArray(array.astype(np.int32 if array.dtype != bool else np.uint8))
    image.CopyInformation(like)
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, LPS))


def mip_views(volume_zyx: np.ndarray) -> dict[str, np.ndarray]:
    """Coronal (max over y) and sagittal (max over x) projections, each (z, horizontal)."""
    return {"coronal": volume_zyx.max(axis=1), "sagittal": volume_zyx.max(axis=2)}


def _check(pet, images, sources):
    for role, image in images.items():
        if image is not None:
            source = sources.get(role, role)
            check_same_grid(
                pet, image, reference_source=f"the PET {sources.get('PET', '')}".strip(), other_source=source
            )
            check_mask(sitk.GetArrayViewFromImage(image), source=source, role=role)


def render_qc(
    *,
    pet: sitk.Image,
    mask: sitk.Image,
    output: str | Path,
    gt: sitk.Image | None = None,
    doubtful: sitk.Image | None = None,
    suv_window: tuple[float, float] = (0.0, 10.0),
    title: str = "",
    sources: dict[str, str] | None = None,
) -> Path:
    """Write a PNG: inverted-grey PET MIPs (SUV window) with lesion outlines in the colours of
    :data:`COLOURS` (see :meth:`Outlines.of`: with ``gt`` found, missed and false lesions;
    without, predicted lesions and, in orange, those in ``doubtful``, the lesions fewer than a
    majority of folds voted for, :func:`petseg.report.doubtful_mask`), each predicted lesion
    numbered as the lesion report's rows, R/L and A/P at the edges (the patient's right on the
    viewer's left), the legend with counts below the pictures. Masks must lie on the PET's grid
    and hold 0/1 (or lesion labels); ``sources`` names the files in error messages."""
    if Path(output).suffix.lower() != ".png":
        raise ConfigError(str(output), "the QC picture is a PNG: give a file name ending in .png")
    low, high = suv_window
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ConfigError("suv_window", f"must be LOW HIGH with HIGH > LOW, got {low:g} {high:g}")
    sources = sources or {}
    _check(pet, {"mask": mask, "ground truth": gt, "doubtful lesions": doubtful}, sources)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    native = {
        role: None if image is None else sitk.GetArrayFromImage(image) > 0
        for role, image in (("mask", mask), ("gt", gt), ("doubtful", doubtful))
    }
    outlines = Outlines.of(native["mask"], native["gt"], native["doubtful"])
    counts = outlines.counts()
    pet_zyx, (sx, sy, sz) = _lps_array(pet)
    pets = mip_views(pet_zyx)
    views = {name: mip_views(_lps(m, mask)) for name, m in outlines.classes.items()}
    labels = _lps(outlines.labels, mask)
    numbered = min(outlines.count, MAX_NUMBERS)
    centres = ndimage.center_of_mass(labels > 0, labels, range(1, numbered + 1)) if numbered else []
    aspect = {"coronal": sz / sx, "sagittal": sz / sy}
    fig, axes = plt.subplots(
        1, 2, figsize=(8, 8.6), gridspec_kw={"width_ratios": [pet_zyx.shape[2] * sx, pet_zyx.shape[1] * sy]}
    )
    halo = [patheffects.withStroke(linewidth=2, foreground="white")]
    for ax, view in zip(axes, VIEWS):
        ax.imshow(pets[view], cmap="gray_r", vmin=low, vmax=high, origin="lower", aspect=aspect[view])
        for name, projections in views.items():
            if projections[view].any():
                ax.contour(projections[view].astype(float), levels=[0.5], colors=COLOURS[name], linewidths=1.2)
        for number, (z, y, x) in enumerate(centres, 1):
            ax.text(x if view == "coronal" else y, z, str(number), fontsize=7, path_effects=halo, clip_on=True)
        for edge, letter in zip((0.02, 0.98), VIEWS[view]):
            ax.text(edge, 0.98, letter, transform=ax.transAxes, ha="left" if edge < 0.5 else "right", va="top",
                    fontsize=12, fontweight="bold", path_effects=halo)  # fmt: skip
        ax.set_title(f"{view} MIP, SUV {low:g}-{high:g}")
        ax.set_axis_off()
    handles = [Line2D([], [], color=COLOURS[name], label=f"{name}: {counts[name]}") for name in outlines.classes]
    if outlines.count > numbered:
        handles.append(Line2D([], [], linestyle="", label=f"numbers: lesions 1-{numbered} of {outlines.count}"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(output)
