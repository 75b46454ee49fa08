"""Writing model folders: from state dicts (:func:`write_model_folder`, one transaction),
from the original authors' checkpoints (:func:`import_weights`) and from a training run
(:func:`assemble`). Reading them is :mod:`petseg.model`'s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from petseg.atomic import atomic_folder, atomic_path
from petseg.errors import ModelError, OutputError
from petseg.io import write_text
from petseg.model import (
    FORMAT,
    NETWORK_CLASS,
    ModelFolder,
    build_network,
    check_network_fits,
    count_parameters,
    describe_network,
    load_state_dict,
    parse_sections,
    read_document,
    read_state_dict,
    sha256_file,
)
from petseg.outputs import (
    BEST,
    MODEL_JSON,
    SPLITS_JSON,
    TRAIN_JSON,
    fold_dirs,
    fold_file,
    fold_history,
    written_by_petseg,
)
from petseg.schemas import TrainDocument
from petseg.settings import PAPER_NETWORK, Settings

log = logging.getLogger(__name__)


def fold_number(path: str | Path) -> int | None:
    """Fold index from names like ``fold0_model_ep=0284.pth`` or ``fold_3.pt``."""
    match = re.search(r"fold[_-]?(\d+)", Path(path).name, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def write_model_folder(
    out_dir: str | Path,
    *,
    state_dicts: Mapping[int, Mapping[str, torch.Tensor]],
    network: Mapping[str, Any] = PAPER_NETWORK,
    settings: Settings | None = None,
    description: str = "",
    extra: Mapping[str, Any] | None = None,
    files: Mapping[str, Path] | None = None,
    sources: Mapping[int, str | Path] | None = None,
) -> ModelFolder:
    """Write one state dict per fold, model.json (checksums included) and ``files`` (name ->
    source, e.g. training logs) as one transaction: the folder is built beside ``out_dir``,
    opened and every fold loaded, and only then swapped in. On any failure ``out_dir`` is as
    it was (or absent) and nothing else is left. An existing ``out_dir`` must be empty or a
    model folder: what petseg wrote there is replaced, other files (a README) are kept.
    ``sources`` names each fold's file in errors."""
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MODEL_JSON).is_file():
        raise OutputError(out_dir, "exists and is not a petseg model folder: give a new or empty folder")
    kept = {p.name: p for p in sorted(out_dir.iterdir()) if not written_by_petseg(p.name)} if out_dir.is_dir() else {}
    settings = settings or Settings()
    probe = build_network(network)
    for fold, state in state_dicts.items():  # refuse a mismatch before writing
        source = (sources or {}).get(fold, f"fold {fold}")
        load_state_dict(probe, state, source=source, against=describe_network(network))
    with atomic_folder(out_dir) as staging:
        entries = []
        for fold, state in sorted(state_dicts.items()):
            name = fold_file(fold)
            with atomic_path(staging / name) as tmp:
                torch.save(dict(state), tmp)
            entries.append({"fold": fold, "file": name, "sha256": sha256_file(staging / name)})
        meta = {
            "format": FORMAT,
            "description": description,
            "network": {"class": NETWORK_CLASS, "kwargs": dict(network), "parameters": count_parameters(probe)},
            **settings.model_sections(),
            "folds": entries,
            **(dict(extra) if extra else {}),
        }
        write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n", staging / MODEL_JSON)
        for name, source in (files or {}).items():
            with atomic_path(staging / name) as tmp:
                shutil.copyfile(source, tmp)
        for name, source in kept.items():
            if source.is_dir() and not source.is_symlink():
                shutil.copytree(source, staging / name, symlinks=True)
            else:
                shutil.copy2(source, staging / name, follow_symlinks=False)
        ModelFolder.open(staging).load_networks()  # what a user will open: checksums, shapes, schema
    if kept:
        log.info("%s: kept %s from the earlier folder", out_dir, ", ".join(kept))
    return ModelFolder.open(out_dir)


def import_weights(
    files: Sequence[str | Path],
    out_dir: str | Path,
    *,
    network: Mapping[str, Any] = PAPER_NETWORK,
    settings: Settings | None = None,
    description: str = "Imported checkpoints",
) -> ModelFolder:
    """Turn plain MONAI UNet state dicts (one per fold) into a model folder."""
    if not files:
        raise ModelError("import-weights", "no checkpoint files given")
    states: dict[int, dict] = {}
    sources: dict[int, Path] = {}
    for position, file in enumerate(files):
        named = fold_number(file)
        fold = position if named is None else named
        if fold in states:
            how = "by its name" if named is not None else f"by its position ({position}) among the files"
            raise ModelError(file, f"fold {fold} given twice: {sources[fold].name} and this file, {how}")
        states[fold] = read_state_dict(file)
        sources[fold] = Path(file)
    return write_model_folder(
        out_dir,
        state_dicts=states,
        network=network,
        settings=settings,
        description=description,
        extra={"imported_from": {str(fold): path.name for fold, path in sources.items()}},
        sources=sources,
    )


def assemble(run_dir: str | Path, model_dir: str | Path, *, description: str = "") -> ModelFolder:
    """Collect ``fold_K/best.pt`` of a training run into one model folder (network and
    settings from the run's ``train.json``), with the run's split and each fold's log and
    curves beside the weights. Only ``fold_<integer>`` folders count; others are named."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ModelError(run_dir, "training run folder not found")
    meta_path = run_dir / TRAIN_JSON
    raw, doc = read_document(meta_path, TrainDocument, missing="missing: not a petseg training run")
    settings = parse_sections(raw, source=meta_path)
    check_network_fits(doc.network, settings, source=meta_path)
    folds, ignored = fold_dirs(run_dir)
    from petseg.train.run import check_assembled

    trained = check_assembled(folds, raw, source=meta_path)  # every fold trained with the run's recipe
    states, files, best_files = {}, {}, {}
    for fold, fold_dir in folds.items():
        best = fold_dir / BEST
        if not best.is_file():
            ignored.append(f"{fold_dir.name} (no {BEST})")
            continue
        states[fold] = read_state_dict(best)
        best_files[fold] = best
        for name in ("log.csv", "curves.png"):
            if (fold_dir / name).is_file():
                files[fold_history(fold, name)] = fold_dir / name
    if ignored:
        log.warning("%s: not assembled: %s", run_dir, ", ".join(ignored))
    if not states:
        raise ModelError(run_dir, f"no fold_K/{BEST} found")
    if (run_dir / SPLITS_JSON).is_file():
        files[SPLITS_JSON] = run_dir / SPLITS_JSON
    log.info("assembling folds %s of %s", sorted(states), run_dir)
    return write_model_folder(
        model_dir,
        state_dicts=states,
        network=raw["network"],
        settings=settings,
        description=description,
        files=files,
        sources=best_files,
        extra={"training": {**raw["training"], "folds": {k: trained[k] for k in map(str, states) if k in trained}}}
        if raw.get("training")
        else None,
    )
