"""petseg: PET/CT lesion segmentation (autoPET III residual UNet, 5-fold ensemble)."""

from petseg.api import segment
from petseg.errors import InputError, ModelError, PetsegError
from petseg.predictor import Predictor
from petseg.settings import Settings

__version__ = "0.1.0"

__all__ = ["segment", "Predictor", "Settings", "PetsegError", "InputError", "ModelError", "__version__"]
