"""Reading images (with their checks) and writing outputs that cannot lie.

Every write goes through :mod:`petseg.atomic` (a checked temporary file, then a rename); an
image must also read back with its size before it is renamed, since SimpleITK's writers do
not report a full disk.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.atomic import atomic_path, atomic_paths
from petseg.checks import check_geometry
from petseg.documents import regular_file
from petseg.errors import InputError, OutputError, is_out_of_memory
from petseg.imagefiles import check_header
from petseg.layout import image_suffix
from petseg.nifti import check_nifti_data

log = logging.getLogger(__name__)


@contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """ITK's MetaIO prints its own lines straight to file descriptor 2; our message replaces them."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def read_image(path: str | Path, *, role: str = "image") -> sitk.Image:
    """Read a 3D scalar image as float32; errors name the file and the problem.

    Confined: only a regular file is opened (a FIFO or device would hang), a MetaImage or NRRD
    header may take its voxels only from itself or from a file beside it, and the header is
    checked (dimension, grid, voxel count) before any voxel is allocated."""
    return read_images([(path, role)])[0]


def read_images(requests: Sequence[tuple[str | Path, str]], *, quiet: bool = True) -> list[sitk.Image]:
    """:func:`read_image` for several (path, role) pairs: each file checked in turn (its
    warnings and errors in order), then all voxels read and decompressed at once, one thread
    each (ITK does not hold the GIL); the first failing file's error, in the given order.
    ``quiet=False`` leaves file descriptor 2 alone (a read beside other work, whose own
    messages a redirection would swallow; ITK's lines then show for a file whose damage the
    checks before it missed)."""
    outcomes: list = []
    for path, role in requests:  # checks in order; a file that fails them is not read
        try:
            outcomes.append((Path(path), _checked_reader(Path(path), role=role)))
        except InputError as err:
            if len(requests) == 1:
                raise
            outcomes.append(err)
    readers = [(i, pair) for i, pair in enumerate(outcomes) if isinstance(pair, tuple)]
    if readers:
        with _quiet_native_stderr() if quiet else nullcontext():  # one around every thread: fd 2 is the process's
            if len(readers) == 1:
                images = [_execute(*readers[0][1])]
            else:
                with ThreadPoolExecutor(max_workers=len(readers), thread_name_prefix="petseg-read") as pool:
                    images = list(pool.map(lambda item: _execute(*item[1]), readers))
        for (i, _), image in zip(readers, images):
            outcomes[i] = image
    for outcome in outcomes:  # the first file's error first, wherever each failed
        if isinstance(outcome, InputError):
            raise outcome
    return outcomes


