"""Which cases a folder holds and what their files are called: the one owner of input naming
rules (what petseg writes is named by :mod:`petseg.outputs`).

Four layouts:
- **nnU-Net**: ``<case>_0000.<ext>`` = CT, ``<case>_0001.<ext>`` = PET; training data in
  ``imagesTr/`` with masks ``labelsTr/<case>.<ext>``. A folder that holds ``imagesTs/`` or
  ``imagesTr/`` is followed into it.
- **study folders** (the autoPET/TCIA NIfTI release and ``petseg convert-dicom``'s output):
  ``CTres.<ext>`` (CT on the PET grid; ``CT.<ext>`` where there is none) + ``SUV.<ext>``, and
  ``SEG.<ext>`` as the label. The input is one study folder (the case is named after it), a
  patient folder of study folders, or a release root ``PETCT_<id>/<study>/``; a nested study
  is named ``<patient>_<study>`` (non-name characters become "-"), unique by construction.
- **Grand Challenge**: ``images/ct/<uuid>.mha`` and ``images/pet/<uuid>.mha``, one study per
  input folder.
- single files, matched by name without extension (evaluation), or one CT/PET pair.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from petseg.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
CHANNEL_SUFFIXES = ("_0000", "_0001")  # nnU-Net channel files: 0 = CT, 1 = PET (the network's order)
IMAGES_TR, LABELS_TR = "imagesTr", "labelsTr"
IMAGES_TS = "imagesTs"
GC_CT, GC_PET = Path("images/ct"), Path("images/pet")
# study folders: file stems by role, in order of preference
STUDY_CT, STUDY_PET, STUDY_LABEL = ("CTres", "CT"), ("SUV",), ("SEG",)
STUDY_BQML = "PET"  # the release's PET in Bq/ml: never read as SUV
RELEASE_PATIENT = "PETCT_"  # the release's patient folders: PETCT_<id>/<study>/

log = logging.getLogger("petseg")


@dataclass(frozen=True)
class Case:
    """One study: its name, CT and PET files, the extension outputs take, and the label if known."""

    name: str
    ct: Path | None  # None: a PET-only study
    pet: Path
    suffix: str
    label: Path | None = None


def image_suffix(path: str | Path) -> str:
    """The image extension of ``path`` as written (".nii.gz" counts as one; "CT.NII.GZ" has
    ".NII.GZ"), or "" if not an image name."""
    name = Path(path).name
    return next((name[-len(s) :] for s in IMAGE_SUFFIXES if name.lower().endswith(s)), "")


def strip_suffix(path: str | Path) -> str:
    """File name without its image extension: ``a/b.nii.gz`` -> ``b``."""
    name = Path(path).name
    suffix = image_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted; hidden files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    # not only regular files: a FIFO or a broken link named like an image is reported by the reader
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and image_suffix(p) and not p.is_dir())


# --- nnU-Net / autoPET release ------------------------------------------------------------


def channel_paths(folder: Path, case: str, suffix: str) -> tuple[Path, Path]:
    """(CT, PET) file names of ``case`` in an nnU-Net images folder."""
    ct, pet = (folder / f"{case}{channel}{suffix}" for channel in CHANNEL_SUFFIXES)
    return ct, pet


def training_paths(root: Path, case: str, suffix: str = ".nii.gz") -> tuple[Path, Path, Path]:
    """(CT, PET, label) of ``case`` in an autoPET/nnU-Net training folder."""
    return (*channel_paths(root / IMAGES_TR, case, suffix), root / LABELS_TR / f"{case}{suffix}")


def _nnunet_cases(folder: Path, *, labels: Path | None = None) -> tuple[list[Case], list[InputError]]:
    """The complete cases of an nnU-Net images folder, and one error per incomplete case."""
    cases, problems = [], []
    ct_suffix, pet_suffix = CHANNEL_SUFFIXES
    for image in list_images(folder):
        stem, suffix = strip_suffix(image), image_suffix(image)
        if stem.endswith(pet_suffix) and not _present(channel_paths(folder, stem[: -len(pet_suffix)], suffix)[0]):
            name = stem[: -len(pet_suffix)]
            problems.append(InputError(image, f"CT of case {name} not found (expected {name}{ct_suffix}{suffix})"))
        if not stem.endswith(ct_suffix):
            continue
        name = stem[: -len(ct_suffix)]
        pet = channel_paths(folder, name, suffix)[1]
        if not _present(pet):
            problems.append(InputError(pet, f"PET of case {name} not found (expected beside its CT {image.name})"))
            continue
        label = None if labels is None else labels / f"{name}{suffix}"
        if label is not None and not _present(label):
            problems.append(InputError(label, f"missing for training case {name}"))
            continue
        cases.append(Case(name, image, pet, suffix, label))
    names = [case.name for case in cases]
    for name in sorted({n for n in names if names.count(n) > 1}):  # e.g. A_0000.mha beside A_0000.nii.gz
        files = ", ".join(case.ct.name for case in cases if case.name == name)
        problems.append(InputError(folder, f"case {name} has two CT files ({files}): keep one"))
        cases = [case for case in cases if case.name != name]
    return cases, problems


def _present(path: Path) -> bool:
    """There is something of that name (the reader then says what is wrong with it: a folder,
    a FIFO, a broken link), so it is not reported as missing."""
    return path.exists() or path.is_symlink()


def find_training_cases(data_dir: str | Path) -> dict[str, Case]:
    """case name -> Case (label included) of an autoPET/nnU-Net training folder; every case
    must be complete (a training run does not silently drop data)."""
    data_dir = Path(data_dir)
    if (data_dir / IMAGES_TR).is_dir():
        cases, problems = _nnunet_cases(data_dir / IMAGES_TR, labels=data_dir / LABELS_TR)
    else:  # the autoPET release: study folders with SEG
        cases, problems = _study_cases(find_study_folders(data_dir) if data_dir.is_dir() else {}, label=True)
    if problems:
        raise problems[0]
    if not cases:
        raise InputError(
            data_dir,
            "no training cases: expected imagesTr/<id>_0000 + _0001 with labelsTr/<id>, "
            "or study folders with CTres, SUV and SEG images (the autoPET release)",
        )
    return {case.name: case for case in cases}


def index_images(
    path: str | Path, *, role: str, channel: int | None = None, study: tuple[str, ...] | None = None
) -> dict[str, Path]:
    """case name -> file, for a single file or a folder; with ``channel``, a trailing nnU-Net
    channel suffix (e.g. ``_0001`` of PET files) is not part of the case name. With ``study``
    (e.g. :data:`STUDY_LABEL`), a folder of study folders gives each study's file of that role,
    under the case names :func:`find_cases` gives them."""
    path = Path(path)
    if path.is_file():
        return {strip_suffix(path): path}
    if not path.is_dir():
        raise InputError(path, f"{role} not found")
    if study is not None and (is_study_folder(path) or not list_images(path)):
        found = {}
        for name, folder in find_study_folders(path).items():
            file = _study_file(folder, study, _by_stem(folder))
            if file is None:
                raise InputError(folder, f"no {study[0]} image ({role}) in this study folder")
            found[name] = file
        if found:
            return found
    out = {}
    for file in list_images(path):
        name = strip_suffix(file)
        if channel is not None and name.endswith(CHANNEL_SUFFIXES[channel]):
            name = name[: -len(CHANNEL_SUFFIXES[channel])]
        if name in out:
            raise InputError(path, f"two {role} images for case {name}: {out[name].name} and {file.name}")
        out[name] = file
    if not out:
        raise InputError(path, f"no {role} images found")
    return out


# --- study folders: the autoPET/TCIA release, convert-dicom ---------------------------------


def case_name(folder_name: str) -> str:
    """A folder's name as a case name: runs of characters other than letters, digits, ".",
    "_" and "-" become one "-" (release study folders hold spaces)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", folder_name).strip("-.") or "study"


