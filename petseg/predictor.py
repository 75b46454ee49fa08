"""The one predictor object behind the API, the CLI and the Grand Challenge handler."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from petseg.backends import preprocess_study
from petseg.clicks import Clicks
from petseg.errors import ConfigError, ModelError
from petseg.inference import FoldAverage, ensemble_maps, resolve_device, resolve_precision
from petseg.metrics import Labelled
from petseg.model import ModelFolder, default_model_dir
from petseg.preprocess import Preprocessed, Record
from petseg.read_ahead import ReadAhead
from petseg.settings import Settings, resolve_backend
from petseg.stages import (
    EnsembleMaps,
    Prediction,
    case_line,
    load_study,
    restore_prediction,
    timed,
    with_clicks,
    write_prediction,
)

__all__ = ["Prediction", "Predictor"]

log = logging.getLogger(__name__)


class Predictor:
    """Preprocess -> sliding-window fold ensemble -> restore, for one study at a time."""

    def __init__(self, networks: Sequence[torch.nn.Module], *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        check_input_channels(networks, self.settings)
        self.device = resolve_device(self.settings.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed window shape: autotuning pays off
        self.ensemble = FoldAverage(list(networks), settings=self.settings).to(self.device).eval()
        self.timings: dict[str, float] = {}
        self.model: ModelFolder | None = None
        dtype = resolve_precision(self.settings.precision, self.device.type)
        precision = "fp32" if dtype is None else str(dtype).replace("torch.", "")
        tta = ", TTA" if self.settings.tta else ""
        self.backend = resolve_backend(self.settings.resample_backend, self.device)
        log.info(
            "predictor: %d fold(s) on %s, %s%s, resampling with %s",
            len(self.ensemble.networks),
            self.device,
            precision,
            tta,
            "torch on " + str(self.device) if self.backend == "torch" else "SimpleITK",
        )

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | Path | None = None,
        *,
        settings: Settings | None = None,
        folds: Sequence[int] | None = None,
        max_folds: int | None = None,
        **overrides,
    ) -> Predictor:
        """Load a model folder (only ``folds``, when given: nnU-Net's ``-f``; of those, the first
        ``max_folds``); ``overrides`` (e.g. device="cpu") replace model.json's settings."""
        model_dir = model_dir or default_model_dir()
        if model_dir is None:
            raise ModelError("model", "no model folder: pass --model-dir / model_dir or set PETSEG_MODEL_DIR")
        folder = ModelFolder.open(model_dir).with_folds(folds)
        if max_folds is not None:
            folder = folder.with_folds([f.fold for f in folder.folds[:max_folds]])
        base = folder.settings if settings is None else settings
        if base.modalities != folder.settings.modalities:
            raise ConfigError(
                "modalities",
                f"the given settings take {list(base.modalities)}, but {folder.path} takes "
                f"{list(folder.settings.modalities)} (pass no settings, or settings with its modalities)",
            )
        if base.channels != folder.settings.channels:
            raise ConfigError(
                "click_sigma_mm",
                f"the given settings make input channels {list(base.channels)}, but {folder.path} takes "
                f"{list(folder.settings.channels)} (set click_sigma_mm to model.json's "
                f"{folder.settings.click_sigma_mm}, or pass no settings)",
            )
        predictor = cls(folder.load_networks(), settings=base.with_overrides(**overrides))
        predictor.model = folder
        return predictor

    def model_info(self) -> dict:
        """The model folder and its folds' checksums (for run manifests); {} for injected networks."""
        if self.model is None:
            return {}
        return {
            "path": str(self.model.path.resolve()),
            "description": self.model.description,
            "folds": [{"fold": f.fold, "file": f.file, "sha256": f.sha256} for f in self.model.folds],
        }

    def predict_probability(
        self, ct: sitk.Image, pet: sitk.Image, *, ct_source: str = "CT", pet_source: str = "PET"
    ) -> sitk.Image:
        """Mean foreground probability on the PET's native grid (float32). ``timings`` then
        holds this study's seconds per stage."""
        return self.predict_images(ct, pet, ct_source=ct_source, pet_source=pet_source).probability

    def predict(self, ct: sitk.Image, pet: sitk.Image, *, ct_source: str = "CT", pet_source: str = "PET") -> sitk.Image:
        """uint8 {0, 1} lesion mask on the PET's native grid."""
        return self.predict_images(ct, pet, ct_source=ct_source, pet_source=pet_source).mask

    def predict_images(
        self,
        ct: sitk.Image | None,
        pet: sitk.Image,
        *,
        ct_source: str = "CT",
        pet_source: str = "PET",
        clicks: Clicks | str | Path | None = None,
        clicks_world: bool = False,
    ) -> Prediction:
        """Every output the settings ask for; the mask is exactly ``probability > settings.threshold``.
        ``ct`` is None for a PET-only model. ``clicks`` (a :class:`~petseg.clicks.Clicks` or a clicks JSON file) feed a click-aware model."""
        self.timings = {}
        return self._predict(
            ct, pet, ct_source=ct_source, pet_source=pet_source, clicks=clicks, clicks_world=clicks_world
        )

    def predict_paths(
        self,
        *,
        ct: str | Path | None,
        pet: str | Path,
        clicks: Clicks | str | Path | None = None,
        clicks_world: bool = False,
        ahead: ReadAhead | None = None,
    ) -> Prediction:
        """Read both files (or take them from ``ahead``, reading them since start-up) and
        predict; ``timings`` holds read, preprocess, network, restore."""
        self.timings = {}
        start = time.monotonic()
        prep = load_study(
            ct=ct,
            pet=pet,
            settings=self.settings,
            timings=self.timings,
            clicks=clicks,
            clicks_world=clicks_world,
            device=self.device,
            ahead=ahead,
        )
        return self.restore(self.network_maps(prep, start=start), prep.record)

    def restore(self, maps: EnsembleMaps, record: Record) -> Prediction:
        """The restore stage on this predictor's device and backend (its seconds in ``timings``)."""
        return restore_prediction(maps, record, settings=self.settings, timings=self.timings, device=self.device)

    def predict_files(
        self,
        *,
        ct: str | Path,
        pet: str | Path,
        output: str | Path,
        probability_output: str | Path | None = None,
        uncertainty_output: str | Path | None = None,
    ) -> Path:
        """Read, predict, write the mask (and, if asked, the float32 probability and the folds'
        standard deviation) atomically, all or nothing; returns the mask's path."""
        if uncertainty_output is not None and not self.settings.uncertainty:
            raise ConfigError("uncertainty", "an uncertainty output needs Settings(uncertainty=True)")
        prediction = self.predict_paths(ct=ct, pet=pet)
        return self.write(
            prediction, output=output, probability_output=probability_output, uncertainty_output=uncertainty_output
        )

    def write(
        self,
        prediction: Prediction,
        *,
        output: str | Path,
        probability_output: str | Path | None = None,
        uncertainty_output: str | Path | None = None,
    ) -> Path:
        """Write a prediction's mask and the maps asked for, all or nothing; the mask last."""
        write_prediction(
            prediction,
            output=output,
            probability_output=probability_output,
            uncertainty_output=uncertainty_output,
            timings=self.timings,
        )
        self.log_written(output, prediction.mask)
        return Path(output)

    def log_written(self, output: str | Path, mask: sitk.Image) -> None:
        array = sitk.GetArrayViewFromImage(mask)
        voxels, lesions = int(np.count_nonzero(array)), Labelled.of(array).count
        log.info(
            "%s",
            case_line(
                Path(output).name, lesions=lesions, voxels=voxels, seconds=sum(self.timings.values()), output=output
            ),
        )

    def network_maps(self, prep: Preprocessed, *, start: float | None = None) -> EnsembleMaps:
        """The ensemble's maps of one preprocessed study (its seconds in ``timings``); a time
        budget counts from ``start`` (``time.monotonic()``, default now)."""
        maps, seconds = self.run_network(prep.image, prep.record, start=start)
        self.timings["network"] = self.timings.get("network", 0.0) + seconds
        return maps

    def run_network(
        self, image: np.ndarray, record: Record, *, start: float | None = None
    ) -> tuple[EnsembleMaps, float]:
        """The network stage: the ensemble's maps of a network input and the seconds it took
        (the cohort pipeline's stage; :meth:`network_maps` for one study)."""
        log.debug("network grid %s (crop %s of %s)", record.network.size, record.cropped.size, record.native.size)
        budget = self.settings.time_budget_s
        deadline = None if budget is None else (time.monotonic() if start is None else start) + budget
        seconds: dict[str, float] = {}
        with timed("network", seconds):
            maps = ensemble_maps(image, self.ensemble, device=self.device, deadline=deadline)
        return maps, seconds["network"]

    def _predict(
        self,
        ct: sitk.Image | None,
        pet: sitk.Image,
        *,
        ct_source: str,
        pet_source: str,
        clicks: Clicks | str | Path | None = None,
        clicks_world: bool = False,
    ) -> Prediction:
        start = time.monotonic()
        with timed("preprocess", self.timings):
            prep = preprocess_study(
                ct, pet, settings=self.settings, device=self.device, ct_source=ct_source, pet_source=pet_source
            )
            prep = with_clicks(prep, clicks, settings=self.settings, world=clicks_world)
        return self.restore(self.network_maps(prep, start=start), prep.record)


def check_input_channels(networks: Sequence[torch.nn.Module], settings: Settings) -> None:
    """Each network's first convolution must take the input the settings make (CT, PET and,
    with ``click_sigma_mm``, two click maps): otherwise PyTorch fails deep in the first window."""
    for n, network in enumerate(networks):
        first = next((m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
        if first is not None and first.in_channels != len(settings.channels):
            raise ConfigError(
                "click_sigma_mm",
                f"network {n} takes {first.in_channels} input channels, the settings make "
                f"{len(settings.channels)} {list(settings.channels)}",
            )
