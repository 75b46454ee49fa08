"""DICOM PET/CT in: series discovery, volumes, and the PET as SUV (the conversion is
:mod:`petseg.suv`; the writing :mod:`petseg.dicom_write`)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.suv import SuvCalculation, dataset_source, suv_calculation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Series:
    uid: str
    modality: str
    description: str
    files: tuple[Path, ...]

    def summary(self) -> str:
        return f"{self.uid} ({self.modality}, {len(self.files)} files, '{self.description}')"


def find_series(folder: str | Path) -> list[Series]:
    """Every DICOM series under ``folder`` (recursively), grouped by SeriesInstanceUID."""
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "DICOM folder not found")
    groups: dict[str, list] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: skipped (folders often hold readme files, DICOMDIR, ...)
            continue
        if "SeriesInstanceUID" in ds:
            groups[str(ds.SeriesInstanceUID)].append((path, ds))
    return [
        Series(
            uid,
            str(items[0][1].get("Modality", "")),
            str(items[0][1].get("SeriesDescription", "")),
            tuple(p for p, _ in items),
        )
        for uid, items in sorted(groups.items())
    ]


def select_series(folder: str | Path, *, modality: str, uid: str | None = None, option: str = "--series") -> Series:
    """The one series of ``modality`` in ``folder`` (or the one with ``uid``)."""
    series = find_series(folder)
    if uid is not None:
        chosen = [s for s in series if s.uid == uid]
        if not chosen:
            raise InputError(folder, f"no series with SeriesInstanceUID {uid}")
        return chosen[0]
    matching = [s for s in series if s.modality == modality]
    if not matching:
        found = ", ".join(sorted({s.modality for s in series})) or "none"
        raise InputError(folder, f"no {modality} series found (modalities present: {found})")
    if len(matching) > 1:
        listing = "; ".join(s.summary() for s in matching)
        raise InputError(folder, f"{len(matching)} {modality} series found, choose one with {option} UID: {listing}")
    return matching[0]


def _read_datasets(series: Series) -> list:
    import pydicom

    datasets = []
    for path in series.files:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as err:  # pydicom raises many types for damaged files
            raise InputError(path, f"DICOM file cannot be read ({type(err).__name__}: {err})") from None
    return datasets


def _vector(ds, keyword: str, length: int, *, source: str) -> np.ndarray:
    """A numeric multi-valued attribute of one slice, or a refusal naming the file and attribute."""
    try:
        value = np.asarray([float(v) for v in ds[keyword].value], float)
    except (KeyError, TypeError, ValueError):
        raise InputError(dataset_source(ds, source), f"slice has no usable {keyword}") from None
    if value.shape != (length,) or not np.isfinite(value).all():
        raise InputError(dataset_source(ds, source), f"slice has an invalid {keyword} {list(value)}")
    return value


def _sort_slices(datasets: list, *, source: str) -> tuple[list, np.ndarray, np.ndarray]:
    """Slices ordered along the normal; returns them, the 3x3 direction (columns x, y, z)
    and each slice's position along the normal (mm)."""
    iop = _vector(datasets[0], "ImageOrientationPatient", 6, source=source)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    for ds in datasets:
        if not np.allclose(_vector(ds, "ImageOrientationPatient", 6, source=source), iop, atol=1e-4):
            raise InputError(dataset_source(ds, source), "slices have different orientations")
    position = [float(np.dot(_vector(ds, "ImagePositionPatient", 3, source=source), normal)) for ds in datasets]
    order = np.argsort(position, kind="stable")
    return [datasets[i] for i in order], np.stack([row, col, normal], axis=1), np.asarray(position)[order]


def volume_from_datasets(datasets: list, *, source: str) -> tuple[sitk.Image, list]:
    """Float64-rescaled volume (slope/intercept per slice) with the series' geometry, and
    the datasets in the volume's slice order."""
    if len(datasets) < 2:
        raise InputError(source, f"a volume needs at least 2 slices, found {len(datasets)}")
    ordered, direction, positions = _sort_slices(datasets, source=source)
    gaps = np.diff(positions)
    spacing = float(np.median(gaps)) if len(gaps) else 0.0
    # scanners round positions (3.19-3.29 mm gaps around 3.27 mm are real); a missing slice is not
    if gaps.min() <= 0 or np.abs(gaps - spacing).max() > 0.1 * spacing:
        raise InputError(
            source, f"slice spacing is not uniform ({gaps.min():.3f}-{gaps.max():.3f} mm) or slices repeat"
        )
    slices = []
    for ds in ordered:
        try:
            slope = float(ds.get("RescaleSlope", 1.0))
            intercept = float(ds.get("RescaleIntercept", 0.0))
            pixels = ds.pixel_array
        except Exception as err:  # missing or undecodable pixel data, non-numeric rescale values
            raise InputError(
                dataset_source(ds, source), f"slice pixel data unusable ({type(err).__name__}: {err})"
            ) from None
        if slices and pixels.shape != slices[0].shape:
            raise InputError(
                dataset_source(ds, source), f"slice matrix {pixels.shape} differs from the series' {slices[0].shape}"
            )
        slices.append(pixels.astype(np.float64) * slope + intercept)
    image = sitk.GetImageFromArray(np.stack(slices))
    dy, dx = _vector(ordered[0], "PixelSpacing", 2, source=source)
    if min(dx, dy) <= 0:
        raise InputError(dataset_source(ordered[0], source), f"pixel spacing {dy}, {dx} must be positive")
    image.SetSpacing((dx, dy, spacing))
    image.SetOrigin(tuple(float(v) for v in ordered[0].ImagePositionPatient))
    image.SetDirection(tuple(direction.reshape(-1)))
    return image, ordered


@dataclass(frozen=True)
class PetSeries:
    """A PET series read as SUV: the volume (float32), its datasets in slice order, and how
    the SUV was computed."""

    image: sitk.Image
    datasets: list
    suv: SuvCalculation


def read_pet(folder: str | Path, *, uid: str | None = None) -> PetSeries:
    """The PET series in ``folder`` as SUVbw; the calculation is logged at -v."""
    series = select_series(folder, modality="PT", uid=uid, option="--pet-series")
    datasets = _read_datasets(series)
    image, ordered = volume_from_datasets(datasets, source=str(folder))
    try:
        suv = suv_calculation(ordered, source=str(folder))
    except (ValueError, TypeError, AttributeError) as err:  # non-numeric weight, dose, half-life ...
        raise InputError(dataset_source(ordered[0], str(folder)), f"PET attributes unusable for SUV ({err})") from None
    log.debug("%s: %s", folder, suv.line())
    return PetSeries(sitk.Cast(image * suv.factor, sitk.sitkFloat32), ordered, suv)


def read_pet_suv(folder: str | Path, *, uid: str | None = None) -> tuple[sitk.Image, list]:
    """SUVbw volume (float32) of the PET series in ``folder``, and its datasets in slice order."""
    pet = read_pet(folder, uid=uid)
    return pet.image, pet.datasets


def read_ct(folder: str | Path, *, uid: str | None = None) -> sitk.Image:
    """CT volume in HU (float32) of the CT series in ``folder``."""
    series = select_series(folder, modality="CT", uid=uid, option="--ct-series")
    image, _ = volume_from_datasets(_read_datasets(series), source=str(folder))
    return sitk.Cast(image, sitk.sitkFloat32)
