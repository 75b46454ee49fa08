"""QC pictures: coronal and sagittal PET MIPs with lesion outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.atomic import atomic_path
from petseg.checks import check_mask, check_same_grid
from petseg.errors import ConfigError

LPS = "LPS"  # array (z, y, x): x towards the patient's left, y posterior, z superior


def _lps_array(image: sitk.Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    oriented = sitk.DICOMOrient(image, LPS)
    return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()


def mip_views(volume_zyx: np.ndarray) -> dict[str, np.ndarray]:
    """Coronal (max over y) and sagittal (max over x) projections, each (z, horizontal)."""
    return {"coronal": volume_zyx.max(axis=1), "sagittal": volume_zyx.max(axis=2)}


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
    """Write a PNG: inverted-grey PET MIPs (SUV window), predicted lesions outlined in red,
    ground truth (optional) in green; predicted lesions in ``doubtful`` (a mask of the lesions
    fewer than a majority of folds voted for, see :func:`petseg.report.doubtful_mask`) in
    orange instead of red. Patient's right is on the viewer's left (coronal).
    Masks must lie on the PET's grid and hold 0/1 (or lesion labels); ``sources`` names the
    files ("PET", "mask", "ground truth") in error messages."""
    if Path(output).suffix.lower() != ".png":
        raise ConfigError(str(output), "the QC picture is a PNG: give a file name ending in .png")
    low, high = suv_window
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise ConfigError("suv_window", f"must be LOW HIGH with HIGH > LOW, got {low:g} {high:g}")
    sources = sources or {}
    for role, image in (("mask", mask), ("ground truth", gt), ("doubtful lesions", doubtful)):
        if image is not None:
            source = sources.get(role, role)
            check_same_grid(
                pet, image, reference_source=f"the PET {sources.get('PET', '')}".strip(), other_source=source
            )
            check_mask(sitk.GetArrayViewFromImage(image), source=source, role=role)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pet_zyx, (sx, sy, sz) = _lps_array(pet)
    pets = mip_views(pet_zyx)
    predicted = _lps_array(mask)[0] > 0
    outlines = {}
    if doubtful is not None:
        unsure = _lps_array(doubtful)[0] > 0
        outlines["prediction"] = (mip_views(predicted & ~unsure), "red")
        outlines["doubtful (fold vote < majority)"] = (mip_views(unsure), "darkorange")
    else:
        outlines["prediction"] = (mip_views(predicted), "red")
    if gt is not None:
        outlines["ground truth"] = (mip_views(_lps_array(gt)[0] > 0), "lime")
    aspect = {"coronal": sz / sx, "sagittal": sz / sy}
    fig, axes = plt.subplots(
        1, 2, figsize=(8, 8), gridspec_kw={"width_ratios": [pet_zyx.shape[2] * sx, pet_zyx.shape[1] * sy]}
    )
    for ax, view in zip(axes, ("coronal", "sagittal")):
        ax.imshow(
            pets[view],
            cmap="gray_r",
            vmin=suv_window[0],
            vmax=suv_window[1],
            origin="lower",
            aspect=aspect[view],
            interpolation="nearest",
        )
        for label, (views, colour) in outlines.items():
            if views[view].any():
                ax.contour(views[view].astype(float), levels=[0.5], colors=colour, linewidths=0.8)
            ax.plot([], [], color=colour, label=label)
        ax.set_title(f"{view} MIP, SUV {suv_window[0]:g}-{suv_window[1]:g}")
        ax.set_axis_off()
    axes[0].legend(loc="lower left", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.96) if title else None)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(output)
