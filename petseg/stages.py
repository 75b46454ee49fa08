"""The stages of one study around the network: read + preprocess, and restore + write. The
SimpleITK backend needs no torch, so background workers (:mod:`petseg.cohort`) can run
them; the torch backend (``Settings.resample_backend``) runs where the network's device is."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cc3d
import numpy as np
import SimpleITK as sitk

from petseg.backends import preprocess_study, restorer
from petseg.clicks import Clicks, click_maps, read_clicks
from petseg.errors import ConfigError
from petseg.geometry import Grid
from petseg.io import publish, read_image
from petseg.metrics import CONNECTIVITY
from petseg.outputs import CaseOutputs
from petseg.preprocess import Preprocessed, Record, probability_to_mask, read_inputs, restore
from petseg.settings import Settings

if TYPE_CHECKING:
    from petseg.read_ahead import ReadAhead

log = logging.getLogger(__name__)
SCRIBBLE_REACH = 2.0  # click sigmas: how near a background scribble a lesion's voxels count as scribbled on

UNCERTAINTY_KEY = "petseg_map"  # written into the image header (.mha keeps it; NIfTI drops it)
UNCERTAINTY_NAME = "standard deviation of the folds' foreground probabilities"


@dataclass(frozen=True)
class EnsembleMaps:
    """The ensemble's maps of a study (``inference.ensemble_maps``), (X, Y, Z) float32 on the
    network grid."""

    mean: np.ndarray  # the folds' mean foreground probability
    variance: np.ndarray | None  # the folds' variance (Settings.uncertainty)
    folds: np.ndarray | None  # (n, X, Y, Z): each fold's own probability (Settings.fold_votes)

    def std(self) -> np.ndarray:
        """Standard deviation of the folds' probabilities."""
        if self.variance is None:
            raise ConfigError("uncertainty", "the fold standard deviation needs Settings(uncertainty=True)")
        return np.sqrt(np.clip(self.variance, 0.0, None)).astype(np.float32)


@dataclass(frozen=True)
class Prediction:
    """One study's outputs on the PET's grid: uint8 mask, float32 mean foreground probability,
    with ``Settings.uncertainty`` the folds' standard deviation, and with ``Settings.fold_votes``
    ``votes``: an unsigned-integer image whose bit f is set where fold f's own probability is
    above the threshold (``folds`` bits); None when not asked for."""

    mask: sitk.Image
    probability: sitk.Image
    uncertainty: sitk.Image | None = None
    votes: sitk.Image | None = None
    folds: int = 0


@contextmanager
def timed(stage: str, timings: dict[str, float]) -> Iterator[None]:
    """Accumulate the wall time of a stage into ``timings`` and log it (at -v: a run's routine
    log is one line per case)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        timings[stage] = timings.get(stage, 0.0) + elapsed
        log.debug("%-10s %7.2f s", stage, elapsed)


def case_line(name: str, *, lesions: int, voxels: int, seconds: float, output: str | Path) -> str:
    """A run's one routine line per case."""
    return f"{name}: {lesions} lesion{'' if lesions == 1 else 's'} ({voxels} voxels), {seconds:.1f} s -> {output}"


def load_study(
    *,
    ct: str | Path | None,
    pet: str | Path,
    settings: Settings,
    timings: dict[str, float],
    clicks: Clicks | str | Path | None = None,
    clicks_world: bool = False,
    device=None,
    ahead: ReadAhead | None = None,
) -> Preprocessed:
    """Read a CT/PET pair and preprocess it (stages "read" and "preprocess") with the
    settings' backend on ``device`` (None: the CPU); ``clicks`` (or a clicks JSON file, voxel
    indices of the PET or with ``clicks_world`` mm) become the click channels of a
    click-aware model. A PET-only model reads no CT (``ct`` may be None). ``ahead``: the
    same files, being read since the process started (the "read" stage then waits for it)."""
    with timed("read", timings):
        if ahead is not None:
            if not ahead.covers(ct if settings.uses_ct else None, pet):
                raise ValueError(f"the read-ahead of {ahead.ct}, {ahead.pet} is not the study of {ct}, {pet}")
            ct_image, pet_image = ahead.images()
        else:
            ct_image, pet_image = read_inputs(ct, pet, settings=settings)
    with timed("preprocess", timings):
        prep = preprocess_study(
            ct_image, pet_image, settings=settings, device=device, ct_source=str(ct), pet_source=str(pet)
        )
        return with_clicks(prep, clicks, settings=settings, world=clicks_world)


