"""Claims on a training run folder, made before any training: one recipe for all its folds
(``train.json``), one split (``splits_final.json``), a fold never silently replaced, and one
process per fold at a time (``<fold>/.lock``). ``--overwrite`` names what it leaves behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from petseg.errors import ConfigError
from petseg.io import write_text
from petseg.outputs import FOLD_FILES, FOLD_LOCK, LAST, SPLITS_JSON, TRAIN_JSON, fold_dir, fold_dirs
from petseg.train.config import TrainConfig, recipe_differences

log = logging.getLogger(__name__)


def run_description(config: TrainConfig) -> dict[str, Any]:
    """train.json: what ``petseg assemble`` puts into model.json, and the run's recipe."""

    sections = config.settings.model_sections()
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
        if raw.get("training") is None:
            log.warning("%s: written by an older petseg without its recipe: not checked", path)
            return
        changes = recipe_differences(_comparable(raw), _comparable(wanted))
        if changes:
            raise ConfigError(
                str(path),
                f"the run was made with another recipe ({'; '.join(changes[:6])}): train into another -o, "
                "or --overwrite to make this the run's recipe (folds of the old one will not assemble with it)",
            )
        return
    if write:
        if path.exists():
            _note_orphans(Path(config.out_dir), config.fold, "recipe")
        write_text(json.dumps(wanted, indent=1, allow_nan=False) + "\n", path)


def _note_orphans(run_dir: Path, fold: int, what: str) -> None:
    """An --overwrite that replaces the run's recipe or split leaves the other folds behind."""
    others = [
        name
        for k, folder in fold_dirs(run_dir)[0].items()
        if k != fold
        for name in [folder.name]
        if any((folder / f).exists() for f in FOLD_FILES)
    ]
    if others:
        log.warning(
            "%s: the run's %s is replaced; %s, trained with the old one, will not assemble with it until trained again",
            run_dir,
            what,
            ", ".join(others),
        )


def _comparable(description: dict[str, Any]) -> dict[str, Any]:
    """The parts of train.json that decide the weights (not the window batch or a time budget)."""
    inference = description.get("inference") or {}
    return {
        "network": description.get("network"),
        "preprocessing": description.get("preprocessing"),
        "validation_window": {k: inference.get(k) for k in ("roi_size", "overlap")},
        # a fold may be extended on resume (its own last.pt records its epochs)
        "training": {k: v for k, v in (description.get("training") or {}).items() if k != "epochs"},
    }


def claim_splits(config: TrainConfig, splits: list[dict], *, overwrite: bool, write: bool) -> list[dict]:
    """The run's split: an existing splits_final.json is kept, and one that differs from the
    split asked for (another --splits file, or data that gained or lost cases) is refused."""
    from petseg.train.data import load_splits

    path = Path(config.out_dir) / SPLITS_JSON
    if len(splits) != config.n_folds:
        raise ConfigError(
            "--folds", f"{config.n_folds} folds asked for, the split has {len(splits)}: give --folds {len(splits)}"
        )
    cases = sorted({c for s in splits for c in s["train"] + s["val"]})
    if path.exists() and not overwrite:
        existing = load_splits(path, cases)
        if _canonical(existing) != _canonical(splits):
            known = sorted({c for s in existing for c in s["train"] + s["val"]})
            detail = (
                f"{len(set(cases) - set(known))} case(s) added, {len(set(known) - set(cases))} removed"
                if known != cases
                else "the folds hold other cases"
            )
            raise ConfigError(
                str(path),
                f"the run's split differs from this one ({detail}): train into another -o, or --overwrite "
                "to make this the run's split (folds of the old one will not assemble with it)",
            )
        return existing
    if write:
        if path.exists() and _canonical(load_splits(path, cases)) != _canonical(splits):
            _note_orphans(Path(config.out_dir), config.fold, "split")
        write_text(json.dumps(splits, indent=1) + "\n", path)
    return splits


def _canonical(splits: list[dict]) -> list[tuple[list[str], list[str]]]:
    """A split as sets of cases per fold: the order cases are listed in does not matter."""
    return [(sorted(s["train"]), sorted(s["val"])) for s in splits]


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


@contextmanager
def fold_lock(folder: Path) -> Iterator[None]:
    """One process trains a fold at a time: a second one (a resume, an --overwrite, the same
    command twice) is refused while the first holds ``<fold>/.lock``."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / FOLD_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(str(folder), f"is being trained by pid {holder}: wait for it, or stop it first") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        (folder / FOLD_LOCK).unlink(missing_ok=True)  # a finished fold's folder holds only its files
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
