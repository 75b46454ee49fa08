"""One case of a cohort: where it comes from, every file it must produce, and the two stages
around the network (load: read + preprocess; finish: restore + write + report/QC), which
run in the calling process or in a background worker alike."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.io import file_stamp
from petseg.metrics import Labelled
from petseg.outputs import CaseOutputs
from petseg.settings import Settings
from petseg.stages import EnsembleMaps, load_study, restore_prediction, write_extras, write_prediction


@dataclass(frozen=True)
class Job:
    """One study: where it comes from and every file it must produce (the mask last)."""

    name: str
    ct: Path | None  # None: a PET-only study
    pet: Path
    mask: Path
    probability: Path | None = None
    uncertainty: Path | None = None
    report: bool = False
    qc: bool = False
    clicks: Path | None = None  # a clicks JSON file for a click-aware model
    clicks_world: bool = False  # its points are in mm (LPS), not PET voxel indices

    def outputs(self) -> list[Path]:
        paths = [p for p in (self.probability, self.uncertainty) if p is not None]
        names = CaseOutputs(self.mask.parent, self.name, "")
        if self.report:
            paths += names.report
        if self.qc:
            paths.append(names.qc)
        return [*paths, self.mask]

    def inputs(self) -> dict[str, dict[str, Any]]:
        """What identifies this case's input files now (see :func:`petseg.io.file_stamp`)."""
        return {role: file_stamp(path) for role, path in (("ct", self.ct), ("pet", self.pet)) if path is not None}

    def clicks_key(self) -> str | None:
        """The clicks' part of what decides this case's result: their file's content and how its
        points are read (a changed clicks file must redo the case, not skip it as done)."""
        if self.clicks is None:
            return None
        try:
            content = self.clicks.read_bytes()
        except OSError:
            return "unreadable"  # never matches a done case; the run reports the file
        return f"{hashlib.sha256(content).hexdigest()[:16]}:{'mm' if self.clicks_world else 'voxels'}"


@dataclass(frozen=True)
class Loaded:
    """A study ready for the network: its input, what preprocessing did, seconds per stage."""

    image: np.ndarray
    record: Any
    seconds: dict[str, float]


@dataclass(frozen=True)
class Finished:
    lesion_voxels: int
    lesions: int  # 18-connected
    seconds: dict[str, float]


def load_job(job: Job, settings: Settings) -> Loaded:
    """Read + preprocess (stages "read", "preprocess")."""
    seconds: dict[str, float] = {}
    prep = load_study(
        ct=job.ct, pet=job.pet, settings=settings, timings=seconds, clicks=job.clicks, clicks_world=job.clicks_world
    )
    return Loaded(prep.image, prep.record, seconds)


def finish_job(job: Job, maps: EnsembleMaps, record: Any, settings: Settings) -> Finished:
    """Restore + write the mask and the maps asked for, then the report and QC picture."""
    seconds: dict[str, float] = {}
    prediction = restore_prediction(maps, record, settings=settings, timings=seconds)
    write_prediction(
        prediction,
        output=job.mask,
        probability_output=job.probability,
        uncertainty_output=job.uncertainty,
        timings=seconds,
    )
    if job.report or job.qc:
        write_extras(prediction, pet=job.pet, name=job.name, output_dir=job.mask.parent, report=job.report, qc=job.qc)
    mask = sitk.GetArrayViewFromImage(prediction.mask)
    return Finished(int(np.count_nonzero(mask)), Labelled.of(mask).count, seconds)
