"""Grand Challenge handler: /input/images/{ct,pet}/*.mha -> /output/images/<slug>/<uuid>.mha."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from petseg.atomic import check_output_folder
from petseg.clicks import check_clicks_file
from petseg.errors import OutputError
from petseg.io import publish
from petseg.layout import find_gc_case, list_images
from petseg.outputs import DATA_CENTRIC_JSON, gc_mask_path
from petseg.read_ahead import ReadAhead
from petseg.stages import timed

if TYPE_CHECKING:  # not imported here: process.py starts reading the study before torch imports
    from petseg.predictor import Predictor
    from petseg.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interface:
    output_slug: str  # folder under output/images/
    data_centric_json: bool  # autoPET III asks every algorithm to declare its category
    time_budget_s: float  # the challenge's limit per case less 30 s for start-up, reading and writing
    clicks_file: str | None = None  # optional input: used by click-aware models, else ignored
    scribbles: bool = False  # autoPET V: every point of the clicks file, and the study kept in cache_dir
    cache_dir: str = "/cache"  # what survives between the steps of one case (autoPET V)


INTERFACES = {
    "autopet3": Interface("automated-petct-lesion-segmentation", data_centric_json=True, time_budget_s=270.0),
    "autopet4": Interface(
        "tumor-lesion-segmentation", data_centric_json=False, time_budget_s=870.0, clicks_file="lesion-clicks.json"
    ),
    # autoPET V: the autoPET IV interface, run afresh at each of 6 steps with accumulating scribbles
    "autopet5": Interface(
        "tumor-lesion-segmentation",
        data_centric_json=False,
        time_budget_s=870.0,
        clicks_file="lesion-clicks.json",
        scribbles=True,
    ),
}


def clicks_file(input_dir: str | Path, interface: str) -> Path | None:
    """The interface's optional clicks file, if the job has one."""
    name = INTERFACES[interface].clicks_file
    path = Path(input_dir) / name if name else None
    return path if path is not None and path.is_file() else None


def read_ahead(input_dir: str | Path, interface: str, *, settings: Settings) -> ReadAhead | None:
    """Start reading the job's PET (and CT, for a model that takes one) before torch imports
    and the folds load; None where a step takes its study from the cache (autoPET V). Call it
    after :func:`check_job`."""
    if INTERFACES[interface].scribbles:
        return None
    case = find_gc_case(input_dir)
    return ReadAhead(case.ct, case.pet, uses_ct=settings.uses_ct)


def check_job(input_dir: str | Path, output_dir: str | Path, interface: str, *, takes_clicks: bool) -> None:
    """What can be checked before the model loads: the CT/PET pair, for a click-aware model
    the clicks file's form (a CT/PET model never reads it: its job must not fail on it), and
    the output folder: writable, and not holding another mask (the platform reads one)."""
    case = find_gc_case(input_dir)
    path = clicks_file(input_dir, interface)
    if path is not None and takes_clicks:
        check_clicks_file(path)
    check_outputs(case, output_dir, interface)


def check_outputs(case, output_dir: str | Path, interface: str) -> Path:
    """The mask's path, once its folder is known to be usable and free of other masks."""
    target = gc_mask_path(case.name, output_dir, INTERFACES[interface].output_slug)
    check_output_folder(target.parent)
    others = [p.name for p in list_images(target.parent) if p != target]
    if others:
        raise OutputError(target.parent, f"already holds {', '.join(others[:3])}: a job writes exactly one mask here")
    return target


def run(
    *,
    input_dir: str | Path,
    output_dir: str | Path,
    predictor: Predictor,
    interface: str = "autopet3",
    cache_dir: str | Path | None = None,
    ahead: ReadAhead | None = None,
) -> list[Path]:
    """Process one Grand Challenge job; returns the files written (nothing is written on error).
    ``cache_dir`` replaces the interface's (autoPET V: ``/cache``); ``ahead``: the job's
    study, being read since start-up (:func:`read_ahead`)."""
    spec = INTERFACES[interface]
    case = find_gc_case(input_dir)
    check_outputs(case, output_dir, interface)
    clicks = clicks_file(input_dir, interface)
    if clicks is not None and predictor.settings.click_sigma_mm is None:
        # every autoPET IV job has the file: routine, so INFO (stdout), not a warning on each job
        log.info("this model takes no clicks: %s not read", clicks)
        clicks = None
    if spec.scribbles:
        mask = predict_step(predictor, case, clicks, Path(cache_dir or spec.cache_dir))
    else:
        mask = predictor.predict_paths(ct=case.ct, pet=case.pet, clicks=clicks, ahead=ahead).mask
    outputs = {gc_mask_path(case.name, output_dir, spec.output_slug): mask}
    if spec.data_centric_json:
        outputs = {Path(output_dir) / DATA_CENTRIC_JSON: json.dumps(False), **outputs}
    with timed("write", predictor.timings):
        publish(outputs)  # all or nothing, the mask last
    predictor.log_written(list(outputs)[-1], mask)
    return list(outputs)


def predict_step(predictor: Predictor, case, clicks: Path | None, cache_dir: Path):
    """One step of an interactive case: the study preprocessed once and kept in ``cache_dir``
    for the later steps, every point of the clicks file read (scribbles), the time logged."""
    import dataclasses
    import time

    from petseg.stages import load_study, restore_prediction, with_clicks
    from petseg.study_cache import load_entry, save_entry, study_key

    start = time.monotonic()
    predictor.timings = timings = {}
    settings = dataclasses.replace(predictor.settings, max_clicks=None)
    with timed("cache", timings):
        key = study_key(case.ct, case.pet, settings)
        prep = load_entry(cache_dir, key)
    if prep is None:
        prep = load_study(ct=case.ct, pet=case.pet, settings=settings, timings=timings, device=predictor.device)
        save_entry(cache_dir, key, prep, channels=len(settings.modalities))
        log.info("%s: preprocessed and kept in %s for the next steps", case.name, cache_dir)
    else:
        log.info("%s: the preprocessed study from %s (step after the first)", case.name, cache_dir)
    guided = with_clicks(prep, clicks, settings=settings)
    prediction = restore_prediction(
        predictor.network_maps(guided, start=start),
        guided.record,
        settings=settings,
        timings=timings,
        device=predictor.device,
    )
    log.info("%s: step done in %.1f s (%s)", case.name, time.monotonic() - start, _stages(timings))
    return prediction.mask


def _stages(timings: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
