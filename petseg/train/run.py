"""A training run folder you can trust with GPU-days: one recipe for all its folds, one split,
a fold never silently replaced, a resume that refuses a changed recipe, every file written
atomically.

``<run>/train.json``        the run's recipe (network, preprocessing, validation window, training)
``<run>/splits_final.json`` the folds' cases (nnU-Net's format)
``<run>/cache/<key>/``      preprocessed cases for one set of preprocessing settings
``<run>/fold_<K>/``         ``last.pt`` (with the fold's recipe), ``best.pt``, ``log.csv``, ``curves.png``
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from petseg.errors import ConfigError, ModelError
from petseg.io import csv_text, write_text
from petseg.outputs import BEST, CURVES, LAST, SPLITS_JSON, TRAIN_JSON, TRAIN_LOG, fold_dir
from petseg.schemas import TrainingState, convert, regular_file
from petseg.train.config import TrainConfig, recipe_differences

log = logging.getLogger(__name__)

LOG_FIELDS = ["epoch", "loss", "lr", "val_dsc", "val_fpv_ml", "val_fnv_ml", "val_cases", "seconds"]
FOLD_FILES = (LAST, BEST, TRAIN_LOG, CURVES)  # what training writes into a fold folder
RUN_LEVEL_IGNORES = ("epochs",)  # a fold may be extended on resume; its own last.pt records its epochs


def run_description(config: TrainConfig) -> dict[str, Any]:
    """train.json: what ``petseg assemble`` puts into model.json, and the run's recipe."""
    from petseg.model import model_sections

    sections = model_sections(config.settings)
    return {"network": dict(config.network), **sections, "training": config.recipe()}


def claim_run(config: TrainConfig, *, overwrite: bool, write: bool) -> None:
    """Every fold of a run folder has one recipe: an existing train.json of another recipe is
    refused (naming the differences) unless ``overwrite`` starts the run anew; ``write`` (rank
    0) writes train.json when it is new or replaced."""
    from petseg.model import read_document
    from petseg.schemas import TrainDocument

    path = Path(config.out_dir) / TRAIN_JSON
    wanted = run_description(config)
    if path.exists() and not overwrite:
        raw, _ = read_document(path, TrainDocument, missing="")
        if "training" not in raw:
            log.warning("%s: written by an older petseg without its recipe: not checked", path)
            return
        changes = recipe_differences(_comparable(raw), _comparable(wanted), ignore=RUN_LEVEL_IGNORES)
        if changes:
            raise ConfigError(
                str(path),
                f"the run was made with another recipe ({'; '.join(changes[:6])}): train into another -o, "
                "or --overwrite to start this run anew",
            )
        return
    if write:
        write_text(json.dumps(wanted, indent=1, allow_nan=False) + "\n", path)


def _comparable(description: dict[str, Any]) -> dict[str, Any]:
    """The parts of train.json that decide the weights (not the window batch or a time budget)."""
    inference = description.get("inference", {})
    return {
        "network": description.get("network"),
        "preprocessing": description.get("preprocessing"),
        "validation_window": {k: inference.get(k) for k in ("roi_size", "overlap")},
        **description.get("training", {}),
    }


def claim_splits(config: TrainConfig, splits: list[dict], *, overwrite: bool, write: bool) -> list[dict]:
    """The run's split: an existing splits_final.json is kept, and one that differs from the
    split asked for (another --splits file, or data that gained or lost cases) is refused."""
    from petseg.train.data import load_splits

    path = Path(config.out_dir) / SPLITS_JSON
    cases = sorted({c for s in splits for c in s["train"] + s["val"]})
    if path.exists() and not overwrite:
        existing = load_splits(path, cases)
        if existing != splits:
            known = sorted({c for s in existing for c in s["train"] + s["val"]})
            detail = (
                f"{len(set(cases) - set(known))} case(s) added, {len(set(known) - set(cases))} removed"
                if known != cases
                else "the folds hold other cases"
            )
            raise ConfigError(
                str(path),
                f"the run's split differs from this one ({detail}): train into another -o, or --overwrite "
                "to start this run anew",
            )
        return existing
    if write:
        write_text(json.dumps(splits, indent=1) + "\n", path)
    return splits


def split_digest(split: dict[str, list[str]]) -> str:
    """A fold's cases, as part of its recipe: a resume on other cases is another training."""
    return hashlib.sha256(json.dumps(split, sort_keys=True).encode()).hexdigest()[:16]


