"""Lesion clicks (autoPET IV): reading them, simulating them, and encoding them as input channels.

A click is a point in patient space (LPS, mm) labelled "tumor" or "background". A
click-aware model takes two more input channels after CT and PET: the tumour-click map and
the background-click map, made on the network grid as the maximum over that kind's clicks
of a Gaussian exp(-d^2 / (2 sigma^2)), d the distance in mm to the click, sigma from
model.json (``preprocessing.click_sigma_mm``). No clicks: both maps are zero.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from petseg.documents import convert, read_json
from petseg.errors import InputError
from petseg.schemas import ClicksDocument

if TYPE_CHECKING:  # annotations only: the CLI imports MAX_CLICKS without SimpleITK
    from petseg.geometry import Grid

log = logging.getLogger(__name__)

KINDS = ("tumor", "background")
MAX_CLICKS = 10  # per kind, as autoPET IV gives them
STAMP_LIMIT = 32  # points of a kind above which one distance transform makes its map
FORMAT = '{"points": [{"point": [x, y, z], "name": "tumor"|"background"}, ...]}'


@dataclass(frozen=True)
class Clicks:
    """Tumour and background clicks as physical points (LPS, mm)."""

    tumor: tuple[tuple[float, float, float], ...] = ()
    background: tuple[tuple[float, float, float], ...] = ()

    def __post_init__(self) -> None:
        for kind in KINDS:
            points = []
            for point in getattr(self, kind):
                xyz = coordinates(point)
                if xyz is None:
                    raise ValueError(f"Clicks.{kind}: {point!r} is not a point of three finite numbers (mm)")
                points.append(xyz)
            object.__setattr__(self, kind, tuple(points))

    def __len__(self) -> int:
        return len(self.tumor) + len(self.background)

    def added(self, kind: str, point: Any) -> Clicks:
        if kind == "tumor":
            return Clicks(self.tumor + (point,), self.background)
        return Clicks(self.tumor, self.background + (point,))

    def of(self, kind: str) -> tuple[tuple[float, float, float], ...]:
        return self.tumor if kind == "tumor" else self.background


def coordinates(point: Any) -> tuple[float, float, float] | None:
    """Three finite numbers as floats, else None (a string, a bool, NaN, a 400-digit integer)."""
    if not isinstance(point, list | tuple | np.ndarray) or len(point) != 3:
        return None
    values = []
    for v in point:
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            return None
        try:
            v = float(v)
        except OverflowError:
            return None
        if not math.isfinite(v):
            return None
        values.append(v)
    return (values[0], values[1], values[2])


def click_points(data: Any, *, source: str | Path) -> list[tuple[int, str, tuple[float, float, float]]]:
    """The points of a clicks JSON document as (position in the list, kind, coordinates),
    checked for form only (no image needed: bad files fail before any model is loaded)."""
    if not isinstance(data, dict) or not isinstance(data.get("points"), list):
        raise InputError(source, f"expected {FORMAT}")
    document = convert(data, ClicksDocument, source=source, hint=FORMAT)
    return [(n, p.name, p.point) for n, p in enumerate(document.points)]


def parse_clicks(
    data: Any, *, grid: Grid, source: str | Path, world: bool = False, limit: int | None = MAX_CLICKS
) -> Clicks:
    """``{"points": [{"point": [i, j, k], "name": "tumor" | "background"}, ...]}`` -> Clicks.

    Points are voxel indices of the PET in (x, y, z) order (autoPET IV), or with ``world``
    physical coordinates in mm (LPS). A malformed file is an error naming it, the point and
    the value; points outside the image, and points beyond the first ``limit`` of a kind
    (None: no limit, for scribbles), are skipped with one WARNING each that counts them and
    names the first (a job should not fail for a stray click, nor flood its log)."""
    kept: dict[str, list] = {kind: [] for kind in KINDS}
    outside: list[str] = []
    beyond = 0
    for n, name, point in click_points(data, source=source):
        index = grid.to_index(np.asarray(point, float)) if world else np.asarray(point, float)
        if not grid.contains(index):
            outside.append(f"point {n} {name} {[int(v) if v.is_integer() else v for v in point]}")
        elif limit is not None and len(kept[name]) >= limit:
            beyond += 1
        else:
            kept[name].append(grid.to_physical(index))
    if outside:
        log.warning(
            "%s: %d point(s) lie outside the PET (%s voxels) and were skipped: %s%s",
            source,
            len(outside),
            grid.size,
            "; ".join(outside[:3]),
            " ..." if len(outside) > 3 else "",
        )
    if beyond:
        log.warning(
            "%s: %d point(s) beyond the first %d of their kind were skipped (a model or interface for "
            "scribbles reads all: max_clicks None)",
            source,
            beyond,
            limit,
        )
    return Clicks(tuple(kept["tumor"]), tuple(kept["background"]))


def load_clicks_json(path: str | Path) -> Any:
    """The JSON document of a clicks file (a regular file of at most MAX_JSON_BYTES); a
    missing, unreadable or oversized file is an InputError naming it."""
    return read_json(path, role="clicks file")


def check_clicks_file(path: str | Path) -> int:
    """Read and check a clicks file's form before any work (its points are placed later, on the
    PET); returns the number of points."""
    return len(click_points(load_clicks_json(path), source=Path(path)))


def read_clicks(path: str | Path, *, grid: Grid, world: bool = False, limit: int | None = MAX_CLICKS) -> Clicks:
    """Clicks from a JSON file (see :func:`parse_clicks`)."""
    return parse_clicks(load_clicks_json(path), grid=grid, source=Path(path), world=world, limit=limit)


def click_maps(clicks: Clicks, grid: Grid, *, sigma_mm: float) -> np.ndarray:
    """(2, X, Y, Z) float32 on ``grid``: tumour and background click maps (max of Gaussians,
    i.e. the Gaussian of the distance to the nearest point of the kind). A kind of more than
    STAMP_LIMIT points (a scribble) takes one distance transform from the points' nearest
    voxels instead of a Gaussian per point: the same map to within half a voxel's distance."""
    maps = np.zeros((2, *grid.size), np.float32)
    for channel, kind in enumerate(KINDS):
        points = clicks.of(kind)
        if len(points) > STAMP_LIMIT:
            _distance_map(maps[channel], grid, np.asarray(points, float), sigma_mm)
            continue
        for point in points:
            if not _stamp(maps[channel], grid, np.asarray(point, float), sigma_mm):
                shown = [round(v, 1) for v in point]
                log.warning("%s click at %s mm lies outside the body crop the network sees: no effect", kind, shown)
    return maps