def _checked_reader(path: Path, *, role: str) -> sitk.ImageFileReader:
    """A reader for ``path`` whose file, header and (NIfTI) voxel data passed every check."""
    path = Path(path)
    if not path.exists():
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise InputError(path, f"{role} file not found{broken}")
    if path.is_dir():
        raise InputError(path, f"{role}: expected an image file, found a folder")
    regular_file(path, role=f"{role} file")
    check_header(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(IMAGE_IOS.get(image_suffix(path).lower(), ""))  # by name, also for "CT.NII.GZ"
    try:
        with _quiet_native_stderr():
            reader.ReadImageInformation()
    except RuntimeError as err:
        raise InputError(
            path, f"cannot be read as an image (truncated, corrupt or not an image file{_detail(err)})"
        ) from None
    check_geometry(
        dimension=reader.GetDimension(),
        size=reader.GetSize(),
        spacing=reader.GetSpacing(),
        direction=reader.GetDirection(),
        components=reader.GetNumberOfComponents(),
        source=path,
        origin=reader.GetOrigin() if reader.GetDimension() == 3 else (0.0, 0.0, 0.0),
        bytes_per_voxel=_bytes_per_voxel(reader.GetPixelID()),
    )
    if image_suffix(path).lower() in (".nii", ".nii.gz"):
        check_nifti_data(path, role=role)  # before ITK allocates: truncation, NaN, pixdim vs sform
    return reader


def _execute(path: Path, reader: sitk.ImageFileReader) -> sitk.Image | InputError:
    """The voxels as a float32 scalar image, or the error naming the file (returned: raised
    by the caller, in order, once every thread is done)."""
    try:
        image = reader.Execute()
    except RuntimeError as err:
        if is_out_of_memory(err):
            return InputError(path, f"out of memory while reading {' x '.join(map(str, reader.GetSize()))} voxels")
        return InputError(path, f"cannot be read as an image (truncated, corrupt or not an image file{_detail(err)})")
    if image.GetNumberOfComponentsPerPixel() == 1 and image.GetPixelID() >= sitk.sitkVectorUInt8:
        image = sitk.VectorIndexSelectionCast(image, 0)  # a "vector" of one component is a scalar image
    return sitk.Cast(image, sitk.sitkFloat32)


def _bytes_per_voxel(pixel_id: int) -> int:
    """Bytes one voxel of this SimpleITK pixel type takes (all its components)."""
    probe = sitk.Image([1, 1, 1], pixel_id)
    return sitk.GetArrayViewFromImage(probe).nbytes


# ITK picks a reader by the file name's extension, case-sensitively; petseg by its own rule
IMAGE_IOS = {".nii": "NiftiImageIO", ".nii.gz": "NiftiImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO"}
IMAGE_IOS |= {".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO"}


def _detail(err: Exception) -> str:
    detail = _first_itk_line(err)
    return "" if "no such file" in detail.lower() else f": {detail}"


def _first_itk_line(err: Exception) -> str:
    """ITK exceptions span many lines; keep the most informative one."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    for ln in lines:  # "ITK ERROR: ImageBase(0x...): Bad direction, determinant is 0. Refusing ..."
        if "ITK ERROR" in ln:
            return ln.rsplit("): ", 1)[-1].strip()
    return lines[-1] if lines else type(err).__name__


def file_stamp(path: str | Path) -> dict[str, Any]:
    """Size, modification time and a hash of the first and last MiB: what tells that an input
    changed (a resumed cohort redoes the case, a training cache rebuilds it) at the cost of
    reading 2 MiB, not the whole study."""
    try:
        info = Path(path).stat()
        digest = hashlib.sha256(str(info.st_size).encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if info.st_size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read(1 << 20))
    except OSError:
        return {"size": 0, "mtime_ns": 0, "digest": "unreadable"}  # never matches; the reader reports the file
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "digest": digest.hexdigest()[:16]}


# --- writing ------------------------------------------------------------------------------


def save_image(image: sitk.Image, path: Path, *, target: str | Path, compress: bool = True) -> None:
    """Write ``image`` to ``path`` (the temporary file of ``target``) and read it back:
    SimpleITK's writers do not report a full disk, but a truncated file does not read back."""
    try:
        sitk.WriteImage(image, str(path), useCompression=compress)
        with _quiet_native_stderr():
            back = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise OutputError(target, f"write failed, is the disk full? ({_first_itk_line(err)})") from None
    if back.GetSize() != image.GetSize():
        raise OutputError(target, "write failed: the file does not read back with the image's size")
    if image_suffix(target).lower() in (".nii", ".nii.gz"):  # ITK reads a truncated .nii.gz without complaint
        try:
            check_nifti_data(path, role="output")
        except InputError as err:
            raise OutputError(target, f"write failed, is the disk full? ({err.problem})") from None


def write_image(image: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write an image atomically (checked temporary file, then rename)."""
    with atomic_path(path) as tmp:
        save_image(image, tmp, target=path, compress=compress)
    return Path(path)


def publish(outputs: Mapping[Path, sitk.Image | str]) -> list[Path]:
    """Write images and texts (target -> content) all or nothing, in the given order (put the
    main output last): see :func:`atomic_paths`."""
    with atomic_paths(list(outputs)) as temps:
        for tmp, (target, content) in zip(temps, outputs.items()):
            if isinstance(content, str):
                tmp.write_text(content)
            else:
                save_image(content, tmp, target=target)
    return list(outputs)


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """:func:`csv_text` of ``rows``, written atomically."""
    return write_text(csv_text(rows), path)


def csv_text(rows: Sequence[dict]) -> str:
    """CSV with the union of keys in first-seen order (so ``case,dsc,...`` lead); floats to 6
    significant digits, NaN as "nan"."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buffer.getvalue()


def _csv_value(value):
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.6g}"
    return value
