"""Writes that are all or nothing: a temporary file (or folder) beside the target, checked,
flushed to disk and only then renamed onto it; several outputs of one job together
(:func:`atomic_paths`), a whole folder (:func:`atomic_folder`). A stop signal waits for the
renames; any failure before them leaves the earlier state exactly as it was. Temporary files
of a killed earlier run are removed the next time the same target is written.
"""

from __future__ import annotations

import glob
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from petseg.errors import OutputError
from petseg.frontend import deferred_signals
from petseg.layout import image_suffix

log = logging.getLogger(__name__)

PARTIAL = ".partial"
MIN_FREE_BYTES = 1 << 20  # refuse to start a write with less than 1 MiB free


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
