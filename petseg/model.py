"""The model folder: ``model.json`` beside one plain state dict per fold.

``model.json`` describes itself (nnU-Net style): the network's constructor arguments,
the preprocessing/inference settings the weights were trained for, and one entry per
fold with its file name and sha256.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from petseg.errors import ConfigError, ModelError, OutputError
from petseg.io import atomic_folder, atomic_path, write_text
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
from petseg.schemas import (
    ModelDocument,
    TrainDocument,
    UNetKwargs,
    convert,
    is_file_name,
    read_json,
    regular_file,
    shown_value,
)
from petseg.settings import CHANNELS, PAPER_NETWORK, Settings

log = logging.getLogger(__name__)

FORMAT = "petseg-model/1"
NETWORK_CLASS = "monai.networks.nets.UNet"


def model_sections(settings: Settings) -> dict[str, dict[str, Any]]:
    """model.json's (and train.json's) "preprocessing" and "inference" sections, with the
    network's input channels, which belong to the model, not to a run's settings."""
    sections = settings.model_sections()
    sections["preprocessing"]["channels"] = list(settings.channels)
    return sections


def read_document(path: Path, schema: Any, *, missing: str) -> tuple[dict, Any]:
    """model.json or train.json: (the plain document, the document checked against ``schema``);
    ``missing`` is the message when the file is not there."""
    if not path.exists():
        raise ModelError(path, missing)
    raw = read_json(path, role="model description", error=ModelError)
    if not isinstance(raw, dict):
        raise ModelError(path, f"expected a JSON object, got {type(raw).__name__}")
    if schema is ModelDocument and raw.get("format") != FORMAT:
        raise ModelError(path, f"format is {shown_value(raw.get('format'))}, expected {FORMAT!r}")
    return raw, convert(raw, schema, source=path, error=ModelError, what="invalid model description")


def parse_sections(meta: Mapping[str, Any], *, source: str | Path) -> Settings:
    """The one reader of "preprocessing" and "inference" sections (model.json, train.json):
    every key must be a Settings field of that section, with a value of its type and range."""
    sections = {}
    for section, keys in (("preprocessing", Settings.PREPROCESSING_KEYS), ("inference", Settings.INFERENCE_KEYS)):
        values = meta.get(section)
        if not isinstance(values, Mapping):
            raise ModelError(source, f"{section}: expected an object, got {shown_value(values)}")
        values = dict(values)
        if section == "preprocessing":
            channels = convert(
                values.pop("channels", list(CHANNELS)),
                list[str],
                source=source,
                error=ModelError,
                prefix="preprocessing.channels",
            )
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise ModelError(source, f"{section}: unknown key {unknown[0]!r} (known: {', '.join(keys)})")
        missing = [key for key in keys if key in Settings.REQUIRED_KEYS and key not in values]
        if missing:
            raise ModelError(source, f"{section}: missing key {missing[0]!r}")
        sections[section] = values
    try:
        settings = Settings.from_model_sections(sections)
    except ConfigError as err:
        field = err.source.split("[")[0]
        section = "preprocessing" if field in Settings.PREPROCESSING_KEYS else "inference"
        raise ModelError(source, f"{section}.{err.source}: {err.problem}") from None
    if list(channels) != list(settings.channels):
        hint = ""
        if settings.click_sigma_mm is None and len(channels) > len(settings.channels):
            hint = " (click channels need preprocessing.click_sigma_mm)"
        raise ModelError(
            source,
            f"preprocessing.channels: input channels {channels!r} do not match {list(settings.channels)!r}{hint}",
        )
    return settings


def check_network_fits(network: UNetKwargs, settings: Settings, *, source: str | Path) -> None:
    """The network takes the settings' input channels, and every sliding window is a multiple
    of its total stride (else the UNet's skip connections do not line up and the first window
    fails after the folds loaded)."""
    if network.in_channels != len(settings.channels):
        raise ModelError(
            source, f"network in_channels {network.in_channels} != input channels {list(settings.channels)}"
        )
    stride = network.misfit(settings.roi_size)
    if stride is not None:
        raise ModelError(
            source,
            f"inference.roi_size {list(settings.roi_size)} is not a multiple of the network's total stride "
            f"{stride} (strides {network.strides})",
        )


def network_kwargs(*, channels: Sequence[int] | None = None, num_res_units: int | None = None) -> dict[str, Any]:
    """The paper's UNet arguments with other widths (stride 2 between levels) or residual units."""
    network = dict(PAPER_NETWORK)
    if channels:
        network["channels"] = list(channels)
        network["strides"] = [2] * (len(channels) - 1)
    if num_res_units is not None:
        network["num_res_units"] = num_res_units
    return network


