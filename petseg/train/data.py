"""Training data: splits by patient, the preprocessed-case cache, patch-sampling maps.

Every case goes once through the engine's own ``preprocess`` (same crop, same grid as at
inference) and is cached as ``<run>/cache/<key>/<case>.npz``, ``<key>`` a fingerprint of the
preprocessing settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from petseg.atomic import atomic_paths
from petseg.documents import convert, read_json
from petseg.errors import ConfigError, InputError
from petseg.io import file_stamp, read_image, write_text
from petseg.layout import Case
from petseg.outputs import FINGERPRINT, cache_folder
from petseg.preprocess import preprocess, read_inputs
from petseg.schemas import Splits
from petseg.settings import Settings

log = logging.getLogger(__name__)


def patient_of(case: str) -> str:
    """``fdg_<patient>_<date>`` -> ``fdg_<patient>``: studies of one patient share a fold."""
    return case.rsplit("_", 1)[0] if case.count("_") >= 2 else case


def make_splits(cases: list[str], *, n_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """nnU-Net style ``[{"train": [...], "val": [...]}, ...]``, grouped by patient, seeded."""
    patients = sorted({patient_of(c) for c in cases})
    if len(patients) < n_folds:
        raise ConfigError("n_folds", f"{len(patients)} patients cannot make {n_folds} folds")
    random.Random(seed).shuffle(patients)
    fold_of = {p: i % n_folds for i, p in enumerate(patients)}
    splits = []
    for k in range(n_folds):
        val = sorted(c for c in cases if fold_of[patient_of(c)] == k)
        splits.append({"train": sorted(c for c in cases if fold_of[patient_of(c)] != k), "val": val})
    return splits


def load_splits(path: str | Path, cases: list[str]) -> list[dict[str, list[str]]]:
    """An nnU-Net ``splits_final.json`` whose every case is one of ``cases``."""
    splits = convert(read_json(path, role="splits file"), Splits, source=path, hint='[{"train": [...], "val": [...]}]')
    known = set(cases)
    for k, split in enumerate(splits):
        missing = sorted((set(split.train) | set(split.val)) - known)
        if missing:
            raise InputError(path, f"fold {k} names {len(missing)} unknown case(s), e.g. {missing[0]}")
        listed = split.train + split.val
        twice = sorted({c for c in listed if listed.count(c) > 1}) if len(set(listed)) < len(listed) else []
        if twice:
            where = "in both train and val" if set(split.train) & set(split.val) else "twice"
            raise InputError(path, f"fold {k} lists case {twice[0]!r} {where}")
    return [{"train": split.train, "val": split.val} for split in splits]


CACHE_FORMAT = 1  # raise when preprocess or the cached arrays change: every older cache is then unused


def cache_key(settings: Settings) -> str:
    """The cache's identity: a fingerprint of every preprocessing setting (nnU-Net's plans
    identifier): other settings get another cache folder, never this one."""

    text = json.dumps({"format": CACHE_FORMAT, **settings.model_sections()["preprocessing"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def open_cache(run_dir: Path, settings: Settings) -> Path:
    """``<run>/cache/<key>/`` with ``fingerprint.json`` (the settings the key stands for)."""

    folder = cache_folder(run_dir, cache_key(settings))
    if not (folder / FINGERPRINT).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        description = {"format": CACHE_FORMAT, "preprocessing": settings.model_sections()["preprocessing"]}
        write_text(json.dumps(description, indent=1) + "\n", folder / FINGERPRINT)
    return folder


def cache_case(case: Case, cache_dir: Path, settings: Settings, *, force: bool = False) -> Path:
    """Preprocess once with the engine's own pipeline; later epochs read the .npz. A case whose
    CT, PET or label changed since (size, mtime, ends of the file) is preprocessed again, and
    said so (a resumed fold then trains on other data); ``force`` rebuilds a damaged one."""
    out, stamp_path = cache_dir / f"{case.name}.npz", cache_dir / f"{case.name}.json"
    stamps = {role: file_stamp(path) for role, path in (("ct", case.ct), ("pet", case.pet), ("label", case.label))}
    if out.is_file() and stamp_path.is_file() and not force:
        try:
            recorded = read_json(stamp_path, role="cache record")
        except InputError:
            recorded = None  # an unreadable record: preprocess again
        if recorded == stamps:
            return out
        if isinstance(recorded, dict):
            changed = [role for role in stamps if recorded.get(role, {}).get("digest") != stamps[role]["digest"]]
            log.warning(
                "case %s: its %s changed since it was cached: preprocessed again%s",
                case.name,
                "/".join(changed) or "files",
                " (training on other data than before)" if changed else "",
            )
    ct, pet = read_inputs(case.ct, case.pet, settings=settings)
    label = read_image(case.label, role="label")
    prep = preprocess(ct, pet, settings=settings, label=label, ct_source=str(case.ct), pet_source=str(case.pet))
    with atomic_paths([out, stamp_path]) as (tmp, tmp_stamp):  # unique temp names: fold jobs share the cache
        np.savez(tmp, image=prep.image, label=prep.label)
        tmp_stamp.write_text(json.dumps(stamps))
    return out


def load_cached(path: Path, *, hot_suv: float | None = None) -> dict[str, np.ndarray]:
    """A cached case; with ``hot_suv`` (training cases) also its patch-sampling map. A damaged
    file (truncated, not an archive, missing an array) is an InputError naming it."""
    try:
        with np.load(path) as data:
            case = {"image": data["image"], "label": data["label"][None].astype(np.float32)}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise InputError(path, f"cached case is damaged ({type(err).__name__}: {err})") from None
    return case if hot_suv is None else with_sampling_map(case, hot_suv=hot_suv)


def with_sampling_map(case: dict[str, Any], *, hot_suv: float) -> dict[str, Any]:
    """Add the map ``train_transforms`` draws patch centres from: 0 background, 1 lesion,
    2 hot background (PET >= hot_suv outside the label). Built once per case, not per patch."""
    lesion = np.asarray(case["label"][0]) > 0.5
    sampling = lesion.astype(np.uint8)
    sampling[(np.asarray(case["image"][-1]) >= hot_suv) & ~lesion] = 2  # the PET: last of the cached modalities
    return {**case, "sampling": sampling[None]}