def with_clicks(
    prep: Preprocessed, clicks: Clicks | str | Path | None, *, settings: Settings, world: bool = False
) -> Preprocessed:
    """A click-aware model's input: CT, PET, then the tumour and background click maps on the
    network grid (zero without clicks). A CT/PET model gets its input unchanged, and a log
    line when clicks were given."""
    if settings.click_sigma_mm is None:
        # given on purpose and not used: a warning, so a wrong model folder does not pass unnoticed
        if isinstance(clicks, Clicks) and clicks:
            log.warning("this model takes no clicks: %d click(s) ignored", len(clicks))
        elif clicks is not None and not isinstance(clicks, Clicks):
            log.warning("this model takes no clicks: %s ignored", clicks)
        return prep
    if clicks is not None and not isinstance(clicks, Clicks):
        source = clicks
        clicks = read_clicks(source, grid=prep.record.native, world=world, limit=settings.max_clicks)
        log.info("clicks from %s: %d tumour, %d background", source, len(clicks.tumor), len(clicks.background))
    elif not clicks:
        log.info("no clicks: this click-aware model runs with empty click maps (automatic)")
    clicks = clicks or Clicks()
    maps = click_maps(clicks, prep.record.network, sigma_mm=settings.click_sigma_mm)
    record = dataclasses.replace(prep.record, clicks=clicks)
    if isinstance(prep.image, np.ndarray):
        image = np.concatenate([prep.image[:2], maps])
    else:  # a tensor on the device (torch backend)
        import torch

        image = torch.cat([prep.image[:2], torch.from_numpy(maps).to(prep.image.device)])
    return dataclasses.replace(prep, image=image, record=record)


def restore_prediction(
    maps: EnsembleMaps, record: Record, *, settings: Settings, timings: dict[str, float], device=None
) -> Prediction:
    """The ensemble's maps back on the PET's native grid (stage "restore", with the settings'
    backend on ``device``); the mask is exactly ``probability > settings.threshold``, after
    the lesions that background clicks remove (``settings.click_removal``) got probability 0."""
    restored = restorer(settings, device)
    with timed("restore", timings):
        probability = restored(maps.mean, record)
        if settings.click_removal and record.clicks is not None and record.clicks.background:
            reach = None if settings.max_clicks is not None else SCRIBBLE_REACH * settings.click_sigma_mm
            probability = remove_clicked_lesions(
                probability, record.clicks, threshold=settings.threshold, scribble_reach_mm=reach
            )
        uncertainty = votes = None
        if maps.variance is not None:
            uncertainty = restored(maps.std(), record)
            uncertainty.SetMetaData(UNCERTAINTY_KEY, UNCERTAINTY_NAME)
        if maps.folds is not None:
            votes = fold_votes(maps.folds, record, threshold=settings.threshold, restore=restored)
        mask = probability_to_mask(probability, threshold=settings.threshold)
    return Prediction(mask, probability, uncertainty, votes, 0 if maps.folds is None else len(maps.folds))


def remove_clicked_lesions(
    probability: sitk.Image, clicks: Clicks, *, threshold: float, scribble_reach_mm: float | None = None
) -> sitk.Image:
    """``probability`` with 0 on every predicted lesion (18-connected component of probability
    > ``threshold``) that holds a background click's voxel (the nearest voxel of its grid) and
    no tumour click: the user said it is not a lesion. Contradictory clicks leave the
    network's answer. With scribbles (``scribble_reach_mm``), a lesion goes only when at
    least half of its voxels lie within that reach of a background point: a scribble on the
    over-segmented rim of a true lesion leaves the lesion to the network, not erased."""
    values = sitk.GetArrayFromImage(probability)  # (z, y, x), a copy
    lesions = cc3d.connected_components(values > threshold, connectivity=CONNECTIVITY)
    grid = Grid.of(probability)

    def lesion_at(point: tuple[float, float, float]) -> int:
        index = grid.to_index(np.asarray(point, float))
        if not grid.contains(index):
            return 0
        # clipped: an index of size - 0.5 (the outer half-voxel, inside the image) rounds to size
        x, y, z = np.clip(np.rint(index), 0, np.asarray(grid.size) - 1).astype(int)
        return int(lesions[z, y, x])

    confirmed = {lesion_at(point) for point in clicks.tumor}
    removed = sorted({lesion_at(point) for point in clicks.background} - confirmed - {0})
    if removed and scribble_reach_mm is not None:
        kept = [
            label
            for label in removed
            if _share_near(lesions == label, grid, clicks.background, scribble_reach_mm) < 0.5
        ]
        if kept:
            log.info("%d lesion(s) with background scribbles on their edge kept for the network", len(kept))
        removed = [label for label in removed if label not in kept]
    if not removed:
        return probability
    gone = np.isin(lesions, removed)
    values[gone] = 0.0
    log.info("background clicks removed %d predicted lesion(s), %d voxels", len(removed), int(gone.sum()))
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(probability)
    return out


