"""Which cases a folder holds and what their files are called: the one owner of input naming
rules (what petseg writes is named by :mod:`petseg.outputs`).

Three layouts:
- **nnU-Net** (and the autoPET release): ``<case>_0000.<ext>`` = CT, ``<case>_0001.<ext>`` =
  PET; training data in ``imagesTr/`` with masks ``labelsTr/<case>.<ext>``.
- **Grand Challenge**: ``images/ct/<uuid>.mha`` and ``images/pet/<uuid>.mha``, one study per
  input folder.
- single files, matched by name without extension (evaluation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from petseg.errors import InputError

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
CHANNEL_SUFFIXES = ("_0000", "_0001")  # nnU-Net channel files: 0 = CT, 1 = PET (the network's order)
IMAGES_TR, LABELS_TR = "imagesTr", "labelsTr"
GC_CT, GC_PET = Path("images/ct"), Path("images/pet")


@dataclass(frozen=True)
class Case:
    """One study: its name, CT and PET files, the extension outputs take, and the label if known."""

    name: str
    ct: Path
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
    cases, problems = _nnunet_cases(data_dir / IMAGES_TR, labels=data_dir / LABELS_TR)
    if problems:
        raise problems[0]
    if not cases:
        raise InputError(data_dir / IMAGES_TR, "no training cases (<id>_0000 / <id>_0001 + labelsTr/<id>)")
    return {case.name: case for case in cases}


def index_images(path: str | Path, *, role: str, channel: int | None = None) -> dict[str, Path]:
    """case name -> file, for a single file or a folder; with ``channel``, a trailing nnU-Net
    channel suffix (e.g. ``_0001`` of PET files) is not part of the case name."""
    path = Path(path)
    if path.is_file():
        return {strip_suffix(path): path}
    if not path.is_dir():
        raise InputError(path, f"{role} not found")
    out = {}
    for file in list_images(path):
        name = strip_suffix(file)
        if channel is not None and name.endswith(CHANNEL_SUFFIXES[channel]):
            name = name[: -len(CHANNEL_SUFFIXES[channel])]
        out[name] = file
    if not out:
        raise InputError(path, f"no {role} images found")
    return out


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
    """Cases of an nnU-Net-named folder or of a Grand Challenge input folder, and one error per
    incomplete case (a batch runs the others). No case at all is an error."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found" if not input_dir.exists() else "is not a folder")
    if not os.access(input_dir, os.R_OK | os.X_OK):
        raise InputError(input_dir, "input folder is not readable (permission denied)")
    if is_gc_input(input_dir):
        return [find_gc_case(input_dir)], []
    cases, problems = _nnunet_cases(input_dir)
    if not cases and not problems:
        raise InputError(
            input_dir,
            "no cases found: expected <case>_0000.<ext> (CT) + <case>_0001.<ext> (PET), or images/ct + images/pet",
        )
    return cases, problems


def clicks_path(folder: str | Path, case: str) -> Path:
    """``<folder>/<case>_clicks.json``: a case's clicks in a ``--clicks`` folder."""
    return Path(folder) / f"{case}_clicks.json"
