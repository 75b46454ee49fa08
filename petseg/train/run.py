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
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from petseg.errors import ConfigError, ModelError
from petseg.io import csv_text, write_text
from petseg.outputs import BEST, CURVES, LAST, SPLITS_JSON, TRAIN_JSON, TRAIN_LOG, fold_dir, fold_dirs
from petseg.schemas import TrainingState, convert, regular_file
from petseg.train.config import TrainConfig, recipe_differences

log = logging.getLogger(__name__)

LOG_FIELDS = ["epoch", "loss", "lr", "val_dsc", "val_fpv_ml", "val_fnv_ml", "val_cases", "seconds"]
FOLD_FILES = (LAST, BEST, TRAIN_LOG, CURVES)  # what training writes into a fold folder
LOCK = ".lock"  # held by the process training the fold


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


def split_digest(split: dict[str, list[str]]) -> str:
    """A fold's cases, as part of its recipe: a resume on other cases is another training."""
    canonical = {"train": sorted(split["train"]), "val": sorted(split["val"])}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


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


RESUME_IGNORES = ("epochs", "init_from", "split")  # epochs: may grow; init_from: the weights are last.pt's
ASSEMBLE_IGNORES = (*RESUME_IGNORES, "processes", "sync_batchnorm")  # folds may train on other GPU counts


def check_resume(state: dict, recipe: dict[str, Any], *, source: Path) -> int | None:
    """Refuse to resume ``state`` with another recipe (naming every field that differs; the
    split is checked by :func:`check_split` once it is known); returns the epoch count
    ``state`` planned when ``recipe`` plans more (the schedule is then extended: see
    :meth:`petseg.train.trainer.Trainer.extend_schedule`), else None."""
    saved = state.get("recipe")
    if isinstance(saved, dict):
        changes = recipe_differences(saved, recipe, ignore=RESUME_IGNORES)
        if changes:
            raise ConfigError(
                str(source),
                f"was trained with another recipe ({'; '.join(changes[:6])}): resume with the same options, or "
                "--overwrite to start the fold anew",
            )
        planned = int(saved.get("epochs", 0))
    else:  # written before the recipe was recorded: the scheduler knows what was planned
        log.warning("%s: written by an older petseg without its recipe: the resumed recipe is not checked", source)
        planned = int((state.get("scheduler") or {}).get("T_max", recipe["epochs"]))
    wanted = int(recipe["epochs"])
    if wanted < planned:
        raise ConfigError(
            "--epochs",
            f"{wanted} is below the {planned} epochs {source} was planned for: resume with --epochs {planned} "
            "(or more, to extend it)",
        )
    return planned if wanted > planned else None


def check_split(state: dict, digest: str, *, source: Path) -> None:
    """A resumed fold trains on the cases it was trained on."""
    saved = (state.get("recipe") or {}).get("split")
    if saved is not None and saved != digest:
        raise ConfigError(
            str(source),
            "was trained on other cases than the run's split now gives this fold (splits_final.json or the "
            "data changed): --overwrite to start the fold anew",
        )


def check_best(state: dict, best: Path) -> None:
    """The best weights a resumed fold found must still be there: its best score is kept, so a
    lost best.pt would be replaced only by a better epoch, or by the last one, unnamed."""
    from petseg.errors import ModelError
    from petseg.model import read_state_dict

    if int(state.get("best_epoch", -1)) < 0 and float(state.get("best", -1.0)) < 0:
        return
    try:
        read_state_dict(best)
    except ModelError as err:
        raise ConfigError(
            str(best),
            f"the best weights (epoch {int(state.get('best_epoch', -1)) + 1}, DSC {float(state['best']):.4f}) are "
            f"{'missing' if not best.exists() else 'unreadable'}: restore the file, or --overwrite to start anew "
            f"({err.problem})",
        ) from None


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


def check_assembled(fold_dirs: dict[int, Path], run: dict[str, Any], *, source: Path) -> dict[str, dict[str, Any]]:
    """Every fold assembled into one model was trained with the run's recipe (train.json) on
    the fold's cases of the run's split: a fold left from another recipe or split (a run
    restarted with --overwrite) is refused by name; a fold that has not trained all its epochs,
    or whose last.pt is gone, is named in a WARNING. Returns each fold's epochs and best epoch."""
    import torch

    from petseg.train.data import load_splits

    folds: dict[str, dict[str, Any]] = {}
    splits = None
    if (source.parent / SPLITS_JSON).is_file():
        splits = load_splits(source.parent / SPLITS_JSON, sorted({c for s in _raw_splits(source.parent) for c in s}))
    for fold, folder in sorted(fold_dirs.items()):
        if not (folder / BEST).is_file():
            continue
        if not (folder / LAST).is_file():
            log.warning("%s: no %s: its recipe, split and epochs cannot be checked", folder, LAST)
            continue
        state = read_training_state(folder / LAST, device=torch.device("cpu"))
        saved = state.get("recipe")
        trained = int(state["epoch"]) + 1
        if isinstance(saved, dict) and run.get("training"):
            changes = recipe_differences(saved, run["training"], ignore=ASSEMBLE_IGNORES)
            if changes:
                raise ModelError(
                    folder,
                    f"was trained with another recipe than {source} ({'; '.join(changes[:4])}): train it again "
                    "with the run's recipe, or remove it",
                )
            if (
                splits is not None
                and fold < len(splits)
                and saved.get("split") not in (None, split_digest(splits[fold]))
            ):
                raise ModelError(
                    folder, f"was trained on other cases than fold {fold} of the run's {SPLITS_JSON}: train it again"
                )
            if trained < int(saved.get("epochs", trained)):
                log.warning("%s: has trained %d of its %s epochs", folder, trained, saved.get("epochs"))
        folds[str(fold)] = {
            "epochs": trained,
            "best_epoch": int(state.get("best_epoch", -1)) + 1,
            "best_dsc": state["best"],
        }
    return folds


def _raw_splits(run_dir: Path) -> list[list[str]]:
    from petseg.schemas import Splits, convert, read_json

    splits = convert(read_json(run_dir / SPLITS_JSON, role="splits file"), Splits, source=run_dir / SPLITS_JSON)
    return [s.train + s.val for s in splits]


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


def distributed_recipe(config: TrainConfig, dist: Any) -> dict[str, Any]:
    """What torchrun changes in what is trained: the processes (each takes a batch, so the
    effective batch is their number times --batch-size) and SyncBatchNorm across them."""
    return {"processes": dist.world, "sync_batchnorm": config.sync_batchnorm and dist.world > 1}


@contextmanager
def fold_lock(folder: Path) -> Iterator[None]:
    """One process trains a fold at a time: a second one (a resume, an --overwrite, the same
    command twice) is refused while the first holds ``<fold>/.lock``."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
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
        (folder / LOCK).unlink(missing_ok=True)  # a finished fold's folder holds only its files
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
