"""Compare an output folder with the expected one (used by test.sh after the container ran)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.documents import read_json
from petseg.errors import InputError
from petseg.geometry import same_grid
from petseg.layout import image_suffix


@dataclass
class Comparison:
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def compare_outputs(expected: str | Path, actual: str | Path, *, min_dice: float = 0.99) -> Comparison:
    """Same file names; JSON files equal; images with equal grid, pixel type, values in {0, 1},
    and Dice >= ``min_dice`` (GPU and CPU, bf16 on either, may disagree on voxels near p = 0.5)."""
    expected, actual = Path(expected), Path(actual)
    result = Comparison()
    for root in (expected, actual):
        if not root.is_dir():
            result.problems.append(f"{root}: folder not found")
    if result.problems:
        return result
    want, got = _files(expected), _files(actual)
    if not want:
        result.problems.append(f"{expected}: holds no expected file (nothing would be compared)")
        return result
    result.problems += [f"{actual / name}: missing" for name in sorted(want - got)]
    result.problems += [f"{actual / name}: unexpected file" for name in sorted(got - want)]
    for name in sorted(want & got):
        exp, act = expected / name, actual / name
        if name.endswith(".json"):
            try:
                if read_json(exp, role="JSON file") != read_json(act, role="JSON file"):
                    result.problems.append(f"{act}: JSON differs from {exp}")
            except InputError as err:
                result.problems.append(str(err))
        elif image_suffix(name):
            result.problems += _compare_images(exp, act, min_dice=min_dice)
        elif exp.read_bytes() != act.read_bytes():
            result.problems.append(f"{act}: differs from {exp}")
        result.checked.append(name)
    return result


def _compare_images(exp: Path, act: Path, *, min_dice: float) -> list[str]:
    try:
        a, b = sitk.ReadImage(str(exp)), sitk.ReadImage(str(act))
    except RuntimeError:
        return [f"{act}: cannot be read as an image"]
    if not same_grid(a, b):
        return [f"{act}: grid differs (size/spacing/origin/direction) from {exp}"]
    if a.GetPixelID() != b.GetPixelID():
        return [f"{act}: pixel type {b.GetPixelIDTypeAsString()} != expected {a.GetPixelIDTypeAsString()}"]
    va, vb = sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
    if not np.isin(vb, (0, 1)).all():
        return [f"{act}: values outside {{0, 1}}"]
    d = dice(va > 0, vb > 0)
    if d < min_dice:
        return [f"{act}: Dice {d:.4f} with {exp} < {min_dice}"]
    return []
