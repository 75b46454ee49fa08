"""Reading and validating images; atomic writes of images, text and CSV tables."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.layout import image_suffix

log = logging.getLogger(__name__)


def read_image(path: str | Path, *, role: str = "image") -> sitk.Image:
    """Read a 3D scalar image as float32; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{role} file not found")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, f"cannot be read as an image ({_first_itk_line(err)})") from None
    check_geometry(image, source=path)
    return sitk.Cast(image, sitk.sitkFloat32)


def check_geometry(image: sitk.Image, *, source: str | Path) -> None:
    """Reject images that are not 3D scalar volumes with a usable grid."""
    dim = image.GetDimension()
    if dim != 3:
        raise InputError(source, f"expected a 3D image, got a {dim}D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            source, f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    if min(image.GetSize()) < 2:
        raise InputError(source, f"expected a 3D volume, got size {image.GetSize()} (a single slice)")
    if min(image.GetSpacing()) <= 0:
        raise InputError(source, f"spacing must be positive, got {image.GetSpacing()}")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InputError(source, "direction matrix is not orthonormal")


def check_intensities(array: np.ndarray, *, source: str | Path, role: str) -> None:
    """Reject NaN/inf anywhere, and an all-zero PET."""
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(source, f"{role} contains {int(array.size - finite.sum())} NaN or infinite voxels")
    if role == "PET" and not np.any(array):
        raise InputError(source, "PET is all zero")


def _first_itk_line(err: Exception) -> str:
    """ITK exceptions span many lines; keep the most informative one."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(err).__name__


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename it onto ``path`` on success.

    On any exception the temporary file is removed, so no half-written output remains.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = image_suffix(path) or path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_image(image: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write an image atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return path


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """CSV with the union of keys in first-seen order (so ``case,dsc,...`` lead); floats to 6
    significant digits, NaN as "nan". Written atomically."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return write_text(buffer.getvalue(), path)


def _csv_value(value):
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.6g}"
    return value
