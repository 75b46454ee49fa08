"""Reading a study while the process starts: the CT and PET decompressed in a background
thread while torch and MONAI import and the folds load (most of a fresh process's time to
its first window), taken up by the first stage that needs them.

The thread leaves file descriptor 2 alone (:func:`petseg.io.read_images` with
``quiet=False``): a redirection there would swallow what the starting process prints. It is
a daemon, so a job stopped meanwhile does not wait for it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import SimpleITK as sitk

from petseg.errors import PetsegError
from petseg.io import read_image, read_images
from petseg.settings import Settings

log = logging.getLogger(__name__)


class ReadAhead:
    """The CT (optional) and PET files of one study, being read since construction."""

    def __init__(self, ct: str | Path | None, pet: str | Path) -> None:
        self.ct, self.pet = (None if ct is None else Path(ct)), Path(pet)
        self._done = threading.Event()
        self._images: tuple[sitk.Image | None, sitk.Image] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._read, name="petseg-read-ahead", daemon=True).start()

    def _read(self) -> None:
        try:
            requests = [(self.pet, "PET")] if self.ct is None else [(self.ct, "CT"), (self.pet, "PET")]
            images = read_images(requests, quiet=False)
            self._images = (None, images[0]) if self.ct is None else (images[0], images[1])
        except BaseException as err:  # handed to the taker, raised there
            self._error = err
        finally:
            self._done.set()

    def images(self, *, settings: Settings) -> tuple[sitk.Image | None, sitk.Image]:
        """The images the model takes (a PET-only model's: the PET alone, whatever became of
        the CT), as :func:`petseg.preprocess.read_inputs` gives them; the read's error here."""
        self._done.wait()
        if self._error is None:
            ct, pet = self._images
            return (ct if settings.uses_ct else None), pet
        if not settings.uses_ct and isinstance(self._error, PetsegError) and self.ct is not None:
            log.debug("a PET-only model: %s not read", self.ct)
            return None, read_image(self.pet, role="PET")  # the CT's failure is not this model's
        raise self._error
