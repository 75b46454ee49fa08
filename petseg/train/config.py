"""The training run's parameters; inference-side knobs (grid, window, device, precision) live
in the run's :class:`~petseg.settings.Settings`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petseg.documents import convert
from petseg.errors import ConfigError
from petseg.schemas import UNetKwargs
from petseg.settings import PAPER_NETWORK, Settings


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the paper's; everything can be set.

    ``settings`` gives the preprocessing (the same as at inference), the validation window,
    the device and the autocast precision (``Settings.precision``; "auto" trains in bf16
    where the device has it natively, in fp16 with loss scaling on older GPUs, else fp32).
    """

    data_dir: Path
    out_dir: Path
    fold: int = 0
    n_folds: int = 5
    seed: int = 0
    epochs: int = 400
    batch_size: int = 4
    patch_size: tuple[int, int, int] = (128, 128, 128)
    lr: float = 1e-3
    focal_weight: tuple[float, float] = (1.0, 100.0)
    pos_neg: tuple[float, float] = (1.0, 1.0)  # foreground/background patch centres
    # patches centred on "hot" background (PET SUV >= hot_suv outside the label: brain, heart,
    # kidneys, bladder, salivary glands, where false positives come from); relative to pos_neg
    hard_negatives: float = 0.0
    hot_suv: float = 3.0
    click_free: float = 0.3  # click-aware models only: share of patches trained without any click
    error_clicks: float = 0.0  # click-aware models only: share of batches with error-driven clicks added
    scribbles: bool = False  # click-aware models only: simulated scribbles (autoPET V) instead of point clicks
    val_every: int = 10
    augment: bool = True
    network: dict = field(default_factory=lambda: dict(PAPER_NETWORK))
    settings: Settings = field(default_factory=Settings)
    splits_file: Path | None = None
    sync_batchnorm: bool = False  # DDP only
    init_from: Path | None = None  # start from these weights: a state dict, or a model folder (its fold K)
    num_workers: int | None = None  # data-loader processes; None: from the CPUs (see loader_workers)

    def __post_init__(self) -> None:
        if not 0 <= self.fold < self.n_folds:
            raise ConfigError("fold", f"must be in 0..{self.n_folds - 1} for {self.n_folds} folds, got {self.fold}")
        for name in ("epochs", "batch_size", "val_every", "n_folds"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or min(self.patch_size) < 1 or len(self.patch_size) != 3:
            raise ConfigError("lr/patch_size", f"must be positive, got {self.lr} and {self.patch_size}")
        weights = (*self.pos_neg, self.hard_negatives)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError("pos_neg/hard_negatives", f"patch ratios must be >= 0 and not all 0, got {weights}")
        if self.network.get("in_channels") != len(self.settings.channels):
            raise ConfigError(
                "network",
                f"in_channels {self.network.get('in_channels')} != input channels {list(self.settings.channels)}",
            )
        for name in ("click_free", "error_clicks"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(name, f"must be a share in [0, 1], got {getattr(self, name)}")
        if self.error_clicks > 0 and self.settings.click_sigma_mm is None:
            raise ConfigError("error_clicks", "needs a click-aware model (petseg train --clicks)")
        if self.scribbles and self.settings.click_sigma_mm is None:
            raise ConfigError("scribbles", "needs a click-aware model (petseg train --clicks)")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError("num_workers", f"must be >= 0, got {self.num_workers}")
        network = convert(self.network, UNetKwargs, source="network", error=ConfigError)
        for name, size in (("patch_size", self.patch_size), ("roi_size", self.settings.roi_size)):
            stride = network.misfit(size)  # else the UNet's skip connections do not line up
            if stride is not None:
                raise ConfigError(name, f"{list(size)} is not a multiple of the network's total stride {stride}")

    def recipe(self) -> dict[str, Any]:
        """What decides the weights a run trains (JSON values): a resumed fold must have the
        same, and every fold of a run folder too. Not in it: where data and outputs are, the
        device, the precision, loader workers, the validation window and frequency."""

        values = {name: _json(getattr(self, name)) for name in RECIPE_FIELDS}
        values["init_from"] = None if self.init_from is None else str(Path(self.init_from).resolve())
        values["preprocessing"] = self.settings.model_sections()["preprocessing"]
        if not self.hard_negatives:
            del values["hot_suv"]  # it only chooses the hard negatives' centres
        if self.settings.click_sigma_mm is None:
            del values["click_free"], values["error_clicks"]  # click training only
        if not self.scribbles:
            del values["scribbles"]  # so the recipes of runs from before the option read the same
        return values


# TrainConfig fields that change what is trained (with the preprocessing and init_from)
RECIPE_FIELDS = (
    "network",
    "n_folds",
    "seed",
    "epochs",
    "batch_size",
    "patch_size",
    "lr",
    "focal_weight",
    "pos_neg",
    "hard_negatives",
    "hot_suv",
    "click_free",
    "error_clicks",
    "scribbles",
    "augment",
)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def recipe_differences(old: dict[str, Any], new: dict[str, Any], *, ignore: tuple[str, ...] = ()) -> list[str]:
    """``field: old -> new`` for every recipe field that differs (nested dicts by key)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if key in ignore:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += [f"{key}.{c}" for c in recipe_differences(a, b)]
        elif a != b:
            changes.append(f"{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return changes
