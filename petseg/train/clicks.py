"""Simulated lesion clicks for training a click-aware model.

Per training patch, after cropping and before the spatial augmentation (so the click maps
move with the image): a random number 0..10 of tumour clicks, each at the centre of a
different lesion of the patch (the maximum of the Euclidean distance transform, in mm, of
an 18-connected component of the label), and 0..10 background clicks at random hot voxels
outside the label (PET >= ``hot_suv``: brain, heart, kidneys, bladder, where false
positives come from), else at random voxels outside the label. Zero clicks are drawn as
often as any other count, so the model also learns to work without any.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import cc3d
import numpy as np
from monai.transforms import MapTransform, Randomizable
from scipy import ndimage

from petseg.clicks import MAX_CLICKS, Clicks, click_maps
from petseg.geometry import Grid
from petseg.metrics import CONNECTIVITY


def lesion_centres(label: np.ndarray, *, spacing: Sequence[float]) -> list[np.ndarray]:
    """Per 18-connected component of ``label`` (x, y, z), the voxel farthest from its border
    (ties: the first in array order), largest component first."""
    labels, count = cc3d.connected_components(np.asarray(label) > 0, connectivity=CONNECTIVITY, return_N=True)
    centres = []
    for box_index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        padded = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        component = labels[padded] == box_index
        distance = ndimage.distance_transform_edt(component, sampling=spacing)
        inner = np.unravel_index(np.argmax(distance), distance.shape)
        centres.append((int(component.sum()), np.array([s.start + i for s, i in zip(padded, inner)], float)))
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
        max_clicks: int = MAX_CLICKS,
        keys: Sequence[Hashable] = ("image",),
    ) -> None:
        MapTransform.__init__(self, keys)
        self.spacing = tuple(float(s) for s in spacing)
        self.sigma_mm = sigma_mm
        self.hot_suv = hot_suv
        self.max_clicks = max_clicks

    def randomize(self, data: Any = None) -> None:
        self.counts = (int(self.R.randint(0, self.max_clicks + 1)), int(self.R.randint(0, self.max_clicks + 1)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        out = dict(data)
        image = np.asarray(out["image"])
        label = np.asarray(out["label"])[0] > 0.5
        grid = Grid(tuple(image.shape[1:]), self.spacing, (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
        clicks = Clicks()
        centres = lesion_centres(label, spacing=self.spacing)
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