def _share_near(component: np.ndarray, grid: Grid, points, reach_mm: float) -> float:
    """Share of ``component``'s voxels (z, y, x) within ``reach_mm`` of any of ``points`` (mm)."""
    from scipy.spatial import cKDTree

    zyx = np.argwhere(component)
    distance, _ = cKDTree(np.asarray(points, float)).query(
        grid.to_physical(zyx[:, ::-1].astype(float)), distance_upper_bound=reach_mm
    )
    return float(np.isfinite(distance).mean())


def fold_votes(folds: np.ndarray, record: Record, *, threshold: float, restore=restore) -> sitk.Image:
    """Each fold's own mask, restored as the ensemble's is (probability, then threshold, with
    ``restore`` from :func:`petseg.backends.restorer`), packed one bit per fold."""
    dtype = np.uint8 if len(folds) <= 8 else np.uint16 if len(folds) <= 16 else np.uint64
    bits = None
    for f, fold in enumerate(folds):
        own = sitk.GetArrayFromImage(restore(fold, record)) > threshold  # not a view: the image is temporary
        bit = own.astype(dtype) << dtype(f)
        bits = bit if bits is None else bits | bit
    return record.native.stamp(sitk.GetImageFromArray(bits))


def write_prediction(
    prediction: Prediction,
    *,
    output: str | Path,
    probability_output: str | Path | None = None,
    uncertainty_output: str | Path | None = None,
    timings: dict[str, float],
) -> list[Path]:
    """Write the mask and the maps asked for, all or nothing, the mask last (stage "write")."""
    outputs = {}
    if probability_output is not None:
        outputs[Path(probability_output)] = prediction.probability
    if uncertainty_output is not None:
        if prediction.uncertainty is None:
            raise ConfigError("uncertainty", "an uncertainty output needs Settings(uncertainty=True)")
        outputs[Path(uncertainty_output)] = prediction.uncertainty
    outputs[Path(output)] = prediction.mask
    with timed("write", timings):
        return publish(outputs)


def write_extras(
    prediction: Prediction,
    *,
    pet: sitk.Image | str | Path,
    name: str,
    output_dir: Path,
    report: bool,
    qc: bool,
    facts: dict | None = None,
    patient=None,
) -> None:
    """``<name>_lesions.json``/``.csv`` (each lesion's measures and confidence; ``facts``, e.g.
    the SUV calculation of a DICOM study, join the JSON; a ``patient``'s height and weight give
    SDmax) and/or ``<name>_qc.png`` (doubtful
    lesions in orange)."""
    from petseg.report import doubtful_mask, lesion_report, write_report

    pet = pet if isinstance(pet, sitk.Image) else read_image(pet, role="PET")
    lesions = lesion_report(
        prediction.mask,
        pet,
        case=name,
        patient=patient,
        probability=prediction.probability,
        uncertainty=prediction.uncertainty,
        votes=prediction.votes,
        folds=prediction.folds,
    )
    lesions.update(facts or {})
    if lesions.get("doubtful_lesions"):
        log.info(
            "%s: %d of %d lesion(s) doubtful (fold vote below a majority)",
            name,
            lesions["doubtful_lesions"],
            lesions["lesion_count"],
        )
    if qc:
        from petseg.qc import render_qc

        doubtful = doubtful_mask(prediction.mask, lesions) if lesions.get("doubtful_lesions") else None
        render_qc(
            pet=pet, mask=prediction.mask, doubtful=doubtful, output=CaseOutputs(output_dir, name, "").qc, title=name
        )
    if report:
        write_report(lesions, output_dir)
