"""A training run folder you can trust with GPU-days: a resume that refuses a changed recipe
or split, a best.pt that belongs to its last.pt, a log written before the state, folds that
assemble only with their run's recipe (the claims made before training: :mod:`.claims`).

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

from petseg.documents import convert, regular_file
from petseg.errors import ConfigError, ModelError
from petseg.io import csv_text, write_text
from petseg.outputs import BEST, LAST, SPLITS_JSON
from petseg.schemas import TrainingState
from petseg.train.config import TrainConfig, recipe_differences

log = logging.getLogger(__name__)

LOG_FIELDS = ["epoch", "loss", "lr", "val_dsc", "val_fpv_ml", "val_fnv_ml", "val_cases", "seconds"]


def split_digest(split: dict[str, list[str]]) -> str:
    """A fold's cases, as part of its recipe: a resume on other cases is another training."""
    canonical = {"train": sorted(split["train"]), "val": sorted(split["val"])}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


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
    from petseg.documents import convert, read_json
    from petseg.schemas import Splits

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
