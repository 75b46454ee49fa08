"""Simulated scribble corrections (autoPET V's protocol, implemented from its description).

At each step the errors are split into missed (ground truth, not predicted: FN) and false
(predicted, not ground truth: FP) voxels. The kind with the smaller error volume gets the
scribble, as the protocol does (FN -> a "tumor" scribble, FP -> a "background" one); in the
largest 26-connected component of its errors the axial slice holding most of its voxels is
taken, and a 2-D scribble is drawn on that slice by one of three styles:

- ``centerline``: the skeleton's longest path (its geodesic diameter), 10 % of it trimmed
  at each end;
- ``random``: the straight line between two random voxels of the region, kept inside it;
- ``boundary``: a walk along about 20 % of the region's inner boundary.

``mixed`` draws one of the three at random per step. (cc3d, SciPy and SimpleITK are imported
when a scribble is drawn: the CLI reads the style names from here.) Arrays are (z, y, x), z the axial
(slice) axis; points are returned as voxel indices (x, y, z), as autoPET's clicks files
give them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STYLES = ("centerline", "random", "boundary")
CHOICES = (*STYLES, "mixed")
TRIM = 0.10  # of the centerline at each end
BOUNDARY_FRACTION = 0.20
EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Scribble:
    kind: str  # "tumor" (a missed region) or "background" (a false one)
    style: str
    points: np.ndarray  # (n, 3) int voxel indices (x, y, z), all on slice ``z``
    z: int
    error_voxels: int  # of the component the scribble was drawn in

    def as_clicks(self) -> list[dict]:
        """The points as autoPET clicks-file entries."""
        return [{"point": [int(v) for v in p], "name": self.kind} for p in self.points]


def simulate_scribble(gt: np.ndarray, pred: np.ndarray, *, style: str, rng: np.random.Generator) -> Scribble | None:
    """The next scribble for prediction ``pred`` of ground truth ``gt`` (bool arrays z, y, x);
    None when they agree."""
    import cc3d

    if style not in CHOICES:
        raise ValueError(f"scribble style {style!r}: expected one of {', '.join(CHOICES)}")
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    errors = [(int(e.sum()), kind, e) for kind, e in (("tumor", gt & ~pred), ("background", pred & ~gt)) if e.any()]
    if not errors:
        return None
    _, kind, error = min(errors, key=lambda item: item[0])  # the smaller error volume (ties: tumour)
    labels, count = cc3d.connected_components(error, connectivity=26, return_N=True)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    component = labels == int(np.argmax(sizes))
    z = int(np.argmax(component.sum(axis=(1, 2))))
    region = component[z]
    drawn = style if style != "mixed" else STYLES[int(rng.integers(len(STYLES)))]
    yx = DRAW[drawn](region, rng)
    points = np.stack([yx[:, 1], yx[:, 0], np.full(len(yx), z)], axis=1).astype(int)
    return Scribble(kind, drawn, points, z, int(sizes.max()))


def centerline(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) (y, x): the longest path on the region's skeleton, ends trimmed."""
    import SimpleITK as sitk

    # padded: ITK's thinning leaves nothing of a region that touches the array's edge
    padded = sitk.GetImageFromArray(np.pad(region, 1).astype(np.uint8))
    skeleton = sitk.GetArrayFromImage(sitk.BinaryThinning(padded))[1:-1, 1:-1] > 0
    path = _diameter_path(skeleton & region)
    if len(path) == 0:
        return random_line(region, rng)
    if len(path) > 10:
        cut = int(len(path) * TRIM)
        path = path[cut : len(path) - cut]
    return path


def _diameter_path(mask: np.ndarray) -> np.ndarray:
    """(n, 2) pixels of the longest shortest path (8-connected) of the mask's largest piece:
    two breadth-first searches, from any pixel to the farthest, and from there again."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    pixels = np.argwhere(mask)
    if len(pixels) == 0:
        return pixels
    index = -np.ones(mask.shape, int)
    index[tuple(pixels.T)] = np.arange(len(pixels))
    rows, cols = [], []
    padded = np.pad(index, 1, constant_values=-1)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            neighbour = padded[1 + dy : padded.shape[0] - 1 + dy, 1 + dx : padded.shape[1] - 1 + dx]
            here = index >= 0
            ok = here & (neighbour >= 0)
            rows.append(index[ok])
            cols.append(neighbour[ok])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(pixels),) * 2).tocsr()
    _, piece = connected_components(graph, directed=False)
    start = int(np.flatnonzero(piece == np.bincount(piece).argmax())[0])
    order, _ = breadth_first_order(graph, start, directed=False)
    far = int(order[-1])  # BFS visits by distance: the last is the farthest
    order, parent = breadth_first_order(graph, far, directed=False)
    node, path = int(order[-1]), []
    while node >= 0:
        path.append(node)
        node = int(parent[node]) if node != far else -1
    return pixels[path[::-1]]


def random_line(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) (y, x): the pixels of the line between two random pixels of the region that lie
    inside it."""
    pixels = np.argwhere(region)
    a, b = pixels[rng.integers(len(pixels), size=2)]
    steps = int(np.abs(b - a).max()) + 1
    line = np.rint(np.linspace(a, b, steps)).astype(int)  # one pixel per step of the longer axis, in order
    line = line[region[line[:, 0], line[:, 1]]]
    return line if len(line) else a[None]


def boundary_walk(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) (y, x): a walk of ~20 % of the region's inner boundary pixels from a random
    one, each step to an unvisited 8-neighbour on the boundary (edge neighbours first, then
    the one with the fewest unvisited neighbours: it follows the contour, not across it);
    shorter when the walk runs out of neighbours."""
    from scipy import ndimage

    inner = region & ~ndimage.binary_erosion(region, EIGHT)
    pixels = np.argwhere(inner)
    n = max(1, int(round(len(pixels) * BOUNDARY_FRACTION)))
    left = {tuple(p) for p in pixels.tolist()}
    current = tuple(pixels[int(rng.integers(len(pixels)))].tolist())
    walk = [current]
    left.discard(current)
    steps = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]  # edges first

    def free(p):
        return [q for q in ((p[0] + dy, p[1] + dx) for dy, dx in steps) if q in left]

    while len(walk) < n:
        options = free(current)
        if not options:
            break
        edge = [q for q in options if abs(q[0] - current[0]) + abs(q[1] - current[1]) == 1]
        current = min(edge or options, key=lambda q: len(free(q)))
        walk.append(current)
        left.discard(current)
    return np.array(walk, int)


DRAW = {"centerline": centerline, "random": random_line, "boundary": boundary_walk}
