"""The model folder: ``model.json`` beside one plain state dict per fold.

``model.json`` describes itself (nnU-Net style): the network's constructor arguments,
the preprocessing/inference settings the weights were trained for, and one entry per
fold with its file name and sha256.
"""

from __future__ import annotations

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

from petseg.errors import ModelError
from petseg.io import atomic_path, write_text
from petseg.settings import CHANNELS, PAPER_NETWORK, Settings

log = logging.getLogger(__name__)

MODEL_JSON = "model.json"
FORMAT = "petseg-model/1"
NETWORK_CLASS = "monai.networks.nets.UNet"


def model_sections(settings: Settings) -> dict[str, dict[str, Any]]:
    """model.json's (and train.json's) "preprocessing" and "inference" sections, with the
    network's input channels, which belong to the model, not to a run's settings."""
    sections = settings.model_sections()
    sections["preprocessing"]["channels"] = list(settings.channels)
    return sections


def read_json(path: Path, *, missing: str) -> dict:
    """model.json or train.json; ``missing`` is the message when the file is not there."""
    if not path.is_file():
        raise ModelError(path, missing)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(path, f"cannot be parsed as JSON ({err})") from None


def parse_sections(meta: Mapping[str, Any], *, source: str | Path) -> Settings:
    """The one reader of "preprocessing" and "inference" sections (model.json, train.json)."""
    try:
        preprocessing = dict(meta["preprocessing"])
        channels = preprocessing.pop("channels", list(CHANNELS))
        settings = Settings.from_model_sections({"preprocessing": preprocessing, "inference": meta["inference"]})
        if list(channels) != list(settings.channels):
            hint = ""
            if settings.click_sigma_mm is None and len(channels) > len(settings.channels):
                hint = " (click channels need preprocessing.click_sigma_mm)"
            raise ValueError(f"input channels {channels!r} do not match {list(settings.channels)!r}{hint}")
        return settings
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelError(source, f"invalid model description ({type(err).__name__}: {err})") from None


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
        meta_path = path / MODEL_JSON
        if not path.is_dir():
            raise ModelError(path, "model folder not found")
        meta = read_json(meta_path, missing="missing: not a petseg model folder")
        try:
            if meta.get("format") != FORMAT:
                raise ModelError(meta_path, f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            if meta["network"]["class"] != NETWORK_CLASS:
                raise ModelError(meta_path, f"unsupported network class {meta['network']['class']!r}")
            network = dict(meta["network"]["kwargs"])
            folds = tuple(Fold(int(f["fold"]), str(f["file"]), str(f["sha256"])) for f in meta["folds"])
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ModelError(meta_path, f"invalid model description ({type(err).__name__}: {err})") from None
        settings = parse_sections(meta, source=meta_path)
        if network.get("in_channels") != len(settings.channels):
            raise ModelError(
                meta_path,
                f"network in_channels {network.get('in_channels')} != input channels {list(settings.channels)}",
            )
        if not folds:
            raise ModelError(meta_path, "lists no folds")
        for fold in folds:
            inside = (path / fold.file).resolve()
            if not inside.is_relative_to(path.resolve()):
                raise ModelError(meta_path, f"fold {fold.fold} file {fold.file!r} lies outside the model folder")
            if not (path / fold.file).is_file():
                raise ModelError(path / fold.file, f"checkpoint of fold {fold.fold} is missing")
        return cls(path, network, settings, folds, str(meta.get("description", "")))

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
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise ModelError(path, f"cannot be loaded as a PyTorch checkpoint ({type(err).__name__})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(path, "is not a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_state_dict(network: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str | Path) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ModelError(source, f"does not fit the network in model.json ({first})") from None


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
) -> ModelFolder:
    """Save one state dict per fold plus model.json (checksums included) and re-open the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings or Settings()
    probe = build_network(network)
    entries = []
    for fold, state in sorted(state_dicts.items()):
        name = f"fold{fold}.pt"
        load_state_dict(probe, state, source=f"fold {fold}")  # refuse a mismatch before writing
        with atomic_path(out_dir / name) as tmp:
            torch.save(dict(state), tmp)
        entries.append({"fold": fold, "file": name, "sha256": sha256_file(out_dir / name)})
    meta = {
        "format": FORMAT,
        "description": description,
        "network": {"class": NETWORK_CLASS, "kwargs": dict(network), "parameters": count_parameters(probe)},
        **model_sections(settings),
        "folds": entries,
        **(dict(extra) if extra else {}),
    }
    write_text(json.dumps(meta, indent=2) + "\n", out_dir / MODEL_JSON)
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
    sources: dict[str, str] = {}
    for position, file in enumerate(files):
        fold = fold_number(file)
        fold = position if fold is None else fold
        if fold in states:
            raise ModelError(file, f"fold {fold} given twice")
        states[fold] = read_state_dict(file)
        sources[str(fold)] = Path(file).name
    return write_model_folder(
        out_dir,
        state_dicts=states,
        network=network,
        settings=settings,
        description=description,
        extra={"imported_from": sources},
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
    curves beside the weights."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "train.json"
    meta = read_json(meta_path, missing="missing: not a petseg training run")
    settings = parse_sections(meta, source=meta_path)
    states = {}
    for fold_dir in sorted(run_dir.glob("fold_*")):
        best = fold_dir / "best.pt"
        if best.is_file():
            states[int(fold_dir.name.split("_")[1])] = read_state_dict(best)
    if not states:
        raise ModelError(run_dir, "no fold_K/best.pt found")
    folder = write_model_folder(
        model_dir, state_dicts=states, network=meta["network"], settings=settings, description=description
    )
    extras = [(run_dir / "splits_final.json", "splits_final.json")]
    for fold in states:
        extras += [(run_dir / f"fold_{fold}" / name, f"fold{fold}_{name}") for name in ("log.csv", "curves.png")]
    for source, name in extras:
        if source.is_file():
            with atomic_path(Path(model_dir) / name) as tmp:
                shutil.copyfile(source, tmp)
    return folder
