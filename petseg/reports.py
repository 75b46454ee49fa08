"""``petseg report``: measure masks from anywhere (manual contours, other tools, petseg's own)
over their PET, one study or a folder of them, with the code of ``predict --report``
(:func:`petseg.report.lesion_report`), and the cohort's tables."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.atomic import atomic_paths, check_output_folder
from petseg.checks import check_ct_range, check_mask, check_pet_range, check_swapped, check_values
from petseg.errors import ConfigError, InputError, PetsegError
from petseg.geometry import physical_bounds, same_grid
from petseg.io import csv_text, read_image
from petseg.layout import (
    CHANNEL_SUFFIXES,
    STUDY_LABEL,
    STUDY_PET,
    case_name,
    find_gc_case,
    index_images,
    is_gc_input,
    list_images,
    pair_case,
    strip_suffix,
)
from petseg.metrics import voxel_ml
from petseg.normalise import Patient
from petseg.outputs import CaseOutputs, cohort_tables
from petseg.report import STUDY_MEASURES, ReportSettings, lesion_report, write_report

log = logging.getLogger(__name__)
RESAMPLED_VOLUME_WARN = 0.2  # a mask that changes volume by more than this on the PET grid


@dataclass(frozen=True)
class Study:
    """One study to measure: its name, PET (an image file or a DICOM folder), mask, and the
    liver mask and CT when given."""

    name: str
    pet: Path
    mask: Path
    liver_mask: Path | None = None
    ct: Path | None = None


def is_dicom_folder(folder: Path) -> bool:
    """A folder without image files that holds DICOM (the first file that reads as one)."""
    if not folder.is_dir() or list_images(folder):
        return False
    import pydicom

    for path in sorted(p for p in folder.rglob("*") if p.is_file())[:50]:
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
            return True
        except Exception:
            continue
    return False


def pet_files(folder: Path) -> dict[str, Path]:
    """case -> PET of a folder in any layout ``predict`` reads (nnU-Net ``<case>_0001``, study
    folders, Grand Challenge) or of plain ``<case>.<ext>`` PET files."""
    if is_gc_input(folder):
        case = find_gc_case(folder)
        return {case.name: case.pet}
    found = index_images(folder, role="PET", channel=1, study=STUDY_PET)
    channel = {name: path for name, path in found.items() if strip_suffix(path).endswith(CHANNEL_SUFFIXES[1])}
    return channel or found  # nnU-Net-named: only the PET channel (the CT's _0000 files are not studies)


def find_studies(pet: Path, mask: Path, *, liver_mask: Path | None = None, name: str | None = None) -> list[Study]:
    """The studies of ``--pet`` and ``--mask``: one of each (a file, or a DICOM folder for the
    PET), or folders matched by case name. A study without a mask is an error."""
    pet, mask = Path(pet), Path(mask)
    if not pet.exists():
        raise InputError(pet, "PET not found")
    if not mask.exists():
        raise InputError(mask, "mask not found")
    single = pet.is_file() or is_dicom_folder(pet)
    if single:
        if mask.is_dir():
            raise InputError(mask, "is a folder: give the mask file of this study")
        if liver_mask is not None and Path(liver_mask).is_dir():
            raise InputError(liver_mask, "is a folder: give the liver mask file of this study")
        case = name or (case_name(pet.resolve().name) if pet.is_dir() else pair_case(None, pet).name)
        return [Study(pair_case(None, mask, case).name, pet, mask, liver_mask)]
    if name is not None:
        raise ConfigError("--name", "names one study (--pet FILE); a folder's studies are named by their files")
    if mask.is_file():
        raise InputError(mask, f"is a file, but the PET ({pet}) is a folder: give the folder of masks")
    pets = pet_files(pet)
    masks = index_images(mask, role="mask", study=STUDY_LABEL)
    livers = {} if liver_mask is None else index_images(liver_mask, role="liver mask", study=STUDY_LABEL)
    unmatched = sorted(set(masks) - set(pets))
    by_lower = {name.lower(): name for name in unmatched}
    for case in sorted(set(pets) - set(masks)):
        if case.lower() in by_lower:
            log.warning("%s: no mask; %s in %s differs only in letter case", case, by_lower[case.lower()], mask)
    if unmatched:
        log.warning("%d mask file(s) in %s match no PET: %s", len(unmatched), mask, ", ".join(unmatched[:5]))
    if livers:
        without = sorted(set(pets) - set(livers))
        if without:
            log.warning(
                "%d stud(ies) have no liver mask in %s, so no PERCIST convention: %s",
                len(without),
                liver_mask,
                ", ".join(without[:5]),
            )
    return [Study(case, path, masks.get(case), livers.get(case)) for case, path in sorted(pets.items())]


def read_study_pet(study: Study) -> tuple[sitk.Image, Patient | None, dict]:
    """The PET as SUVbw, the patient's weight/height/sex when its headers say, and facts for
    the report (a DICOM series' SUV calculation)."""
    if study.pet.is_dir():
        from petseg.dicom import read_pet

        series = read_pet(study.pet)
        source = str(study.pet)
        return (
            series.image,
            Patient.from_dataset(series.datasets[0], source=source),
            {"suv_calculation": series.suv.as_dict()},
        )
    image = read_image(study.pet, role="PET")
    return image, None, {}


def check_pet(pet: sitk.Image, *, source: Path) -> None:
    values = sitk.GetArrayViewFromImage(pet)
    check_values(values, source=source, role="PET")
    distinct = np.unique(values[:: max(1, values.size // 1_000_000)])
    # a mask's values (0 and one label); a PET, even a phantom's, has no voxels of exactly 0 and 1 alone
    if distinct.size <= 2 and distinct.min() == 0 and np.all(distinct == np.round(distinct)):
        shown = ", ".join(f"{v:g}" for v in distinct)
        raise InputError(source, f"PET holds only the values {shown}: a mask given as the PET?")
    check_pet_range(values, source=source)


def on_pet_grid(image: sitk.Image, pet: sitk.Image, *, source: Path, role: str) -> sitk.Image:
    """``image`` (a mask) on the PET's grid: as it is when it lies there, else resampled by
    nearest neighbour, said in the log, with a WARNING when its volume changes by more than
    20 % (a finer mask whose small lesions fall between PET voxel centres)."""
    check_mask(sitk.GetArrayViewFromImage(image), source=source, role=role)
    if same_grid(pet, image, tol=1e-3):
        return image
    lo, hi = physical_bounds(image)
    plo, phi = physical_bounds(pet)
    if np.any(hi < plo) or np.any(phi < lo):
        box = lambda a, b: ", ".join(f"{x} {p:.0f}..{q:.0f}" for x, p, q in zip("xyz", a, b))  # noqa: E731
        raise InputError(
            source, f"{role} and PET do not overlap in space ({role} {box(lo, hi)}; PET {box(plo, phi)} mm)"
        )
    if image.GetSize() == pet.GetSize() and np.allclose(lo, plo, atol=1.0) and np.allclose(hi, phi, atol=1.0):
        log.warning(
            "%s: the %s has the PET's size and extent but another direction or origin (direction %s, PET %s): "
            "resampled by position, which mirrors or rotates it against its voxel order; if its header is "
            "wrong (an RAS/LPS export), fix the header",
            source,
            role,
            np.round(image.GetDirection(), 3).tolist(),
            np.round(pet.GetDirection(), 3).tolist(),
        )
    before = float((sitk.GetArrayViewFromImage(image) > 0).sum()) * voxel_ml(image)
    out = sitk.Resample(sitk.Cast(image > 0, sitk.sitkUInt8), pet, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    after = float(sitk.GetArrayViewFromImage(out).sum()) * voxel_ml(pet)
    log.info(
        "%s: %s on another grid than the PET: resampled (nearest) onto it (%.2f ml -> %.2f ml)",
        source,
        role,
        before,
        after,
    )
    if before > 0 and abs(after - before) > RESAMPLED_VOLUME_WARN * before:
        log.warning("%s: the %s's volume changed from %.2f ml to %.2f ml on the PET grid", source, role, before, after)
    return out


def measure_study(study: Study, settings: ReportSettings, *, patient: Patient | None = None) -> dict:
    """The report of one study (:func:`petseg.report.lesion_report`); ``patient`` values given
    on the command line take precedence over the DICOM headers'."""
    if study.mask is None:
        raise InputError(study.pet, f"no mask for case {study.name}")
    for other in (study.pet, study.mask):
        if study.ct is not None and Path(study.ct).resolve() == Path(other).resolve():
            raise InputError(study.ct, "given as the CT and as the PET or mask")
    pet, from_headers, facts = read_study_pet(study)
    check_pet(pet, source=study.pet)
    if study.ct is not None:  # only its values matter (minimum and maximum): any grid
        ct_image = read_image(study.ct, role="CT")  # kept: a view does not keep its image alive
        ct = sitk.GetArrayViewFromImage(ct_image)
        check_values(ct, source=study.ct, role="CT")
        check_swapped(ct, sitk.GetArrayViewFromImage(pet), ct_source=study.ct, pet_source=study.pet)
        check_ct_range(ct, source=study.ct)
    mask = on_pet_grid(read_image(study.mask, role="mask"), pet, source=study.mask, role="mask")
    liver = None
    if study.liver_mask is not None:
        liver = on_pet_grid(
            read_image(study.liver_mask, role="liver mask"), pet, source=study.liver_mask, role="liver mask"
        )
    if from_headers is not None and patient is not None:
        patient = from_headers.merged(patient)
    report = lesion_report(
        mask,
        pet,
        case=study.name,
        settings=settings,
        patient=patient or from_headers,
        liver_mask=liver,
        liver_source=str(study.liver_mask),
        pet_source=str(study.pet),
    )
    report["pet"], report["mask"] = str(study.pet), str(study.mask)
    return report | facts


def study_row(report: dict) -> dict:
    """One row of ``studies.csv``: the unit, then every study measure of every convention,
    the column named ``<measure>_<convention>`` (e.g. ``tmtv_ml_suv4.0``)."""
    row = {"case": report["case"], "suv_unit": report["suv"]["unit"]}
    row.update({key: report.get(key) for key in ("suv_peak_local", "suv_peak_global")})
    for key, entry in report["conventions"].items():
        row.update({f"{measure}_{key}": entry[measure] for measure in STUDY_MEASURES})
    liver = report.get("liver_reference")
    if liver is not None:
        row.update(liver_mean=liver["mean"], liver_sd=liver["sd"], percist_threshold=liver["threshold"])
    row.update({key: report["suv"].get(key) for key in ("bsa_m2", "lbm_kg") if key in report["suv"]})
    row["min_volume_ml"] = report["min_volume_ml"]
    return {k: "" if v is None else v for k, v in row.items()}


def write_tables(reports: list[dict], folder: Path) -> tuple[Path, Path]:
    """``studies.csv`` and ``lesions.csv`` of ``reports``, both or neither."""
    studies = [study_row(report) for report in reports]
    lesions = [{"case": r["case"], "suv_unit": r["suv"]["unit"], **lesion} for r in reports for lesion in r["lesions"]]
    targets = cohort_tables(folder)
    with atomic_paths(targets) as (studies_tmp, lesions_tmp):
        studies_tmp.write_text(csv_text(studies) if studies else "case\n")
        lesions_tmp.write_text(csv_text(lesions) if lesions else "case,lesion\n")
    return targets


def remove_stale(output: Path, case: str) -> None:
    """A failed study's reports from an earlier run would stand beside this run's tables."""
    for path in CaseOutputs(output, case, "").report:
        if path.is_file():
            path.unlink()
            log.warning("%s: removed the report of an earlier run (this study failed now)", path)


def report_studies(
    studies: list[Study], output: Path, settings: ReportSettings, *, patient: Patient | None = None, tables: bool
) -> list[str]:
    """Measure each study (a failing one is logged and the others go on), write each one's
    ``<case>_lesions.json``/``.csv`` and, with ``tables``, the cohort's tables. Returns the
    failures, one line each."""
    check_output_folder(output)
    output.mkdir(parents=True, exist_ok=True)
    reports, failures = [], []
    for study in studies:
        try:
            report = measure_study(study, settings, patient=patient)
            write_report(report, output)
        except PetsegError as err:
            if not tables:
                raise
            log.error("%s", err)
            failures.append(f"{study.name}: {err}")
            remove_stale(output, study.name)
            continue
        reports.append(report)
        log.info(
            "%s: %d lesion(s), TMTV %.2f ml, SUVmax %s (%s)",
            study.name,
            report["lesion_count"],
            report["tmtv_ml"],
            "-" if report["suv_max"] is None else f"{report['suv_max']:.2f}",
            report["suv"]["unit"],
        )
    if tables:
        for path in write_tables(reports, output):
            log.info("wrote %s", path)
    return failures