def _by_stem(folder: Path) -> dict[str, list[Path]]:
    stems: dict[str, list[Path]] = {}
    for image in list_images(folder):
        stems.setdefault(strip_suffix(image).lower(), []).append(image)
    return stems


def is_study_folder(folder: Path) -> bool:
    """``folder`` holds a study's named files (SUV, CTres, CT or PET images)."""
    roles = {stem.lower() for stem in (*STUDY_CT, *STUDY_PET, STUDY_BQML)}
    return folder.is_dir() and not roles.isdisjoint(_by_stem(folder))


def _study_file(folder: Path, stems: tuple[str, ...], stem_files: dict[str, list[Path]]) -> Path | None:
    for stem in stems:
        files = stem_files.get(stem.lower(), [])
        if len(files) > 1:
            raise InputError(folder, f"two {stem} images ({', '.join(f.name for f in files)}): keep one")
        if files:
            return files[0]
    return None


def study_case(folder: str | Path, name: str | None = None, *, label: bool = False) -> Case:
    """The case of one study folder (``name``: default the folder's); with ``label``, its
    SEG image is required."""
    folder = Path(folder)
    files = _by_stem(folder)
    pet = _study_file(folder, STUDY_PET, files)
    if pet is None:
        if STUDY_BQML.lower() in files:
            raise InputError(
                files[STUDY_BQML.lower()][0],
                "is the PET in Bq/ml; petseg needs SUV.<ext> beside it (convert-dicom computes it from the DICOM)",
            )
        raise InputError(folder, "study folder without SUV.<ext> (the PET in SUV)")
    ct = _study_file(folder, STUDY_CT, files)
    if ct is None:
        raise InputError(
            folder, f"CT not found (expected CTres{image_suffix(pet)} or CT{image_suffix(pet)} beside {pet.name})"
        )
    seg = _study_file(folder, STUDY_LABEL, files) if label else None
    if label and seg is None:
        raise InputError(folder, f"no SEG{image_suffix(pet)} (the lesion mask) in this training study")
    return Case(name or case_name(folder.resolve().name), ct, pet, image_suffix(pet), seg)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def study_folder_name(study: Path, patient: Path | None = None) -> str:
    """A study folder's case name: ``<patient>_<study>`` under a patient folder (found as such,
    or a release ``PETCT_*`` folder wherever ``-i`` points: the same study always gets the same
    name), else the folder's own."""
    parent = study.resolve().parent
    if patient is None and parent.name.startswith(RELEASE_PATIENT):
        patient = parent
    return case_name(study.resolve().name) if patient is None else f"{case_name(patient.name)}_{case_name(study.name)}"


