"""Sliding-window ensemble inference: one pass over the windows, every fold on each window."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from petseg.errors import ModelError
from petseg.settings import Settings

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU. A CUDA request without CUDA falls back to CPU with a warning."""
    name = (name or "auto").lower()
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}")
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    log.warning("CUDA is not available: running on the CPU (expect minutes per study)")
    return torch.device("cpu")


class FoldAverage(torch.nn.Module):
    """Maps a window batch to the folds' mean foreground probability, shape (B, 1, ...).

    Averaging probabilities (softmax per fold) rather than logits keeps each fold's vote
    bounded; only the foreground channel is kept, which halves what is blended and restored.
    """

    def __init__(self, networks: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        if not networks:
            raise ModelError("networks", "at least one network is needed")
        self.networks = torch.nn.ModuleList(networks)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        total = None
        for network in self.networks:
            logits = network(window)
            if logits.ndim != window.ndim or logits.shape[1] != 2 or logits.shape[2:] != window.shape[2:]:
                raise ModelError(
                    type(network).__name__,
                    f"returned shape {tuple(logits.shape)} for input {tuple(window.shape)}; expected (B, 2, ...)",
                )
            probability = torch.softmax(logits.float(), dim=1)[:, 1:2]
            total = probability if total is None else total + probability
        return total / len(self.networks)


def foreground_probability(
    image: np.ndarray,
    ensemble: FoldAverage,
    *,
    settings: Settings,
    device: torch.device,
) -> np.ndarray:
    """(C, X, Y, Z) network input -> (X, Y, Z) mean foreground probability, float32."""
    inputs = torch.from_numpy(np.ascontiguousarray(image))[None]
    with torch.inference_mode():
        output = sliding_window_inference(
            inputs,
            roi_size=settings.roi_size,
            sw_batch_size=settings.sw_batch_size,
            predictor=ensemble,
            overlap=settings.overlap,
            mode="constant",
            sw_device=device,
            device=device,
            progress=settings.progress,
        )
    return output[0, 0].float().cpu().numpy()
