"""The model folder: ``model.json`` beside one plain state dict per fold.

``model.json`` describes itself (nnU-Net style): the network's constructor arguments,
the preprocessing/inference settings the weights were trained for, and one entry per
fold with its file name and sha256.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from petseg.documents import convert, read_json, regular_file, shown_value
from petseg.errors import ConfigError, ModelError
from petseg.outputs import (
    MODEL_JSON,
)
from petseg.schemas import ModelDocument, UNetKwargs, is_file_name
from petseg.settings import CHANNELS, PAPER_NETWORK, Settings

log = logging.getLogger(__name__)

FORMAT = "petseg-model/3"  # every key of both sections stated
# still read: /2 stated every key but those added since (they default), /1 only Settings.REQUIRED_KEYS
OLD_FORMATS = ("petseg-model/2", "petseg-model/1")
ADDED_SINCE = {"petseg-model/2": ("max_clicks",)}
NETWORK_CLASS = "monai.networks.nets.UNet"


def read_document(path: Path, schema: Any, *, missing: str) -> tuple[dict, Any]:
    """model.json or train.json: (the plain document, the document checked against ``schema``);
    ``missing`` is the message when the file is not there."""
    if not path.exists():
        raise ModelError(path, missing)
    raw = read_json(path, role="model description", error=ModelError)
    if not isinstance(raw, dict):
        raise ModelError(path, f"expected a JSON object, got {type(raw).__name__}")
    if schema is ModelDocument and raw.get("format") not in (FORMAT, *OLD_FORMATS):
        readable = " or ".join(repr(name) for name in (FORMAT, *OLD_FORMATS))
        raise ModelError(path, f"format is {shown_value(raw.get('format'))}, expected {readable}")
    return raw, convert(raw, schema, source=path, error=ModelError, what="invalid model description")


def parse_sections(
    meta: Mapping[str, Any], *, source: str | Path, complete: bool = False, excused: tuple[str, ...] = ()
) -> Settings:
    """The one reader of "preprocessing" and "inference" sections (model.json, train.json):
    every key must be a Settings field of that section, with a value of its type and range;
    ``complete`` (model.json of the current format): every key of each section must be there,
    the input channels too, but for the ``excused`` ones (added after the document's format);
    else only the keys a model must state (older model folders)."""
    sections = {}
    for section, keys in (("preprocessing", Settings.PREPROCESSING_KEYS), ("inference", Settings.INFERENCE_KEYS)):
        values = meta.get(section)
        if not isinstance(values, Mapping):
            raise ModelError(source, f"{section}: expected an object, got {shown_value(values)}")
        values = dict(values)
        if section == "preprocessing":
            if complete and "channels" not in values:
                raise ModelError(source, "preprocessing: missing key 'channels'")
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
        missing = [
            key
            for key in keys
            if (complete and key not in excused or key in Settings.REQUIRED_KEYS) and key not in values
        ]
        if missing:
            raise ModelError(source, f"{section}: missing key {missing[0]!r}")
        sections[section] = values if section == "inference" else {**values, "channels": channels}
    try:
        settings = Settings.from_model_sections(sections)
    except ConfigError as err:
        field = err.source.split("[")[0]
        if field in ("modalities", "channels"):  # model.json states the modalities as its input channels
            raise ModelError(source, f"preprocessing.channels: {err.problem}") from None
        section = "preprocessing" if field in Settings.PREPROCESSING_KEYS else "inference"
        raise ModelError(source, f"{section}.{err.source}: {err.problem}") from None
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
        settings = parse_sections(
            raw,
            source=meta_path,
            complete=raw["format"] in (FORMAT, *ADDED_SINCE),
            excused=ADDED_SINCE.get(raw["format"], ()),
        )
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

    def with_folds(self, folds: Sequence[int] | None) -> ModelFolder:
        """This folder with only ``folds`` (nnU-Net's ``-f``), in the order given; None: all."""
        if folds is None:
            return self
        by_number = {fold.fold: fold for fold in self.folds}
        unknown = [f for f in folds if f not in by_number]
        if unknown or not folds or len(set(folds)) != len(folds):
            raise ConfigError(
                "--folds", f"{list(folds)}: give distinct folds of {self.path}, which holds {sorted(by_number)}"
            )
        return dataclasses.replace(self, folds=tuple(by_number[f] for f in folds))

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
    import torch  # here, not at the top: opening a model folder (model.json) needs no torch

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


def default_model_dir(*, pet_only: bool = False) -> Path | None:
    """$PETSEG_MODEL_DIR, else ``weights/`` of a source checkout, else None; with ``pet_only``
    (a study without a CT): $PETSEG_PET_MODEL_DIR, else the checkout's ``weights-pet/``."""
    env = os.environ.get("PETSEG_PET_MODEL_DIR" if pet_only else "PETSEG_MODEL_DIR")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[1] / ("weights-pet" if pet_only else "weights")
    return candidate if (candidate / MODEL_JSON).is_file() else None