def _distance_map(target: np.ndarray, grid: Grid, points: np.ndarray, sigma_mm: float) -> None:
    """target = exp(-d^2 / 2 sigma^2), d the distance (mm) to the nearest point's voxel, over
    the points' box grown by 3 sigma (zero beyond, as the per-point Gaussians)."""
    from scipy import ndimage

    size = np.asarray(grid.size)
    continuous = grid.to_index(points)
    inside = np.all((continuous >= -0.5) & (continuous <= size - 0.5), axis=1)  # as Grid.contains
    index = np.clip(np.rint(continuous), 0, size - 1).astype(int)  # the outer half-voxel rounds to size
    if not inside.all():
        log.warning("%d click point(s) lie outside the body crop the network sees: no effect", int((~inside).sum()))
    index = index[inside]
    if len(index) == 0:
        return
    reach = np.ceil(3.0 * sigma_mm / np.asarray(grid.spacing)).astype(int)
    lo, hi = np.maximum(index.min(0) - reach, 0), np.minimum(index.max(0) + reach + 1, size)
    seeds = np.ones(tuple(hi - lo), bool)
    seeds[tuple((index - lo).T)] = False
    distance = ndimage.distance_transform_edt(seeds, sampling=grid.spacing)
    gauss = np.exp(-(distance**2) / (2.0 * sigma_mm**2)).astype(np.float32)
    gauss[distance > 3.0 * sigma_mm] = 0.0
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    np.maximum(target[box], gauss, out=target[box])


def _stamp(target: np.ndarray, grid: Grid, point: np.ndarray, sigma_mm: float) -> bool:
    """target = max(target, Gaussian at ``point``), evaluated within 3 sigma only; False when
    no voxel of ``grid`` lies within 3 sigma."""
    centre = grid.to_index(point)
    reach = 3.0 * sigma_mm / np.asarray(grid.spacing)
    if np.any(centre + reach < 0) or np.any(centre - reach > np.asarray(grid.size)):
        return False
    lo = np.maximum(np.floor(centre - reach), 0).astype(int)
    hi = np.minimum(np.ceil(centre + reach) + 1, np.asarray(grid.size)).astype(int)
    if np.any(hi <= lo):
        return False
    axes = [np.arange(a, b, dtype=float) for a, b in zip(lo, hi)]
    index = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    distance2 = np.sum((grid.to_physical(index) - point) ** 2, axis=-1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    np.maximum(target[box], np.exp(-distance2 / (2.0 * sigma_mm**2)).astype(np.float32), out=target[box])
    return True


# --- simulated clicks (interactive evaluation, training) -----------------------------------------


def next_click(gt: np.ndarray, pred: np.ndarray, *, grid: Grid) -> tuple[str, np.ndarray] | None:
    """(kind, point in mm) of the next simulated click, from (z, y, x) masks on ``grid``; None
    when prediction and ground truth agree."""
    import cc3d
    from scipy import ndimage

    from petseg.metrics import CONNECTIVITY

    best = None
    for kind, error in (("tumor", gt & ~pred), ("background", pred & ~gt)):
        if not error.any():
            continue
        labels, count = cc3d.connected_components(error, connectivity=CONNECTIVITY, return_N=True)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (int(sizes[largest - 1]), kind, labels, largest)
    if best is None:
        return None
    _, kind, labels, largest = best
    box = ndimage.find_objects(labels)[largest - 1]
    zyx = region_centre(labels[box] == largest, spacing=grid.spacing[::-1])
    zyx += [s.start for s in box]
    return kind, grid.to_physical(zyx[::-1])


def region_centre(region: np.ndarray, *, spacing: Sequence[float]) -> np.ndarray:
    """Index (float, array order) of the voxel of ``region`` farthest in mm from its border
    (ties: the first in array order). The array's faces count as border, so a region cut by
    them (a lesion at the edge of a patch or scan) gets its click inside, not on the face."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[(slice(1, -1),) * region.ndim]
    return np.array(np.unravel_index(np.argmax(distance), region.shape), float)