def claim_fold(run_dir: Path, fold: int, *, resume: bool, overwrite: bool, write: bool) -> Path:
    """A fold folder is never silently replaced: a trained one needs ``resume`` (continue) or
    ``overwrite`` (its files removed, start anew); ``resume`` needs a ``last.pt``."""
    folder = fold_dir(run_dir, fold)
    if resume and overwrite:
        raise ConfigError("--resume/--overwrite", "give one: --resume continues a fold, --overwrite starts it anew")
    present = [name for name in FOLD_FILES if (folder / name).exists()]
    if resume and not (folder / LAST).exists():
        raise ConfigError(
            str(folder / LAST), "not found: nothing to resume (is -o the run folder?); train without --resume"
        )
    if present and not (resume or overwrite):
        raise ConfigError(
            str(folder),
            f"holds a trained fold ({', '.join(present)}): --resume continues it, --overwrite starts it anew",
        )
    if write:
        folder.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in present:
                (folder / name).unlink()
            if present:
                log.info("%s: removed %s (--overwrite)", folder, ", ".join(present))
    return folder


def check_resume(state: dict, recipe: dict[str, Any], *, source: Path) -> int | None:
    """Refuse to resume ``state`` with another recipe (naming every field that differs);
    returns the epoch count ``state`` planned when ``recipe`` plans more (the schedule is
    then extended: see :func:`petseg.train.loop.extend_schedule`), else None."""
    saved = state.get("recipe")
    if not isinstance(saved, dict):
        log.warning("%s: written by an older petseg without its recipe: the resumed recipe is not checked", source)
        return None
    changes = recipe_differences(saved, recipe, ignore=("epochs",))
    if changes:
        raise ConfigError(
            str(source),
            f"was trained with another recipe ({'; '.join(changes[:6])}): resume with the same options, or "
            "--overwrite to start the fold anew",
        )
    planned, wanted = int(saved.get("epochs", 0)), int(recipe["epochs"])
    if wanted < planned:
        raise ConfigError(
            "--epochs",
            f"{wanted} is below the {planned} epochs {source} was planned for: resume with --epochs {planned} "
            "(or more, to extend it)",
        )
    return planned if wanted > planned else None


class FoldLog:
    """``log.csv`` of a fold, rewritten whole (atomically) after every epoch; a resumed fold
    keeps the rows of the epochs its ``last.pt`` holds."""

    def __init__(self, path: Path, *, keep_before: int) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if keep_before > 0 and path.is_file():
            try:
                with open(path, newline="", encoding="utf-8") as fh:
                    self.rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < keep_before]
            except (OSError, UnicodeDecodeError, ValueError, KeyError, csv.Error) as err:
                log.warning("%s: unreadable (%s): a new log starts here", path, err)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append({field: row.get(field, "") for field in LOG_FIELDS})
        write_text(csv_text(self.rows), self.path)


def check_assembled(fold_dirs: dict[int, Path], run: dict[str, Any], *, source: Path) -> None:
    """Every fold assembled into one model was trained with the run's recipe (train.json): a
    fold left from another recipe (a run restarted with --overwrite) is refused by name."""
    import torch

    if "training" not in run:
        return
    for _, folder in sorted(fold_dirs.items()):
        if not (folder / LAST).is_file():
            log.warning("%s: no %s, its recipe is not checked", folder, LAST)
            continue
        saved = read_training_state(folder / LAST, device=torch.device("cpu")).get("recipe")
        if not isinstance(saved, dict):
            continue
        saved = {k: v for k, v in saved.items() if k != "split"}
        changes = recipe_differences(saved, run["training"], ignore=RUN_LEVEL_IGNORES)
        if changes:
            raise ModelError(
                folder,
                f"was trained with another recipe than {source} ({'; '.join(changes[:4])}): train it again with "
                "the run's recipe, or remove it",
            )


def read_training_state(path: Path, *, device: Any) -> dict:
    """``last.pt`` of a fold, checked: tensors, numbers and strings only (``weights_only``: a
    crafted file runs no code), and the fields a resumed run needs. One line naming the file
    otherwise, never PyTorch's advice to load it unsafely."""
    import torch

    regular_file(path, role="training state", error=ModelError)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated, not a checkpoint, or objects that would run code
        raise ModelError(path, f"cannot be loaded as a training state ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise ModelError(path, f"is not a training state (a {type(state).__name__})")
    convert(state, TrainingState, source=path, error=ModelError, what="not a training state")
    return state
