"""Reading images (with their checks) and writing outputs that cannot lie.

A write goes to a temporary file beside the target, is checked (not empty; an image must
read back), flushed to disk, and only then renamed onto the target. Several outputs of one
job can be published together (:func:`atomic_paths`): all or none. Temporary files of a
killed earlier run are removed the next time the same target is written.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import logging
import math
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from petseg.checks import check_geometry
from petseg.errors import InputError, OutputError, is_out_of_memory
from petseg.frontend import deferred_signals
from petseg.imagefiles import check_header
from petseg.layout import image_suffix
from petseg.nifti import check_nifti_data
from petseg.schemas import regular_file

log = logging.getLogger(__name__)

PARTIAL = ".partial"
MIN_FREE_BYTES = 1 << 20  # refuse to start a write with less than 1 MiB free


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
    try:
        with _quiet_native_stderr():
            image = reader.Execute()
    except RuntimeError as err:
        if is_out_of_memory(err):
            raise InputError(
                path, f"out of memory while reading {' x '.join(map(str, reader.GetSize()))} voxels"
            ) from None
        raise InputError(
            path, f"cannot be read as an image (truncated, corrupt or not an image file{_detail(err)})"
        ) from None
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(target: Path) -> None:
    """Remove temporary files and folders of ``target`` left by a killed run (their writer
    process is gone); a folder a killed swap had moved aside is put back if ``target`` is gone."""
    for stale in sorted(target.parent.glob(f".{glob.escape(target.name)}.*{PARTIAL}*")):
        parts = stale.name[len(target.name) + 2 :].split(".")
        if not (parts and parts[0].isdigit() and not _pid_alive(int(parts[0]))):
            continue
        if stale.name.endswith(f"{PARTIAL}.old") and not target.exists() and not target.is_symlink():
            os.rename(stale, target)
            log.warning("%s: restored the earlier folder, which an interrupted run had moved aside", target)
        elif stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, left by an interrupted run", stale)
        else:
            stale.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted run", stale)


def _temporary_name(target: Path, tag: str = "") -> Path:
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL}{tag}"


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """A new folder beside ``target`` to fill; when the block succeeds it replaces ``target``
    (an existing one is moved aside, the new one renamed in, the old one removed; stop signals
    wait for both renames). On any failure, an exception or a signal the front end turns into
    one, the new folder is removed and ``target`` is left exactly as it was. A ``target``
    that is a link to a folder has that folder replaced; a mount point cannot be swapped."""
    target = Path(os.path.abspath(target))  # the process may stand inside the folder it replaces
    if target.is_symlink() and target.is_dir():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise OutputError(target, "is a file; expected a folder")
    if target.is_dir() and os.path.ismount(target):
        raise OutputError(target, "is a mount point, which cannot be replaced whole: give a folder inside it")
    _prepare_target(target, folder=True)
    staging = _temporary_name(target)
    staging.mkdir()
    aside, swapped = None, False
    try:
        yield staging
        with deferred_signals():
            if target.exists():
                aside = _temporary_name(target, ".old")
                os.rename(target, aside)
            os.rename(staging, target)
            swapped = True
        _fsync(target.parent)
    except OSError as err:
        raise OutputError(target, f"write failed ({err.strerror or err})") from None
    finally:
        if not swapped and aside is not None and aside.exists() and not target.exists():
            os.rename(aside, target)  # put the old folder back
        shutil.rmtree(staging, ignore_errors=True)
        if swapped and aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def check_output_folder(folder: str | Path) -> None:
    """Fail early, before any network work, when ``folder`` cannot hold outputs: it or an
    ancestor is a file, or the first existing ancestor is not writable. Creates nothing."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(existing, "is a file; expected an output folder")
    if not os.access(existing, os.W_OK):
        raise OutputError(existing, "output folder is not writable (permission denied)")


def _prepare_target(path: Path, *, folder: bool = False) -> None:
    if path.is_dir() and not folder:
        raise OutputError(path, "is a folder; cannot write a file there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(path.parent, "is a file; expected an output folder") from None
    except OSError as err:
        raise OutputError(path.parent, f"cannot create the output folder ({err.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(path.parent, "output folder is not writable (permission denied)")
    free = shutil.disk_usage(path.parent).free
    if free < MIN_FREE_BYTES:
        raise OutputError(path.parent, f"no space left for outputs ({free} bytes free)")
    remove_stale_partials(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_paths(paths: Sequence[str | Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``paths``; when the block succeeds, each is checked (not empty),
    flushed to disk and renamed onto its target, in the given order (put the main output
    last). On any failure every temporary file and every target already renamed by this call
    is removed, so the job leaves all of its outputs or none."""
    targets = [Path(p) for p in paths]
    for target in targets:
        _prepare_target(target)
    temps = [_temporary_name(t, image_suffix(t) or t.suffix) for t in targets]
    published: list[Path] = []
    try:
        yield temps
        for tmp, target in zip(temps, targets):
            if not tmp.is_file() or tmp.stat().st_size == 0:
                raise OutputError(target, "write failed: nothing was written (disk full?)")
            _fsync(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
        with deferred_signals():  # a stop waits for the renames: all of them, then it is done
            for tmp, target in zip(temps, targets):
                os.replace(tmp, target)
                published.append(target)
        for folder in {t.parent for t in targets}:
            _fsync(folder)
    except BaseException as err:
        if len(published) < len(targets):  # once all are in place the job is done: never undone
            for target in published:
                target.unlink(missing_ok=True)
        if isinstance(err, OSError):
            named = dict(zip(map(str, temps), targets)).get(str(err.filename), err.filename or targets[-1])
            raise OutputError(named, f"write failed ({err.strerror or err})") from None
        raise
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """One temporary path for ``path``; see :func:`atomic_paths`."""
    with atomic_paths([path]) as (tmp,):
        yield tmp


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
