"""Simulated lesion clicks for training a click-aware model.

Per training patch, after cropping and before the spatial augmentation (so the click maps
move with the image): with probability ``click_free`` no click at all; otherwise a random
number 0..n of tumour clicks (n = the patch's lesions, at most 10), each at the centre of a
different lesion (the maximum of the Euclidean distance transform, in mm, of an
18-connected component of the label), and 0..10 background clicks at random hot voxels
outside the label (PET >= ``hot_suv``: brain, heart, kidneys, bladder, where false
positives come from), else at random voxels outside the label.

Why not 0..10 tumour clicks: a patch holds a few lesions, so 0..10 clicks on distinct
lesions clicks every one of them in most patches, and the model learns that a lesion
without a click is not one: it then misses lesions it found before fine-tuning. Drawing
0..n leaves unclicked lesions in most patches, and the click-free patches keep it an
automatic model when no one clicks.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import cc3d
import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

from petseg.clicks import MAX_CLICKS, Clicks, click_maps, next_click, region_centre
from petseg.geometry import Grid
from petseg.metrics import CONNECTIVITY

SCRIBBLE_STEPS = 5  # autoPET V: an initial mask and up to 5 corrections


def lesion_centres(label: np.ndarray, *, spacing: Sequence[float]) -> list[np.ndarray]:
    """Per 18-connected component of ``label`` (x, y, z), the voxel farthest from its border
    (ties: the first in array order), largest component first."""
    labels, count = cc3d.connected_components(np.asarray(label) > 0, connectivity=CONNECTIVITY, return_N=True)
    centres = []
    for box_index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        component = labels[box] == box_index
        centre = region_centre(component, spacing=spacing) + [s.start for s in box]
        centres.append((int(component.sum()), centre))
    centres.sort(key=lambda item: -item[0])
    return [centre for _, centre in centres]


class SimulateClicksd(Randomizable, MapTransform):
    """Append tumour and background click maps to ``image`` (C, X, Y, Z) from ``label``."""

    def __init__(
        self,
        *,
        spacing: Sequence[float],
        sigma_mm: float,
        hot_suv: float,
        click_free: float = 0.0,
        max_clicks: int = MAX_CLICKS,
        scribbles: bool = False,
        keys: Sequence[Hashable] = ("image",),
    ) -> None:
        MapTransform.__init__(self, keys)
        self.spacing = tuple(float(s) for s in spacing)
        self.sigma_mm = sigma_mm
        self.hot_suv = hot_suv
        self.click_free = click_free
        # scribbles: at most SCRIBBLE_STEPS of each kind, as a protocol has that many corrections
        self.max_clicks = min(max_clicks, SCRIBBLE_STEPS) if scribbles else max_clicks
        self.scribbles = scribbles

    def randomize(self, lesions: int = 0) -> None:
        if self.R.random_sample() < self.click_free:
            self.counts = (0, 0)
        else:
            self.counts = (
                int(self.R.randint(0, min(lesions, self.max_clicks) + 1)),
                int(self.R.randint(0, self.max_clicks + 1)),
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image = np.asarray(out["image"])
        label = np.asarray(out["label"])[0] > 0.5
        grid = Grid(tuple(image.shape[1:]), self.spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
        if self.scribbles:
            clicks = self.simulated_scribbles(image, label, grid)
            maps = click_maps(clicks, grid, sigma_mm=self.sigma_mm)
            out["image"] = np.concatenate([image[:2], maps]).astype(np.float32)
            return out
        clicks = Clicks()
        centres = lesion_centres(label, spacing=self.spacing)
        self.randomize(len(centres))
        order = self.R.permutation(len(centres))[: self.counts[0]]
        for i in order:
            clicks = clicks.added("tumor", grid.to_physical(centres[i]))
        hot = (image[1] >= self.hot_suv) & ~label
        pool = np.argwhere(hot) if hot.any() else np.argwhere(~label)
        if len(pool):
            for i in self.R.choice(len(pool), size=min(self.counts[1], len(pool)), replace=False):
                clicks = clicks.added("background", grid.to_physical(pool[i].astype(float)))
        maps = click_maps(clicks, grid, sigma_mm=self.sigma_mm)
        out["image"] = np.concatenate([image[:2], maps]).astype(np.float32)
        return out

    def simulated_scribbles(self, image: np.ndarray, label: np.ndarray, grid: Grid) -> Clicks:
        """0..n tumour scribbles on distinct lesions (n = the patch's lesions, at most
        max_clicks) and 0..max_clicks background scribbles on distinct hot spots outside the
        label, each drawn by :func:`petseg.scribbles.simulate_scribble` as if the lesion were
        missed or the hot spot falsely found (a style at random)."""
        from petseg.scribbles import simulate_scribble

        lesions, n_lesions = cc3d.connected_components(label, connectivity=CONNECTIVITY, return_N=True)
        hot = (image[1] >= self.hot_suv) & ~label
        spots, n_spots = cc3d.connected_components(hot, connectivity=26, return_N=True)
        self.randomize(n_lesions)
        rng = np.random.default_rng(int(self.R.randint(0, 2**31 - 1)))
        clicks = Clicks()
        empty = np.zeros(label.shape[::-1], bool)
        for kind, labels, count, wanted in (
            ("tumor", lesions, n_lesions, self.counts[0]),
            ("background", spots, n_spots, self.counts[1]),
        ):
            for index in self.R.permutation(count)[:wanted] + 1:
                region = (labels == index).T  # (z, y, x), as the protocol draws
                truth, predicted = (region, empty) if kind == "tumor" else (empty, region)
                scribble = simulate_scribble(truth, predicted, style="mixed", rng=rng)
                if scribble is not None:
                    physical = grid.to_physical(scribble.points.astype(float))  # (x, y, z) of the patch
                    for point in physical:
                        clicks = clicks.added(kind, point)
        return clicks


class ErrorClicks:
    """Error-driven clicks during training, placed as the interactive evaluation places them.

    For a share ``probability`` of the batches, 1..``max_rounds`` rounds: the network (eval
    mode, no gradient) predicts the batch, and each patch that already has simulated clicks
    gets one more click at the centre of its largest error region: a tumour click for a
    missed region, a background click for a false one. Click-free patches stay click-free,
    so the model still learns to work without any click.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        spacing: Sequence[float],
        sigma_mm: float,
        probability: float,
        max_rounds: int = 3,
        autocast: torch.dtype | None = None,
        scribbles: bool = False,
    ) -> None:
        self.network = network
        self.grid_spacing = tuple(float(s) for s in spacing)
        self.sigma_mm = sigma_mm
        self.probability = probability
        self.max_rounds = max_rounds
        self.autocast = autocast
        self.scribbles = scribbles

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 4, X, Y, Z) with the new clicks in channels 2 and 3; ``y`` (B, 1, X, Y, Z)."""
        if self.probability <= 0 or random.random() >= self.probability:
            return x
        rounds = random.randint(1, self.max_rounds)
        clicked = x[:, 2:].flatten(1).amax(1) > 0
        if not clicked.any():
            return x
        truth = y[:, 0].detach().cpu().numpy() > 0.5
        grid = Grid(tuple(truth.shape[1:]), self.grid_spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
        x = x.clone()
        was_training = self.network.training
        self.network.eval()
        try:
            for _ in range(rounds):
                with (
                    torch.no_grad(),
                    torch.autocast(x.device.type, dtype=self.autocast, enabled=self.autocast is not None),
                ):
                    predicted = self.network(x).argmax(1).cpu().numpy() > 0
                for b in np.flatnonzero(clicked.cpu().numpy()):
                    found = self.correction(truth[b].T, predicted[b].T, grid)  # (z, y, x)
                    if found is None:
                        continue
                    maps = click_maps(found, grid, sigma_mm=self.sigma_mm)
                    x[b, 2:] = torch.maximum(x[b, 2:], torch.from_numpy(maps).to(x))
        finally:
            self.network.train(was_training)
        return x

    def correction(self, truth: np.ndarray, predicted: np.ndarray, grid: Grid) -> Clicks | None:
        """The next click (or scribble) on the largest error of one patch, None without any."""
        if self.scribbles:
            from petseg.scribbles import simulate_scribble

            scribble = simulate_scribble(
                truth, predicted, style="mixed", rng=np.random.default_rng(random.getrandbits(32))
            )
            if scribble is None:
                return None
            points = tuple(map(tuple, grid.to_physical(scribble.points.astype(float))))
            return Clicks(points, ()) if scribble.kind == "tumor" else Clicks((), points)
        found = next_click(truth, predicted, grid=grid)
        return None if found is None else Clicks().added(*found)
