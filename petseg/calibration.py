"""Calibration of the foreground probability: expected calibration error and reliability diagram.

Over the voxels inside the body (PET SUV above ``BODY_SUV``), the predicted probabilities are
put in ``BINS`` equal-width bins of [0, 1] (p = 1 in the last). Per bin: its share of the
voxels, their mean predicted probability (confidence) and the fraction of them that are
lesion in the ground truth (observed frequency). ECE = sum over bins of share x |observed -
confidence|. Voxels outside the body are left out: they are near-certain background and
would drown the measure in trivially right zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petseg.atomic import atomic_path
from petseg.errors import InputError

BINS = 10
BODY_SUV = 0.1  # air in PET reads ~0 SUV; lungs, the least avid tissue, ~0.3-0.6


@dataclass
class Calibration:
    """Per-bin voxel count, sum of predicted probabilities and count of ground-truth lesion
    voxels; add cases with ``add`` (or ``+``) and read ``ece`` from the pooled sums."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    probability_sum: np.ndarray = field(default_factory=lambda: np.zeros(BINS))
    positive: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    @classmethod
    def of(
        cls, probability: np.ndarray, gt: np.ndarray, pet: np.ndarray, *, source: str = "probability"
    ) -> Calibration:
        """One case's sums from arrays of the same shape (``gt`` nonzero = lesion)."""
        if not probability.shape == gt.shape == pet.shape:
            raise ValueError(f"shapes differ: probability {probability.shape}, gt {gt.shape}, PET {pet.shape}")
        body = pet > BODY_SUV
        p = probability[body].astype(np.float64)
        if p.size and not (np.isfinite(p).all() and p.min() >= 0.0 and p.max() <= 1.0):
            raise InputError(source, f"values {p.min():g}..{p.max():g} are not probabilities in [0, 1]")
        bins = np.minimum((p * BINS).astype(np.int64), BINS - 1)
        return cls(
            np.bincount(bins, minlength=BINS),
            np.bincount(bins, weights=p, minlength=BINS),
            np.bincount(bins, weights=gt[body] > 0, minlength=BINS).astype(np.int64),
        )

    def __add__(self, other: Calibration) -> Calibration:
        return Calibration(
            self.count + other.count, self.probability_sum + other.probability_sum, self.positive + other.positive
        )

    @property
    def voxels(self) -> int:
        return int(self.count.sum())

    def confidence(self) -> np.ndarray:
        """Mean predicted probability per bin (NaN for an empty bin)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.probability_sum / self.count

    def observed(self) -> np.ndarray:
        """Fraction of ground-truth lesion voxels per bin (NaN for an empty bin)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.positive / self.count

    @property
    def ece(self) -> float:
        """Expected calibration error; NaN without voxels."""
        if self.voxels == 0:
            return float("nan")
        used = self.count > 0
        gap = np.abs(self.observed()[used] - self.confidence()[used])
        return float(np.sum(self.count[used] / self.voxels * gap))


def reliability_diagram(calibration: Calibration, output: str | Path, *, title: str = "") -> Path:
    """PNG: observed lesion frequency against mean predicted probability per bin (the
    diagonal is perfect calibration), and the voxels per bin on a log scale below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0.0, 1.0, BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    used = calibration.count > 0
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfect calibration")
    top.bar(centres[used], calibration.observed()[used], width=1 / BINS, edgecolor="black", alpha=0.6, label="observed")
    top.plot(calibration.confidence()[used], calibration.observed()[used], "o-", color="crimson", label="per bin")
    top.set_ylabel("fraction of lesion voxels")
    top.set_ylim(0, 1)
    top.set_title(title or f"reliability, ECE {calibration.ece:.4f} ({calibration.voxels:,} body voxels)")
    top.legend(loc="upper left", fontsize=8, frameon=False)
    bottom.bar(centres, np.maximum(calibration.count, 1), width=1 / BINS, edgecolor="black", color="steelblue")
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted foreground probability")
    bottom.set_ylabel("voxels")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(output)