def find_study_folders(root: str | Path) -> dict[str, Path]:
    """case name -> study folder: ``root`` itself, its subfolders, or the release's
    ``<patient>/<study>/`` (see :func:`study_folder_name`)."""
    root = Path(root)
    if is_study_folder(root):
        return {study_folder_name(root): root}
    found: dict[str, Path] = {}
    for child in _subfolders(root):
        nested = [(child, None)] if is_study_folder(child) else [(g, child) for g in _subfolders(child)]
        for study, patient in nested:
            if not is_study_folder(study):
                continue
            name = study_folder_name(study, patient)
            if name in found:
                raise InputError(study, f"would be case {name}, as {found[name]} is: rename one of the folders")
            found[name] = study
    return found


def _study_cases(studies: dict[str, Path], *, label: bool = False) -> tuple[list[Case], list[InputError]]:
    cases, problems = [], []
    for name, folder in studies.items():
        try:
            cases.append(study_case(folder, name, label=label))
        except InputError as err:
            problems.append(err)
    return cases, problems


def pair_case(ct: str | Path | None, pet: str | Path, name: str | None = None) -> Case:
    """One study given as a CT file (None: a PET-only study) and a PET (SUV) file; named
    ``name``, by default after the PET file, or its folder when the file has a study folder's
    generic name (SUV, PET)."""
    ct, pet = (None if ct is None else Path(ct)), Path(pet)
    for role, path in (("CT", ct), ("PET", pet)):
        if path is None:
            continue
        if not _present(path):
            raise InputError(path, f"{role} not found")
        if not image_suffix(path):
            raise InputError(path, f"{role}: not an image file name (expected one of {', '.join(IMAGE_SUFFIXES)})")
    if ct is not None and ct.resolve() == pet.resolve():
        raise InputError(pet, "given as both the CT and the PET")
    if name is None:
        generic = strip_suffix(pet).lower() in {s.lower() for s in (*STUDY_PET, STUDY_BQML, "pet")}
        return Case(case_name(pet.resolve().parent.name if generic else strip_suffix(pet)), ct, pet, image_suffix(pet))
    return Case(checked_case_name(name), ct, pet, image_suffix(pet))


