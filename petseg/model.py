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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from petseg.errors import ModelError
from petseg.io import atomic_path, write_text
from petseg.settings import PAPER_NETWORK, Settings

log = logging.getLogger(__name__)

MODEL_JSON = "model.json"
FORMAT = "petseg-model/1"
NETWORK_CLASS = "monai.networks.nets.UNet"


def build_network(kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """``monai.networks.nets.UNet`` from JSON-style keyword arguments (lists become tuples)."""
    from monai.networks.nets import UNet

    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return UNet(**clean)


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
        if not meta_path.is_file():
            raise ModelError(meta_path, "missing: not a petseg model folder")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelError(meta_path, f"cannot be parsed as JSON ({err})") from None
        try:
            if meta.get("format") != FORMAT:
                raise ModelError(meta_path, f"format is {meta.get('format')!r}, expected {FORMAT!r}")
            if meta["network"]["class"] != NETWORK_CLASS:
                raise ModelError(meta_path, f"unsupported network class {meta['network']['class']!r}")
            network = dict(meta["network"]["kwargs"])
            settings = Settings().with_overrides(**meta["preprocessing"], **meta["inference"])
            folds = tuple(Fold(int(f["fold"]), str(f["file"]), str(f["sha256"])) for f in meta["folds"])
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ModelError(meta_path, f"invalid model description ({type(err).__name__}: {err})") from None
        if not folds:
            raise ModelError(meta_path, "lists no folds")
        for fold in folds:
            if not (path / fold.file).is_file():
                raise ModelError(path / fold.file, f"checkpoint of fold {fold.fold} is missing")
        return cls(path, network, settings, folds, str(meta.get("description", "")))

    def load_networks(self, *, folds: Sequence[int] | None = None, verify: bool = True) -> list[torch.nn.Module]:
        """One network per fold (CPU, eval mode), checksums verified first."""
        chosen = [f for f in self.folds if folds is None or f.fold in folds]
        if not chosen:
            raise ModelError(self.path, f"none of folds {list(folds or [])} is in this model folder")
        networks = []
        for fold in chosen:
            file = self.path / fold.file
            if verify:
                actual = sha256_file(file)
                if actual != fold.sha256:
                    raise ModelError(file, f"sha256 mismatch: expected {fold.sha256[:12]}…, got {actual[:12]}…")
            network = build_network(self.network)
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
        **settings.model_sections(),
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
