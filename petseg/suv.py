"""SUVbw from a PET series' DICOM headers, with every value it used.

SUVbw = activity concentration (Bq/ml) x body weight (g) / injected dose decayed to the
time the images are decay-corrected to:
- Decay Correction START: the series' start (SeriesDate/SeriesTime; earliest acquisition
  date/time when the series time is missing);
- ADMIN: the administration time itself (no decay of the dose).
Injection date/time comes from RadiopharmaceuticalStartDateTime, else the series date plus
RadiopharmaceuticalStartTime (an injection "after" the scan on the same date is taken to be
the evening before, with a warning). Pixel values are rescaled per slice. PET already in
SUV (Units GML) is taken as is; Philips CNTS images are scaled with the private SUV Scale
Factor (7053,1000) when present, else converted to Bq/ml with the private Activity
Concentration Scale Factor (7053,1009) and then to SUVbw from the headers. Anything else,
and absurd inputs (weight or dose not positive, injection after the reference time, more
than 24 h between them), is refused with a one-line error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np

from petseg.errors import InputError

log = logging.getLogger(__name__)

PHILIPS_SUV_SCALE = (0x7053, 0x1000)  # Philips private: CNTS x this = SUVbw
PHILIPS_ACTIVITY_SCALE = (0x7053, 0x1009)  # Philips private: CNTS x this = Bq/ml


def dataset_source(ds, fallback: str) -> str:
    """The file a dataset was read from, for messages."""
    return str(getattr(ds, "filename", None) or fallback)


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


@dataclass(frozen=True)
class SuvCalculation:
    """How the PET's rescaled pixel values became SUVbw: every input and the factor, for the
    log (-v) and the lesion report, so that a reader can redo the arithmetic."""

    units: str
    method: str  # "already SUV", "Philips SUV scale factor", "SUVbw"
    factor: float  # SUV = rescaled pixel value x factor
    manufacturer: str = ""
    weight_kg: float | None = None
    dose_bq: float | None = None
    half_life_s: float | None = None
    decay_correction: str | None = None
    injection: str | None = None  # ISO date/time
    reference: str | None = None  # the time the images are decay-corrected to
    elapsed_s: float | None = None
    decayed_dose_bq: float | None = None
    activity_scale: float | None = None  # Philips (7053,1009): CNTS -> Bq/ml

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def line(self) -> str:
        return "SUV: " + ", ".join(f"{k} {v}" for k, v in self.as_dict().items())


def _positive_private(ds, tag: tuple[int, int]) -> float | None:
    if tag not in ds:
        return None
    value = float(ds[tag].value)
    return value if np.isfinite(value) and value > 0 else None


def suv_calculation(datasets: list, *, source: str) -> SuvCalculation:
    """The SUV conversion of a PET series (see the module's docstring), or a one-line refusal."""
    ds = datasets[0]
    units = str(ds.get("Units", "")).upper()
    maker = str(ds.get("Manufacturer", ""))
    if units == "GML":
        return SuvCalculation(units, "already SUV", 1.0, maker)
    activity_scale = None
    if units == "CNTS":
        suv_scale = _positive_private(ds, PHILIPS_SUV_SCALE)
        if suv_scale is not None:
            return SuvCalculation(units, "Philips SUV scale factor (7053,1000)", suv_scale, maker)
        activity_scale = _positive_private(ds, PHILIPS_ACTIVITY_SCALE)
        if activity_scale is None:
            raise InputError(
                source,
                "PET in CNTS without a Philips SUV scale factor (7053,1000) or activity concentration "
                "scale factor (7053,1009): cannot convert to SUV",
            )
    elif units != "BQML":
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
    to_bqml = activity_scale or 1.0
    common = dict(
        manufacturer=maker, weight_kg=weight, dose_bq=dose, half_life_s=half_life, decay_correction=correction
    )
    common["activity_scale"] = activity_scale
    if correction == "ADMIN":  # the images are decay-corrected to the injection: the dose as injected
        return SuvCalculation(units, "SUVbw", to_bqml * weight * 1000.0 / dose, **common)
    file = dataset_source(ds, source)
    reference = _datetime(ds.get("SeriesDate"), ds.get("SeriesTime"), source=file)
    if reference is None:
        acquired = [
            _datetime(d.get("AcquisitionDate"), d.get("AcquisitionTime"), source=dataset_source(d, source))
            for d in datasets
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
    return SuvCalculation(
        units,
        "SUVbw",
        to_bqml * weight * 1000.0 / decayed,
        injection=injection.isoformat(),
        reference=reference.isoformat(),
        elapsed_s=elapsed,
        decayed_dose_bq=decayed,
        **common,
    )