def build_network(kwargs: Mapping[str, Any], *, source: str | Path = "network") -> torch.nn.Module:
    """``monai.networks.nets.UNet`` from JSON-style keyword arguments (lists become tuples);
    arguments the UNet does not take are a ModelError naming ``source``."""
    from monai.networks.nets import UNet

    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return UNet(**clean)
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelError(source, f"network arguments do not build a UNet ({type(err).__name__}: {err})") from None


def count_parameters(network: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Fold:
    fold: int
    file: str
    sha256: str


@dataclass(frozen=True)
class ModelFolder:
    """A validated model folder. Loading the weights is separate (:meth:`load_networks`)."""

    path: Path
    network: dict
    settings: Settings
    folds: tuple[Fold, ...]
    description: str = ""

    @classmethod
    def open(cls, path: str | Path) -> ModelFolder:
        path = Path(path)
        if not path.is_dir():
            aside = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.partial.old"))
            hint = f" (a write that was killed left the earlier folder at {aside[-1]}: rename it back)" if aside else ""
            raise ModelError(path, f"model folder not found{hint}")
        meta_path = path / MODEL_JSON
        raw, doc = read_document(meta_path, ModelDocument, missing="missing: not a petseg model folder")
        if doc.network.class_ != NETWORK_CLASS:
            raise ModelError(meta_path, f"unsupported network class {doc.network.class_!r}")
        settings = parse_sections(raw, source=meta_path)
        check_network_fits(doc.network.kwargs, settings, source=meta_path)
        seen: set[int] = set()
        for fold in doc.folds:
            if fold.fold in seen:
                raise ModelError(meta_path, f"fold {fold.fold} is listed twice")
            seen.add(fold.fold)
            # a plain name in the folder (a link there is the user's, as in a Hugging Face cache;
            # the checksum guards what it holds)
            if not is_file_name(fold.file):
                raise ModelError(meta_path, f"fold {fold.fold} file {fold.file!r} lies outside the model folder")
            if not (path / fold.file).exists():
                raise ModelError(path / fold.file, f"checkpoint of fold {fold.fold} is missing")
            regular_file(path / fold.file, role=f"checkpoint of fold {fold.fold}", error=ModelError)
        folds = tuple(Fold(f.fold, f.file, f.sha256.lower()) for f in doc.folds)
        return cls(path, dict(raw["network"]["kwargs"]), settings, folds, doc.description)

    def load_networks(self, *, verify: bool = True) -> list[torch.nn.Module]:
        """One network per fold (CPU, eval mode), checksums verified first."""
        networks = []
        for fold in self.folds:
            file = self.path / fold.file
            if verify:
                actual = sha256_file(file)
                if actual != fold.sha256:
                    raise ModelError(file, f"sha256 mismatch: expected {fold.sha256[:12]}…, got {actual[:12]}…")
            network = build_network(self.network, source=self.path / MODEL_JSON)
            load_state_dict(network, read_state_dict(file), source=file)
            networks.append(network.eval())
        return networks


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path``; tolerates a {'state_dict': ...} wrapper and DDP's 'module.' prefix."""
    regular_file(path, role="checkpoint", error=ModelError)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or crafted files
        raise ModelError(path, f"cannot be loaded as a PyTorch checkpoint of tensors ({type(err).__name__})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(path, "is not a state dict of tensors")
    odd = next((k for k in obj if not isinstance(k, str)), None)
    if odd is not None:
        raise ModelError(path, f"is not a state dict: key {shown_value(odd)} is not a parameter name")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_state_dict(
    network: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str | Path,
    against: str = "the network in model.json",
) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        # PyTorch's first line is "Error(s) in loading state_dict for UNet:"; the reason follows
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = " ".join(lines[1:2] or lines[:1])
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise ModelError(source, f"does not fit {against} ({reason})") from None


def describe_network(network: Mapping[str, Any]) -> str:
    """The UNet arguments that decide a state dict's keys and shapes, for error messages."""
    keys = ("in_channels", "channels", "strides", "num_res_units")
    return "the network (" + ", ".join(f"{k} {network.get(k)}" for k in keys) + ")"


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
            **model_sections(settings),
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


def default_model_dir() -> Path | None:
    """$PETSEG_MODEL_DIR, else ``weights/`` of a source checkout, else None."""
    env = os.environ.get("PETSEG_MODEL_DIR")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[1] / "weights"
    return candidate if (candidate / MODEL_JSON).is_file() else None


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
