"""The one predictor object behind the API, the CLI and the Grand Challenge handler."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from petseg.errors import ConfigError, ModelError
from petseg.inference import FoldAverage, ensemble_maps, fold_std, resolve_device, resolve_precision
from petseg.io import atomic_paths, read_image, save_image
from petseg.model import ModelFolder, default_model_dir
from petseg.preprocess import preprocess, probability_to_mask, restore
from petseg.settings import Settings

log = logging.getLogger(__name__)


UNCERTAINTY_KEY = "petseg_map"  # written into the image header (.mha keeps it; NIfTI drops it)
UNCERTAINTY_NAME = "standard deviation of the folds' foreground probabilities"


@dataclass(frozen=True)
class Prediction:
    """One study's outputs on the PET's grid: uint8 mask, float32 mean foreground probability,
    and (with ``Settings.uncertainty``) the folds' standard deviation, else None."""

    mask: sitk.Image
    probability: sitk.Image
    uncertainty: sitk.Image | None = None


@contextmanager
def timed(stage: str, timings: dict[str, float]) -> Iterator[None]:
    """Accumulate the wall time of a stage into ``timings`` and log it."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        timings[stage] = timings.get(stage, 0.0) + elapsed
        log.info("%-10s %7.2f s", stage, elapsed)


class Predictor:
    """Preprocess -> sliding-window fold ensemble -> restore, for one study at a time."""

    def __init__(self, networks: Sequence[torch.nn.Module], *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.device = resolve_device(self.settings.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed window shape: autotuning pays off
        self.ensemble = FoldAverage(list(networks), settings=self.settings).to(self.device).eval()
        self.timings: dict[str, float] = {}
        dtype = resolve_precision(self.settings.precision, self.device.type)
        precision = "fp32" if dtype is None else str(dtype).replace("torch.", "")
        tta = ", TTA" if self.settings.tta else ""
        log.info("predictor: %d fold(s) on %s, %s%s", len(self.ensemble.networks), self.device, precision, tta)

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path | None = None, *, settings: Settings | None = None, **overrides
    ) -> Predictor:
        """Load a model folder; ``overrides`` (e.g. device="cpu") replace model.json's settings."""
        model_dir = model_dir or default_model_dir()
        if model_dir is None:
            raise ModelError("model", "no model folder: pass --model-dir / model_dir or set PETSEG_MODEL_DIR")
        folder = ModelFolder.open(model_dir)
        base = folder.settings if settings is None else settings
        return cls(folder.load_networks(), settings=base.with_overrides(**overrides))

    def predict_probability(
        self, ct: sitk.Image, pet: sitk.Image, *, ct_source: str = "CT", pet_source: str = "PET"
    ) -> sitk.Image:
        """Mean foreground probability on the PET's native grid (float32). ``timings`` then
        holds this study's seconds per stage."""
        self.timings = {}
        return self._maps(ct, pet, ct_source=ct_source, pet_source=pet_source)[0]

    def predict(self, ct: sitk.Image, pet: sitk.Image, *, ct_source: str = "CT", pet_source: str = "PET") -> sitk.Image:
        """uint8 {0, 1} lesion mask on the PET's native grid."""
        probability = self.predict_probability(ct, pet, ct_source=ct_source, pet_source=pet_source)
        return probability_to_mask(probability, threshold=self.settings.threshold)

    def predict_paths(self, *, ct: str | Path, pet: str | Path) -> Prediction:
        """Read both files and predict; ``timings`` holds read, preprocess, network, restore.
        The mask is exactly ``probability > settings.threshold``."""
        self.timings = {}
        with timed("read", self.timings):
            ct_image = read_image(ct, role="CT")
            pet_image = read_image(pet, role="PET")
        probability, uncertainty = self._maps(ct_image, pet_image, ct_source=str(ct), pet_source=str(pet))
        return Prediction(probability_to_mask(probability, threshold=self.settings.threshold), probability, uncertainty)

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
        outputs = {}
        if probability_output is not None:
            outputs[Path(probability_output)] = prediction.probability
        if uncertainty_output is not None:
            outputs[Path(uncertainty_output)] = prediction.uncertainty
        outputs[Path(output)] = prediction.mask  # published last
        with timed("write", self.timings), atomic_paths(list(outputs)) as temps:
            for tmp, (target, image) in zip(temps, outputs.items()):
                save_image(image, tmp, target=target)
        self.log_written(output, prediction.mask)
        return Path(output)

    def log_written(self, output: str | Path, mask: sitk.Image) -> None:
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        log.info("wrote %s (%d lesion voxels), total %.2f s", output, voxels, sum(self.timings.values()))

    def _maps(
        self, ct: sitk.Image, pet: sitk.Image, *, ct_source: str, pet_source: str
    ) -> tuple[sitk.Image, sitk.Image | None]:
        start = time.monotonic()
        deadline = None if self.settings.time_budget_s is None else start + self.settings.time_budget_s
        with timed("preprocess", self.timings):
            prep = preprocess(ct, pet, settings=self.settings, ct_source=ct_source, pet_source=pet_source)
        record = prep.record
        log.info("network grid %s (crop %s of %s)", record.network.size, record.cropped.size, record.native.size)
        with timed("network", self.timings):
            maps = ensemble_maps(prep.image, self.ensemble, device=self.device, deadline=deadline)
        with timed("restore", self.timings):
            probability = restore(maps[0], record)
            if not self.settings.uncertainty:
                return probability, None
            uncertainty = restore(fold_std(maps), record)
            uncertainty.SetMetaData(UNCERTAINTY_KEY, UNCERTAINTY_NAME)
            return probability, uncertainty