def checked_case_name(name: str) -> str:
    """A user's case name, if it makes a file name (:func:`case_name` leaves it as it is)."""
    if case_name(name) != name:
        raise InputError(name, "a case name takes letters, digits, '.', '_' and '-' only (not first or last)")
    return name


# --- Grand Challenge ---------------------------------------------------------------------


def is_gc_input(folder: Path) -> bool:
    return (folder / GC_CT).is_dir() or (folder / GC_PET).is_dir()


def find_one(folder: Path, role: str) -> Path:
    """The single image in ``folder``; errors name the folder and what was found."""
    images = list_images(folder)
    if not folder.is_dir() or not images:
        raise InputError(folder, f"no {role} image found")
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise InputError(folder, f"expected exactly one {role} image, found {len(images)}: {names}")
    return images[0]


def find_gc_case(input_dir: str | Path) -> Case:
    """The study of a Grand Challenge input folder; named by the CT's uuid, written as .mha."""
    input_dir = Path(input_dir)
    ct = find_one(input_dir / GC_CT, "CT")
    pet = find_one(input_dir / GC_PET, "PET")
    return Case(strip_suffix(ct), ct, pet, ".mha")


def gc_paths(root: Path, uuid: str) -> tuple[Path, Path, Path]:
    """(CT, PET, label) of a Grand Challenge input folder (the label beside it, for tests)."""
    return root / GC_CT / f"{uuid}.mha", root / GC_PET / f"{uuid}.mha", root / "label" / f"{uuid}.mha"


# --- either ------------------------------------------------------------------------------


def find_cases(input_dir: str | Path) -> tuple[list[Case], list[InputError]]:
    """Cases of an nnU-Net-named folder, of study folders or of a Grand Challenge input
    folder, and one error per incomplete case (a batch runs the others). No case at all is an
    error."""
    input_dir = Path(input_dir)
    if input_dir.is_file():
        raise InputError(input_dir, "is a file: give one study as --ct CT --pet PET, or -i its folder")
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found")
    if not os.access(input_dir, os.R_OK | os.X_OK):
        raise InputError(input_dir, "input folder is not readable (permission denied)")
    if is_gc_input(input_dir):
        return [find_gc_case(input_dir)], []
    cases, problems = _nnunet_cases(input_dir)
    if cases or problems:
        return cases, problems
    inner = [input_dir / name for name in (IMAGES_TS, IMAGES_TR) if (input_dir / name).is_dir()]
    if inner:
        also = f" ({inner[1].name}/ is there too: give -i {inner[1]} for those)" if len(inner) > 1 else ""
        log.info("%s holds %s/: predicting its cases%s", input_dir, inner[0].name, also)
        return find_cases(inner[0])
    cases, problems = _study_cases(find_study_folders(input_dir))
    if not cases and not problems:
        raise InputError(
            input_dir,
            "no cases found: expected <case>_0000.<ext> (CT) + <case>_0001.<ext> (PET), study folders with "
            "CTres + SUV images (the autoPET release, petseg convert-dicom), or images/ct + images/pet",
        )
    return cases, problems


def clicks_path(folder: str | Path, case: str) -> Path:
    """``<folder>/<case>_clicks.json``: a case's clicks in a ``--clicks`` folder."""
    return Path(folder) / f"{case}_clicks.json"
