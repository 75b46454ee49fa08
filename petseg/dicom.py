"""DICOM PET/CT in: series discovery, volumes, SUVbw (the writing is :mod:`petseg.dicom_write`).

SUVbw = activity concentration (Bq/ml) x body weight (g) / injected dose decayed to the
time the images are decay-corrected to:
- Decay Correction START: the series' start (SeriesDate/SeriesTime; earliest acquisition
  date/time when the series time is missing);
- ADMIN: the administration time itself (no decay of the dose).
Injection date/time comes from RadiopharmaceuticalStartDateTime, else the series date plus
RadiopharmaceuticalStartTime (an injection "after" the scan on the same date is taken to be
the evening before, with a warning). Pixel values are rescaled per slice. PET already in
SUV (Units GML) is taken as is; Philips CNTS images are scaled with the private SUV Scale
Factor (7053,1000) when present. Anything else, and absurd inputs (weight or dose not
positive, injection after the reference time, more than 24 h between them), is refused
with a one-line error.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError

log = logging.getLogger(__name__)

PHILIPS_SUV_SCALE = (0x7053, 0x1000)


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


def _source(ds, fallback: str) -> str:
    return str(getattr(ds, "filename", None) or fallback)


def _vector(ds, keyword: str, length: int, *, source: str) -> np.ndarray:
    """A numeric multi-valued attribute of one slice, or a refusal naming the file and attribute."""
    try:
        value = np.asarray([float(v) for v in ds[keyword].value], float)
    except (KeyError, TypeError, ValueError):
        raise InputError(_source(ds, source), f"slice has no usable {keyword}") from None
    if value.shape != (length,) or not np.isfinite(value).all():
        raise InputError(_source(ds, source), f"slice has an invalid {keyword} {list(value)}")
    return value


def _sort_slices(datasets: list, *, source: str) -> tuple[list, np.ndarray, np.ndarray]:
    """Slices ordered along the normal; returns them, the 3x3 direction (columns x, y, z)
    and each slice's position along the normal (mm)."""
    iop = _vector(datasets[0], "ImageOrientationPatient", 6, source=source)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    for ds in datasets:
        if not np.allclose(_vector(ds, "ImageOrientationPatient", 6, source=source), iop, atol=1e-4):
            raise InputError(_source(ds, source), "slices have different orientations")
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
            raise InputError(_source(ds, source), f"slice pixel data unusable ({type(err).__name__}: {err})") from None
        if slices and pixels.shape != slices[0].shape:
            raise InputError(
                _source(ds, source), f"slice matrix {pixels.shape} differs from the series' {slices[0].shape}"
            )
        slices.append(pixels.astype(np.float64) * slope + intercept)
    image = sitk.GetImageFromArray(np.stack(slices))
    dy, dx = _vector(ordered[0], "PixelSpacing", 2, source=source)
    if min(dx, dy) <= 0:
        raise InputError(_source(ordered[0], source), f"pixel spacing {dy}, {dx} must be positive")
    image.SetSpacing((dx, dy, spacing))
    image.SetOrigin(tuple(float(v) for v in ordered[0].ImagePositionPatient))
    image.SetDirection(tuple(direction.reshape(-1)))
    return image, ordered


def _datetime(date: str | None, time: str | None, *, source: str) -> dt.datetime | None:
    """DICOM DA + TM -> datetime; a malformed value is an InputError naming it."""
    if not date or not time:
        return None
    parts = str(time).strip().split(".")
    frac = parts[1] if len(parts) > 1 else "0"
    whole = parts[0].ljust(6, "0")
    try:
        return dt.datetime.strptime(f"{str(date).strip()}{whole}", "%Y%m%d%H%M%S") + dt.timedelta(
            seconds=float(f"0.{frac}")
        )
    except ValueError:
        raise InputError(source, f"malformed date/time {date!r} {time!r} (expected YYYYMMDD and HHMMSS.frac)") from None


def _dicom_datetime(value: str | None, *, source: str) -> dt.datetime | None:
    if not value:
        return None
    value = str(value).split("+")[0].split("-")[0]
    return _datetime(value[:8], value[8:] or "000000", source=source)


