"""SUV normalisations beyond body weight: SUL (lean body mass) and SUVbsa (body surface area).

Both rescale SUVbw by a constant per patient, so a PET read as SUVbw becomes SUL or SUVbsa by
one factor:
- SUL = SUVbw x LBM / weight, LBM by Janmahasatian et al., Clin Pharmacokinet 2005;44:1051-65:
  male 9270 W / (6680 + 216 BMI), female 9270 W / (8780 + 244 BMI), W in kg, BMI = W / H(m)^2
  (the formula PERCIST 1.0 recommends in its 2014 update, Tahari et al., JNM 2014;55:1481).
- SUVbsa = SUVbw x BSA (cm^2) / weight (g), BSA by Du Bois & Du Bois, Arch Intern Med
  1916;17:863: 0.007184 W^0.425 H(cm)^0.725 m^2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from petseg.errors import InputError

log = logging.getLogger(__name__)

NORMALISATIONS = ("bw", "lbm", "bsa")
UNITS = {"bw": "SUVbw", "lbm": "SUL", "bsa": "SUVbsa"}
WEIGHT_KG = (1.0, 500.0)  # outside these a header value is a typo or another unit
HEIGHT_CM = (30.0, 250.0)


@dataclass(frozen=True)
class Patient:
    """What the normalisations need; ``source`` names where the values came from (a DICOM
    file, the command line). Sex is "M" or "F" (DICOM PatientSex)."""

    weight_kg: float | None = None
    height_cm: float | None = None
    sex: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        for name, value, (low, high) in (
            ("weight", self.weight_kg, WEIGHT_KG),
            ("height", self.height_cm, HEIGHT_CM),
        ):
            if value is not None and not low <= value <= high:
                raise InputError(self.source, f"patient {name} {value:g} lies outside {low:g}-{high:g}")
        if self.sex is not None and self.sex not in ("M", "F"):
            raise InputError(self.source, f"patient sex {self.sex!r}: SUL needs M or F")

    @classmethod
    def from_dataset(cls, ds, *, source: str) -> Patient:
        """From DICOM PatientWeight (kg), PatientSize (m) and PatientSex; absent, zero or
        implausible -> None (the last with a WARNING; a size of 30-250 "m" is taken as cm)."""
        values = {}
        for field, keyword, scale in (("weight_kg", "PatientWeight", 1.0), ("height_cm", "PatientSize", 100.0)):
            try:
                value = float(ds.get(keyword) or 0.0) * scale
            except (TypeError, ValueError):
                value = 0.0
            low, high = WEIGHT_KG if field == "weight_kg" else HEIGHT_CM
            if field == "height_cm" and low <= value / 100.0 <= high:
                log.warning(
                    "%s: PatientSize %g m is a height in cm: taken as %g cm", source, value / 100.0, value / 100.0
                )
                value /= 100.0
            if value and not low <= value <= high:
                log.warning("%s: %s %g is implausible: not used", source, keyword, value / scale)
                value = 0.0
            values[field] = round(value, 3) or None
        sex = str(ds.get("PatientSex") or "").upper()
        return cls(values["weight_kg"], values["height_cm"], sex if sex in ("M", "F") else None, source)

    def merged(self, other: Patient) -> Patient:
        """``other``'s values where given, else these (command-line values over headers)."""
        return Patient(
            other.weight_kg if other.weight_kg is not None else self.weight_kg,
            other.height_cm if other.height_cm is not None else self.height_cm,
            other.sex if other.sex is not None else self.sex,
            self._merged_source(other),
        )

    def _merged_source(self, other: Patient) -> str:
        fields = ("weight_kg", "height_cm", "sex")
        if all(getattr(other, f) is None for f in fields):
            return self.source
        if all(getattr(other, f) is not None or getattr(self, f) is None for f in fields):
            return other.source
        return f"{other.source} over {self.source}"

    @property
    def bsa_m2(self) -> float | None:
        """Du Bois body surface area (m^2), or None without weight and height."""
        if self.weight_kg is None or self.height_cm is None:
            return None
        return du_bois_bsa(self.weight_kg, self.height_cm)

    def need(self, what: str, *fields: str) -> None:
        """One line naming each missing value, with the DICOM header and the option that give it."""
        where = {
            "weight_kg": "weight (DICOM PatientWeight (0010,1030) or --weight)",
            "height_cm": "height (DICOM PatientSize (0010,1020) or --height)",
            "sex": "sex (DICOM PatientSex (0010,0040) or --sex)",
        }
        missing = [where[f] for f in fields if getattr(self, f) is None]
        if missing:
            raise InputError(
                self.source or "the PET", f"{what} needs the patient's {', '.join(missing)}: not known for this study"
            )


def janmahasatian_lbm(weight_kg: float, height_cm: float, sex: str) -> float:
    """Lean body mass (kg), Janmahasatian 2005."""
    bmi = weight_kg / (height_cm / 100.0) ** 2
    if sex == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)


def du_bois_bsa(weight_kg: float, height_cm: float) -> float:
    """Body surface area (m^2), Du Bois 1916."""
    return 0.007184 * weight_kg**0.425 * height_cm**0.725


@dataclass(frozen=True)
class Normalisation:
    """How the report's SUVs are normalised: ``factor`` turns SUVbw into ``unit``."""

    name: str
    unit: str
    factor: float
    lbm_kg: float | None = None
    bsa_m2: float | None = None

    def as_dict(self) -> dict:
        out = {"normalisation": self.name, "unit": self.unit, "factor_from_suvbw": self.factor}
        out.update({k: v for k, v in (("lbm_kg", self.lbm_kg), ("bsa_m2", self.bsa_m2)) if v is not None})
        return out


def normalisation(name: str, patient: Patient | None, *, source: str = "the PET") -> Normalisation:
    """The factor from SUVbw to SUVbw (1), SUL or SUVbsa for ``patient``; a missing value is
    one line naming the DICOM header that holds it."""
    if name not in NORMALISATIONS:
        raise InputError("--suv", f"{name!r}: expected one of {', '.join(NORMALISATIONS)}")
    patient = patient or Patient(source=source)
    bsa = patient.bsa_m2
    if name == "bw":
        return Normalisation("bw", UNITS["bw"], 1.0, bsa_m2=bsa)
    if name == "lbm":
        patient.need("SUL (lean body mass)", "weight_kg", "height_cm", "sex")
        lbm = janmahasatian_lbm(patient.weight_kg, patient.height_cm, patient.sex)
        return Normalisation("lbm", UNITS["lbm"], lbm / patient.weight_kg, lbm_kg=lbm, bsa_m2=bsa)
    patient.need("SUVbsa (body surface area)", "weight_kg", "height_cm")
    return Normalisation("bsa", UNITS["bsa"], bsa * 1e4 / (patient.weight_kg * 1e3), bsa_m2=bsa)
