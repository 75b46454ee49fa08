"""Every name petseg gives what it writes, in one place (as nnU-Net's file_path_utilities):
a case's outputs in ``petseg predict``'s folder, the Grand Challenge outputs, evaluation
files, a model folder's files and a training run folder's. Input naming is
:mod:`petseg.layout`'s."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from petseg.errors import InputError
from petseg.layout import IMAGE_SUFFIXES, index_images

# --- a case's outputs (petseg predict) -----------------------------------------------------------

# outputs are single files with a lower-case extension: a detached header (.mhd, .nhdr) would
# name a data file, which a write through a temporary name cannot keep
OUTPUT_SUFFIXES = {".mhd": ".mha", ".nhdr": ".nrrd"}
MAP_SUFFIXES = {"probability": "_probability", "uncertainty": "_uncertainty"}
MANIFEST, CASE_LOG = "petseg-run.json", "petseg-run.jsonl"  # the run manifest in an output folder


def output_suffix(suffix: str) -> str:
    """The extension outputs take for inputs with ``suffix``."""
    return OUTPUT_SUFFIXES.get(suffix.lower(), suffix.lower())


@dataclass(frozen=True)
class CaseOutputs:
    """The files ``petseg predict`` may write for one case into ``folder``."""

    folder: Path
    name: str
    suffix: str  # the images' extension (see output_suffix)

    @classmethod
    def of(cls, name: str, folder: str | Path, input_suffix: str) -> CaseOutputs:
        return cls(Path(folder), name, output_suffix(input_suffix))

    @property
    def mask(self) -> Path:
        return self.folder / f"{self.name}{self.suffix}"

    def map(self, kind: str) -> Path:
        """``<case>_probability<ext>`` or ``<case>_uncertainty<ext>``."""
        return self.folder / f"{self.name}{MAP_SUFFIXES[kind]}{self.suffix}"

    @property
    def report(self) -> tuple[Path, Path]:
        """The lesion report: ``<case>_lesions.json`` and ``.csv``."""
        return self.folder / f"{self.name}_lesions.json", self.folder / f"{self.name}_lesions.csv"

    @property
    def qc(self) -> Path:
        return self.folder / f"{self.name}_qc.png"

    @property
    def seg(self) -> Path:
        """The DICOM Segmentation of a DICOM study."""
        return self.folder / f"{self.name}_seg.dcm"

    @property
    def rtstruct(self) -> Path:
        """The RT Structure Set of a DICOM study."""
        return self.folder / f"{self.name}_rtstruct.dcm"


def cohort_tables(folder: str | Path) -> tuple[Path, Path]:
    """``petseg report``'s tables over a folder: ``studies.csv`` (one row per study) and
    ``lesions.csv`` (one row per lesion)."""
    return Path(folder) / "studies.csv", Path(folder) / "lesions.csv"


def case_output_names(name: str) -> set[str]:
    """Every file name ``petseg predict`` may give an output of case ``name``, whatever the
    options and input format: what an earlier run into the same folder may have left."""
    names = set()
    for suffix in {output_suffix(s) for s in IMAGE_SUFFIXES}:
        outputs = CaseOutputs(Path("."), name, suffix)
        names |= {outputs.mask.name, *(outputs.map(kind).name for kind in MAP_SUFFIXES)}
    outputs = CaseOutputs(Path("."), name, ".nii.gz")
    return names | {p.name for p in outputs.report} | {outputs.qc.name}


def index_maps(path: str | Path, *, kind: str) -> dict[str, Path]:
    """case name -> ``<case>_probability`` (or ``_uncertainty``) file of a folder (or one file)."""
    suffix = MAP_SUFFIXES[kind]
    found = index_images(path, role=f"{kind} map")
    maps = {name[: -len(suffix)]: file for name, file in found.items() if name.endswith(suffix)}
    if not maps:
        raise InputError(path, f"no {kind} maps found (files named <case>{suffix}.<ext>)")
    return maps


def dicom_study_outputs(name: str, folder: str | Path) -> CaseOutputs:
    """A DICOM study's outputs: its mask as NIfTI, report, QC picture and SEG."""
    return CaseOutputs(Path(folder), name, ".nii.gz")


# --- petseg convert-dicom: the autoPET release's file names ------------------------------------

SUV_NII, CT_NII, CT_ON_PET_NII = "SUV.nii.gz", "CT.nii.gz", "CTres.nii.gz"


# --- the Grand Challenge job and evaluation ------------------------------------------------------

DATA_CENTRIC_JSON = "data-centric-model.json"


def gc_mask_path(uuid: str, output_dir: str | Path, slug: str) -> Path:
    """``images/<slug>/<uuid>.mha``, uuid = the CT file's stem, as the organizers' baseline does."""
    return Path(output_dir) / "images" / slug / f"{uuid}.mha"


def evaluation_extras(table: str | Path | None) -> tuple[Path | None, Path]:
    """Beside ``petseg evaluate``'s table: its lesion table and its reliability diagram."""
    if table is None:
        return None, Path("reliability.png")
    table = Path(table)
    return table.with_name(table.stem + "_lesions.csv"), table.with_name(table.stem + "_reliability.png")


INTERACTIVE_FILES = ("interactive.csv", "interactive_cases.csv", "interactive.png")
AUTOPET5_FILES = ("autopet5.csv", "autopet5_cases.csv", "autopet5_scribbles.json")  # the autoPET V protocol


# --- a model folder ------------------------------------------------------------------------------

MODEL_JSON = "model.json"
_MODEL_FILES = re.compile(r"model\.json|splits_final\.json|fold\d+(\.pt|_log\.csv|_curves\.png)")


def fold_file(fold: int) -> str:
    return f"fold{fold}.pt"


def fold_history(fold: int, name: str) -> str:
    """A fold's training log or curves as a model folder keeps them (``fold0_log.csv``)."""
    return f"fold{fold}_{name}"


def written_by_petseg(name: str) -> bool:
    """A model folder's files petseg writes (replaced by a new model); others are the user's."""
    return _MODEL_FILES.fullmatch(name) is not None


# --- a training run folder -----------------------------------------------------------------------

TRAIN_JSON, SPLITS_JSON, FINGERPRINT = "train.json", "splits_final.json", "fingerprint.json"
BEST, LAST, TRAIN_LOG, CURVES = "best.pt", "last.pt", "log.csv", "curves.png"
FOLD_FILES = (LAST, BEST, TRAIN_LOG, CURVES)  # what training writes into a fold folder
FOLD_LOCK = ".lock"  # held by the process training the fold
_FOLD_DIR = re.compile(r"fold_(\d{1,3})")


def cache_folder(run_dir: str | Path, key: str) -> Path:
    """``<run>/cache/<key>``: the preprocessed cases for the settings ``key`` stands for."""
    return Path(run_dir) / "cache" / key


def fold_dir(run_dir: str | Path, fold: int) -> Path:
    """``<run>/fold_<K>``: one fold's checkpoints, log and curves."""
    return Path(run_dir) / f"fold_{fold}"


def fold_dirs(run_dir: str | Path) -> tuple[dict[int, Path], list[str]]:
    """The ``fold_<K>`` folders of a training run by fold, and the names of other ``fold*``
    entries (``fold_0_old``, ``fold_x``), which are not folds."""
    folds, ignored = {}, []
    for entry in sorted(Path(run_dir).glob("fold*")):
        match = _FOLD_DIR.fullmatch(entry.name)
        if match and entry.is_dir() and fold_dir(run_dir, int(match.group(1))).name == entry.name:
            folds[int(match.group(1))] = entry
        else:
            ignored.append(entry.name)
    return folds, ignored