def suv_factor(datasets: list, *, source: str) -> float:
    """Multiplier from the rescaled pixel values to SUVbw (1.0 for images already in SUV)."""
    ds = datasets[0]
    units = str(ds.get("Units", "")).upper()
    if units == "GML":
        return 1.0
    if units == "CNTS":
        if PHILIPS_SUV_SCALE in ds and float(ds[PHILIPS_SUV_SCALE].value) > 0:
            return float(ds[PHILIPS_SUV_SCALE].value)
        raise InputError(source, "PET in CNTS without a Philips SUV scale factor (7053,1000): cannot convert to SUV")
    if units != "BQML":
        raise InputError(source, f"PET units {units or 'missing'}: only BQML, GML (SUV) or Philips CNTS are supported")
    weight = float(ds.get("PatientWeight") or 0.0)
    if not 0 < weight < 500:
        raise InputError(source, f"patient weight {weight} kg is missing or absurd")
    try:
        info = ds.RadiopharmaceuticalInformationSequence[0]
    except (AttributeError, IndexError):
        raise InputError(
            source, "no Radiopharmaceutical Information Sequence: dose and injection time unknown"
        ) from None
    dose = float(info.get("RadionuclideTotalDose") or 0.0)
    half_life = float(info.get("RadionuclideHalfLife") or 0.0)
    if dose <= 0:
        raise InputError(source, f"injected dose {dose} Bq is missing or not positive")
    if half_life <= 0:
        raise InputError(source, f"radionuclide half-life {half_life} s is missing or not positive")
    correction = str(ds.get("DecayCorrection", "")).upper()
    if correction not in ("START", "ADMIN"):
        raise InputError(source, f"Decay Correction {correction or 'missing'}: only START and ADMIN are supported")
    if correction == "ADMIN":
        return weight * 1000.0 / dose
    file = _source(ds, source)
    reference = _datetime(ds.get("SeriesDate"), ds.get("SeriesTime"), source=file)
    if reference is None:
        acquired = [
            _datetime(d.get("AcquisitionDate"), d.get("AcquisitionTime"), source=_source(d, source)) for d in datasets
        ]
        acquired = [a for a in acquired if a is not None]
        if not acquired:
            raise InputError(source, "no series or acquisition date/time: cannot decay-correct the dose")
        reference = min(acquired)
    injection = _dicom_datetime(info.get("RadiopharmaceuticalStartDateTime"), source=file)
    if injection is None:
        start = info.get("RadiopharmaceuticalStartTime")
        if not start:
            raise InputError(source, "no injection time (RadiopharmaceuticalStartTime)")
        injection = _datetime(reference.strftime("%Y%m%d"), start, source=file)
        day_before = injection - dt.timedelta(days=1)
        if injection > reference and reference - day_before <= dt.timedelta(hours=12):
            injection = day_before  # e.g. injected 23:30, scanned 00:30: the dates were not stored
            log.warning("%s: injection time after the scan time: taken as the day before", source)
    elapsed = (reference - injection).total_seconds()
    if elapsed < 0:
        raise InputError(source, f"injection ({injection}) is after the decay-correction reference time ({reference})")
    if elapsed > 24 * 3600:
        raise InputError(source, f"{elapsed / 3600:.1f} h between injection and scan: implausible")
    decayed = dose * 2.0 ** (-elapsed / half_life)
    return weight * 1000.0 / decayed


def read_pet_suv(folder: str | Path, *, uid: str | None = None) -> tuple[sitk.Image, list]:
    """SUVbw volume (float32) of the PET series in ``folder``, and its datasets in slice order."""
    series = select_series(folder, modality="PT", uid=uid, option="--pet-series")
    datasets = _read_datasets(series)
    image, ordered = volume_from_datasets(datasets, source=str(folder))
    try:
        factor = suv_factor(ordered, source=str(folder))
    except (ValueError, TypeError, AttributeError) as err:  # non-numeric weight, dose, half-life ...
        raise InputError(_source(ordered[0], str(folder)), f"PET attributes unusable for SUV ({err})") from None
    suv = sitk.Cast(image * factor, sitk.sitkFloat32)
    return suv, ordered


def read_ct(folder: str | Path, *, uid: str | None = None) -> sitk.Image:
    """CT volume in HU (float32) of the CT series in ``folder``."""
    series = select_series(folder, modality="CT", uid=uid, option="--ct-series")
    image, _ = volume_from_datasets(_read_datasets(series), source=str(folder))
    return sitk.Cast(image, sitk.sitkFloat32)
