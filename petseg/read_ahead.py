"""Reading a study while the process starts: the files a model takes decompressed in a
background thread while torch and MONAI import and the folds load (most of a fresh
process's time to its first window), handed to the first stage that needs them.

The thread leaves file descriptor 2 alone (:func:`petseg.io.read_images` with
``quiet=False``): a redirection there would swallow what the starting process prints. It is
not a daemon: a process that stops meanwhile (a signal, a failed check) waits for the read
in hand to end (seconds at most) rather than tear the thread down inside ITK, which aborts.
"""

from __future__ import annotations

import threading
from pathlib import Path

import SimpleITK as sitk

from petseg.io import read_images


class ReadAhead:
    """The PET, and the CT where the model takes one (``uses_ct``), of one study, being read
    since construction."""

    def __init__(self, ct: str | Path | None, pet: str | Path, *, uses_ct: bool = True) -> None:
        self.ct = None if ct is None or not uses_ct else Path(ct)
        self.pet = Path(pet)
        self._done = threading.Event()
        self._images: tuple[sitk.Image | None, sitk.Image] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._read, name="petseg-read-ahead").start()

    def _read(self) -> None:
        try:
            requests = [(self.pet, "PET")] if self.ct is None else [(self.ct, "CT"), (self.pet, "PET")]
            images = read_images(requests, quiet=False)
            self._images = (None, images[0]) if self.ct is None else (images[0], images[1])
        except BaseException as err:  # handed to the taker, raised there
            self._error = err
        finally:
            self._done.set()

    def covers(self, ct: str | Path | None, pet: str | Path) -> bool:
        """Is this the read of these files (a CT not taken by the model aside)?"""
        return Path(pet) == self.pet and (self.ct is None or (ct is not None and Path(ct) == self.ct))

    def images(self) -> tuple[sitk.Image | None, sitk.Image]:
        """(CT or None, PET) as :func:`petseg.preprocess.read_inputs` gives them, once: the
        images are the caller's from here on (the read's error is raised here)."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        if self._images is None:
            raise RuntimeError("the read-ahead's images were taken already")
        images, self._images = self._images, None
        return images
