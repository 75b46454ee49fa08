"""Grand Challenge handler: /input/images/{ct,pet}/*.mha -> /output/images/<slug>/<uuid>.mha."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from petseg.errors import InputError
from petseg.io import list_images, strip_suffix, write_text
from petseg.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interface:
    output_slug: str  # folder under output/images/
    data_centric_json: bool  # autoPET III asks every algorithm to declare its category
    clicks_file: str | None = None  # optional input the algorithm may ignore


INTERFACES = {
    "autopet3": Interface("automated-petct-lesion-segmentation", data_centric_json=True),
    "autopet4": Interface("tumor-lesion-segmentation", data_centric_json=False, clicks_file="lesion-clicks.json"),
}


def find_one(folder: Path, role: str) -> Path:
    """The single image in ``folder``; errors name the folder and what was found."""
    images = list_images(folder)
    if not folder.is_dir() or not images:
        raise InputError(folder, f"no {role} image found")
    if len(images) > 1:
        names = ", ".join(p.name for p in images)
        raise InputError(folder, f"expected exactly one {role} image, found {len(images)}: {names}")
    return images[0]


def find_inputs(input_dir: str | Path) -> tuple[Path, Path]:
    """(CT, PET) paths of a Grand Challenge input folder."""
    input_dir = Path(input_dir)
    ct = find_one(input_dir / "images" / "ct", "CT")
    pet = find_one(input_dir / "images" / "pet", "PET")
    return ct, pet


def output_path(ct: Path, output_dir: str | Path, interface: Interface) -> Path:
    """``images/<slug>/<uuid>.mha`` with uuid = the CT file's stem, as the organizers' baseline does."""
    return Path(output_dir) / "images" / interface.output_slug / f"{strip_suffix(ct)}.mha"


def run(
    *, input_dir: str | Path, output_dir: str | Path, predictor: Predictor, interface: str = "autopet3"
) -> list[Path]:
    """Process one Grand Challenge job; returns the files written (nothing is written on error)."""
    spec = INTERFACES[interface]
    ct, pet = find_inputs(input_dir)
    if spec.clicks_file and (Path(input_dir) / spec.clicks_file).is_file():
        log.info("%s present: ignored (this model uses no clicks)", spec.clicks_file)
    mask_path = output_path(ct, output_dir, spec)
    written = [predictor.predict_files(ct=ct, pet=pet, output=mask_path)]
    if spec.data_centric_json:
        written.append(write_text(json.dumps(False), Path(output_dir) / "data-centric-model.json"))
    return written
