"""One schema per external document, checked before any work is done with it.

Documents petseg reads (model.json, train.json, splits, run-manifest lines, clicks files,
the training state in ``last.pt``) are parsed in two steps: a safe parse into plain Python
values (:func:`petseg.documents.read_json`), then :func:`petseg.documents.convert` into the
document's typed schema below (``msgspec`` checks types, ranges and known keys). Either
step fails with one line naming the file, the key and the value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

# a finite float: NaN fails every comparison and +-inf fails the bounds
Finite = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]
Positive = Annotated[float, msgspec.Meta(gt=0, le=1e300)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-fA-F]{64}$")]


# --- the documents ----------------------------------------------------------------------------

Width = Annotated[int, msgspec.Meta(ge=1, le=4096)]
Stride = Annotated[int, msgspec.Meta(ge=1, le=8)]


class UNetKwargs(msgspec.Struct, forbid_unknown_fields=True):
    """``monai.networks.nets.UNet``'s arguments as model.json stores them."""

    spatial_dims: Literal[3]
    in_channels: Annotated[int, msgspec.Meta(ge=1, le=64)]
    out_channels: Literal[2]  # background, lesion: the foreground probability is channel 1
    channels: Annotated[list[Width], msgspec.Meta(min_length=2, max_length=10)]
    strides: Annotated[
        list[Stride | Annotated[list[Stride], msgspec.Meta(min_length=3, max_length=3)]],
        msgspec.Meta(min_length=1, max_length=9),
    ]
    kernel_size: Annotated[int, msgspec.Meta(ge=1, le=15)] | list[Annotated[int, msgspec.Meta(ge=1, le=15)]] = 3
    up_kernel_size: Annotated[int, msgspec.Meta(ge=1, le=15)] | list[Annotated[int, msgspec.Meta(ge=1, le=15)]] = 3
    num_res_units: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0
    act: str | list[Any] = "PRELU"
    norm: str | list[Any] = "INSTANCE"
    dropout: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    bias: bool = True
    adn_ordering: str = "NDA"

    def __post_init__(self) -> None:
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(f"strides {self.strides} must have one entry fewer than channels {self.channels}")

    def total_stride(self) -> tuple[int, int, int]:
        """The downsampling along each axis (a level's stride may be one number or one per axis)."""
        total = [1, 1, 1]
        for stride in self.strides:
            for axis in range(3):
                total[axis] *= stride if isinstance(stride, int) else stride[axis]
        return tuple(total)

    def misfit(self, size) -> str | None:
        """None when every axis of a window of ``size`` is a multiple of the total stride (the
        skip connections line up), else the stride as an error line says it."""
        total = self.total_stride()
        if all(n % s == 0 for n, s in zip(size, total)):
            return None
        return str(total[0]) if len(set(total)) == 1 else str(list(total))


class NetworkSection(msgspec.Struct, forbid_unknown_fields=True):
    class_: str = msgspec.field(name="class")
    kwargs: UNetKwargs
    parameters: NonNegative | None = None


class FoldEntry(msgspec.Struct, forbid_unknown_fields=True):
    fold: Annotated[int, msgspec.Meta(ge=0, le=999)]
    file: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    sha256: Sha256


class ModelDocument(msgspec.Struct, forbid_unknown_fields=True):
    """model.json; the two sections' keys are Settings fields (checked by Settings)."""

    format: str
    network: NetworkSection
    preprocessing: dict[str, Any]
    inference: dict[str, Any]
    folds: Annotated[list[FoldEntry], msgspec.Meta(min_length=1, max_length=100)]
    description: str = ""
    imported_from: dict[str, str] | None = None
    training: dict[str, Any] | None = None  # the recipe of an assembled run (its train.json)
    metadata: Any = None  # the user's own (a licence, a citation): kept, never read


class TrainDocument(msgspec.Struct, forbid_unknown_fields=True):
    """A training run's train.json: the network, the sections model.json will get, and the
    run's training recipe (absent in runs of older versions)."""

    network: UNetKwargs
    preprocessing: dict[str, Any]
    inference: dict[str, Any]
    training: dict[str, Any] | None = None


CaseName = Annotated[str, msgspec.Meta(min_length=1)]


class Split(msgspec.Struct):  # nnU-Net tools may add keys (e.g. "test")
    train: Annotated[list[CaseName], msgspec.Meta(min_length=1)]
    val: Annotated[list[CaseName], msgspec.Meta(min_length=1)]


Splits = Annotated[list[Split], msgspec.Meta(min_length=1)]


class InputStamp(msgspec.Struct, forbid_unknown_fields=True):
    """What identifies an input file's content cheaply: size, mtime and a hash of its ends."""

    size: NonNegative
    mtime_ns: int
    digest: str


FILE_NAME = r"^(?!\.\.?$)[^/\\\x00]+$"  # a plain name inside a folder: no path, no NUL, not . or ..
FileName = Annotated[str, msgspec.Meta(pattern=FILE_NAME)]


def is_file_name(name: str) -> bool:
    return re.fullmatch(FILE_NAME, name) is not None


class CaseEntry(msgspec.Struct):
    """One line of ``petseg-run.jsonl``; fields a newer petseg adds are ignored."""

    case: Annotated[str, msgspec.Meta(min_length=1)]
    status: Literal["done", "failed", "skipped"]
    run_key: str = ""
    outputs: list[FileName] = []
    clicks: str | None = None
    inputs: dict[str, InputStamp] = {}
    message: str = ""


class ClickPoint(msgspec.Struct):  # Grand Challenge's "Multiple points" entries carry more keys
    name: Literal["tumor", "background"]
    point: tuple[Finite, Finite, Finite]


class ClicksDocument(msgspec.Struct):
    points: list[ClickPoint]


class TrainingState(msgspec.Struct, forbid_unknown_fields=True):
    """``fold_K/last.pt``: everything a resumed run needs (tensors inside the dicts)."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    epoch: NonNegative
    best: Finite
    best_epoch: int = -1
    recipe: dict[str, Any] | None = None  # TrainConfig.recipe() and the fold's split digest
    loader_workers: NonNegative | None = None
    config: dict[str, Any] | None = None  # written by petseg before the recipe was recorded
