"""Grand Challenge handler: /input/images/{ct,pet}/*.mha -> /output/images/<slug>/<uuid>.mha."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from petseg.atomic import check_output_folder
from petseg.clicks import check_clicks_file
from petseg.errors import OutputError
from petseg.io import publish
from petseg.layout import find_gc_case, list_images
from petseg.outputs import DATA_CENTRIC_JSON, gc_mask_path
from petseg.predictor import Predictor
from petseg.stages import timed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interface:
    output_slug: str  # folder under output/images/
    data_centric_json: bool  # autoPET III asks every algorithm to declare its category
    time_budget_s: float  # the challenge's limit per case less 30 s for start-up, reading and writing
    clicks_file: str | None = None  # optional input: used by click-aware models, else ignored


INTERFACES = {
    "autopet3": Interface("automated-petct-lesion-segmentation", data_centric_json=True, time_budget_s=270.0),
    "autopet4": Interface(
        "tumor-lesion-segmentation", data_centric_json=False, time_budget_s=870.0, clicks_file="lesion-clicks.json"
    ),
}


def clicks_file(input_dir: str | Path, interface: str) -> Path | None:
    """The interface's optional clicks file, if the job has one."""
    name = INTERFACES[interface].clicks_file
    path = Path(input_dir) / name if name else None
    return path if path is not None and path.is_file() else None


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
    *, input_dir: str | Path, output_dir: str | Path, predictor: Predictor, interface: str = "autopet3"
) -> list[Path]:
    """Process one Grand Challenge job; returns the files written (nothing is written on error)."""
    spec = INTERFACES[interface]
    case = find_gc_case(input_dir)
    check_outputs(case, output_dir, interface)
    clicks = clicks_file(input_dir, interface)
    if clicks is not None and predictor.settings.click_sigma_mm is None:
        # every autoPET IV job has the file: routine, so INFO (stdout), not a warning on each job
        log.info("this model takes no clicks: %s not read", clicks)
        clicks = None
    mask = predictor.predict_paths(ct=case.ct, pet=case.pet, clicks=clicks).mask
    outputs = {gc_mask_path(case.name, output_dir, spec.output_slug): mask}
    if spec.data_centric_json:
        outputs = {Path(output_dir) / DATA_CENTRIC_JSON: json.dumps(False), **outputs}
    with timed("write", predictor.timings):
        publish(outputs)  # all or nothing, the mask last
    predictor.log_written(list(outputs)[-1], mask)
    return list(outputs)
