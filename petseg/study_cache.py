"""A preprocessed study kept between the runs of one interactive case (autoPET V: the
container runs afresh at each of the 6 steps, and only ``/cache`` and ``/output`` survive).

The entry is keyed by the CT's and PET's contents (SHA-256 of the whole files: the platform
may copy them anew, with new times, at every step) and by every preprocessing setting, so a
changed study or model never reads another's arrays. It holds the network input without the
click channels and the :class:`petseg.preprocess.Record`; written as a transaction, read
back whole or not at all (a damaged entry is preprocessed again, with a WARNING).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from petseg.atomic import atomic_paths
from petseg.errors import OutputError
from petseg.geometry import Grid
from petseg.preprocess import Preprocessed, Record, host_array
from petseg.settings import Settings

log = logging.getLogger(__name__)

FORMAT = 1  # raise when preprocess or the entry's layout changes
PREFIX = "petseg-study-"
GRIDS = ("native", "cropped", "oriented", "network")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def study_key(ct: Path | None, pet: Path, settings: Settings) -> str:
    preprocessing = settings.model_sections()["preprocessing"]
    text = json.dumps(
        {
            "format": FORMAT,
            "preprocessing": preprocessing,
            "modalities": list(settings.modalities),
            "ct": None if ct is None or not settings.uses_ct else _sha256(Path(ct)),
            "pet": _sha256(Path(pet)),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def entry_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{PREFIX}{key}.npz", cache_dir / f"{PREFIX}{key}.json"


def record_document(record: Record) -> dict:
    out = {name: dataclasses.asdict(getattr(record, name)) for name in GRIDS}
    out.update(ct_resampled=record.ct_resampled, crop_index=list(record.crop_index), resampled=record.resampled)
    return out


def record_of(document: dict) -> Record:
    grids = {name: Grid(**{k: tuple(v) for k, v in document[name].items()}) for name in GRIDS}
    return Record(
        native=grids["native"],
        ct_resampled=bool(document["ct_resampled"]),
        crop_index=tuple(int(v) for v in document["crop_index"]),
        cropped=grids["cropped"],
        oriented=grids["oriented"],
        network=grids["network"],
        resampled=bool(document["resampled"]),
    )


def load_entry(cache_dir: Path, key: str) -> Preprocessed | None:
    """The cached study, or None (absent, or damaged: then said, and preprocessed again)."""
    arrays, document = entry_paths(cache_dir, key)
    if not (arrays.is_file() and document.is_file()):
        return None
    try:
        record = record_of(json.loads(document.read_text()))
        with np.load(arrays) as data:
            image = data["image"]
        if tuple(image.shape[1:]) != record.network.size:
            raise ValueError(f"array {image.shape} does not fit the network grid {record.network.size}")
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        log.warning("%s: cached study is damaged (%s: %s): preprocessed again", arrays, type(err).__name__, err)
        return None
    return Preprocessed(image=image, record=record)


def save_entry(cache_dir: Path, key: str, prep: Preprocessed, *, channels: int) -> None:
    """Keep ``prep``'s first ``channels`` (the images: no click maps) and its record without
    clicks; a cache that cannot be written is a WARNING, never a failed job: the next step
    preprocesses again."""
    arrays, document = entry_paths(cache_dir, key)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_paths([arrays, document]) as (tmp, tmp_document):
            with open(tmp, "wb") as fh:
                np.savez(fh, image=host_array(prep.image[:channels]))
            tmp_document.write_text(json.dumps(record_document(prep.record)))
    except (OSError, OutputError) as err:
        log.warning("%s: cannot keep the preprocessed study (%s): later steps preprocess again", cache_dir, err)
