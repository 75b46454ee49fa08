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

from petseg.backends import preprocess_study
from petseg.io import file_stamp
from petseg.metrics import Labelled
from petseg.outputs import CaseOutputs
from petseg.preprocess import read_inputs, validate_pair
from petseg.settings import Settings, resolve_backend
from petseg.stages import (
    EnsembleMaps,
    Prediction,
    load_study,
    restore_prediction,
    timed,
    with_clicks,
    write_extras,
    write_prediction,
)


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
    """A study ready for the network (its input, what preprocessing did), or read and checked
    only (``study``: the CT and PET images), to be preprocessed on the network's device; seconds
    per stage."""

    image: Any  # a host array, or a tensor on the device
    record: Any
    seconds: dict[str, float]
    study: tuple[sitk.Image | None, sitk.Image] | None = None


@dataclass(frozen=True)
class Finished:
    lesion_voxels: int
    lesions: int  # 18-connected
    seconds: dict[str, float]


def on_device(settings: Settings, device: Any) -> bool:
    """Do preprocessing and restore run on the network's device (the torch backend there)?"""
    return resolve_backend(settings.resample_backend, device) == "torch"


def load_job(job: Job, settings: Settings, *, preprocess: bool = True) -> Loaded:
    """Read + preprocess (stages "read", "preprocess"); ``preprocess=False``: read and check
    only, :func:`preprocess_job` preprocesses on the device."""
    seconds: dict[str, float] = {}
    if not preprocess:
        with timed("read", seconds):
            ct, pet = read_inputs(job.ct, job.pet, settings=settings)
            validate_pair(ct, pet, settings=settings, ct_source=str(job.ct), pet_source=str(job.pet))
        return Loaded(None, None, seconds, study=(ct, pet))
    prep = load_study(
        ct=job.ct, pet=job.pet, settings=settings, timings=seconds, clicks=job.clicks, clicks_world=job.clicks_world
    )
    return Loaded(prep.image, prep.record, seconds)


def preprocess_job(job: Job, loaded: Loaded, settings: Settings, *, device: Any) -> Loaded:
    """A study read by :func:`load_job` with ``preprocess=False``, preprocessed on ``device``
    (stage "preprocess"); a preprocessed one as it is."""
    if loaded.study is None:
        return loaded
    seconds = dict(loaded.seconds)
    with timed("preprocess", seconds):
        ct, pet = loaded.study
        prep = preprocess_study(
            ct, pet, settings=settings, device=device, ct_source=str(job.ct), pet_source=str(job.pet), validate=False
        )
        prep = with_clicks(prep, job.clicks, settings=settings, world=job.clicks_world)
    return Loaded(prep.image, prep.record, seconds)


def restore_job(maps: EnsembleMaps, record: Any, settings: Settings, *, device: Any) -> tuple[Prediction, dict]:
    """The restore stage on ``device`` (the torch backend), before :func:`finish_job` writes."""
    seconds: dict[str, float] = {}
    return restore_prediction(maps, record, settings=settings, timings=seconds, device=device), seconds


def finish_job(job: Job, maps: EnsembleMaps | Prediction, record: Any, settings: Settings) -> Finished:
    """Restore (unless :func:`restore_job` did) + write the mask and the maps asked for, then
    the report and QC picture."""
    seconds: dict[str, float] = {}
    if isinstance(maps, Prediction):
        prediction = maps
    else:
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
