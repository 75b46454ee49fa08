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
from petseg.inference import EnsembleMaps, FoldAverage, ensemble_maps, resolve_device, resolve_precision
from petseg.io import atomic_paths, read_image, save_image
from petseg.model import ModelFolder, default_model_dir
from petseg.preprocess import Record, preprocess, probability_to_mask, restore
from petseg.settings import Settings

log = logging.getLogger(__name__)


UNCERTAINTY_KEY = "petseg_map"  # written into the image header (.mha keeps it; NIfTI drops it)
UNCERTAINTY_NAME = "standard deviation of the folds' foreground probabilities"


@dataclass(frozen=True)
class Prediction:
    """One study's outputs on the PET's grid: uint8 mask, float32 mean foreground probability,
    with ``Settings.uncertainty`` the folds' standard deviation, and with ``Settings.fold_votes``
    ``votes``: an unsigned-integer image whose bit f is set where fold f's own probability is
    above the threshold (``folds`` bits); None when not asked for."""

    mask: sitk.Image
    probability: sitk.Image
    uncertainty: sitk.Image | None = None
    votes: sitk.Image | None = None
    folds: int = 0


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
        return self.predict_images(ct, pet, ct_source=ct_source, pet_source=pet_source).probability

    def predict(self, ct: sitk.Image, pet: sitk.Image, *, ct_source: str = "CT", pet_source: str = "PET") -> sitk.Image:
        """uint8 {0, 1} lesion mask on the PET's native grid."""
        return self.predict_images(ct, pet, ct_source=ct_source, pet_source=pet_source).mask

    def predict_images(
        self, ct: sitk.Image, pet: sitk.Image, *, ct_source: str = "CT", pet_source: str = "PET"
    ) -> Prediction:
        """Every output the settings ask for; the mask is exactly ``probability > settings.threshold``."""
        self.timings = {}
        return self._predict(ct, pet, ct_source=ct_source, pet_source=pet_source)

    def predict_paths(self, *, ct: str | Path, pet: str | Path) -> Prediction:
        """Read both files and predict; ``timings`` holds read, preprocess, network, restore."""
        self.timings = {}
        with timed("read", self.timings):
            ct_image = read_image(ct, role="CT")
            pet_image = read_image(pet, role="PET")
        return self._predict(ct_image, pet_image, ct_source=str(ct), pet_source=str(pet))

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
        outputs = {}
        if probability_output is not None:
            outputs[Path(probability_output)] = prediction.probability
        if uncertainty_output is not None:
            if prediction.uncertainty is None:
                raise ConfigError("uncertainty", "an uncertainty output needs Settings(uncertainty=True)")
            outputs[Path(uncertainty_output)] = prediction.uncertainty
        outputs[Path(output)] = prediction.mask
        with timed("write", self.timings), atomic_paths(list(outputs)) as temps:
            for tmp, (target, image) in zip(temps, outputs.items()):
                save_image(image, tmp, target=target)
        self.log_written(output, prediction.mask)
        return Path(output)

    def log_written(self, output: str | Path, mask: sitk.Image) -> None:
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        log.info("wrote %s (%d lesion voxels), total %.2f s", output, voxels, sum(self.timings.values()))

    def _predict(self, ct: sitk.Image, pet: sitk.Image, *, ct_source: str, pet_source: str) -> Prediction:
        start = time.monotonic()
        deadline = None if self.settings.time_budget_s is None else start + self.settings.time_budget_s
        with timed("preprocess", self.timings):
            prep = preprocess(ct, pet, settings=self.settings, ct_source=ct_source, pet_source=pet_source)
        record = prep.record
        log.info("network grid %s (crop %s of %s)", record.network.size, record.cropped.size, record.native.size)
        with timed("network", self.timings):
            maps = EnsembleMaps.split(
                ensemble_maps(prep.image, self.ensemble, device=self.device, deadline=deadline), settings=self.settings
            )
        with timed("restore", self.timings):
            probability = restore(maps.mean, record)
            uncertainty = votes = None
            if maps.variance is not None:
                uncertainty = restore(maps.std(), record)
                uncertainty.SetMetaData(UNCERTAINTY_KEY, UNCERTAINTY_NAME)
            if maps.folds is not None:
                votes = self._votes(maps.folds, record)
        mask = probability_to_mask(probability, threshold=self.settings.threshold)
        folds = 0 if maps.folds is None else len(maps.folds)
        return Prediction(mask, probability, uncertainty, votes, folds)

    def _votes(self, folds: np.ndarray, record: Record) -> sitk.Image:
        """Each fold's own mask, restored as the ensemble's is (probability, then threshold),
        packed one bit per fold."""
        dtype = np.uint8 if len(folds) <= 8 else np.uint16 if len(folds) <= 16 else np.uint64
        bits = None
        for f, fold in enumerate(folds):
            own = (
                sitk.GetArrayFromImage(restore(fold, record)) > self.settings.threshold
            )  # not a view: the image is temporary
            bit = own.astype(dtype) << dtype(f)
            bits = bit if bits is None else bits | bit
        return record.native.stamp(sitk.GetImageFromArray(bits))
