"""One frozen dataclass holds every knob of preprocessing and inference.

The model folder's ``model.json`` provides the defaults that belong to the trained model
(spacing, intensity window, window size); callers override only what they need with
``dataclasses.replace`` or :meth:`Settings.with_overrides`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from petseg.documents import mismatch
from petseg.errors import ConfigError

# The paper's network (autoPET III, MONAI residual UNet): 19,223,525 trainable parameters.
PAPER_NETWORK: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 2,
    "out_channels": 2,
    "channels": [32, 64, 128, 256, 512],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "batch",
    "act": "PRELU",
}

CHANNELS = ("CT", "PET")  # network input order: 0 = CT, 1 = PET
CLICK_CHANNELS = ("tumor_clicks", "background_clicks")  # then, in click-aware models
PET_ONLY = ("PET",)  # the one input of a PET-only model (for studies without a usable CT)
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS = typing.get_args(Precision)
ResampleBackend = Literal["auto", "sitk", "torch"]
RESAMPLE_BACKENDS = typing.get_args(ResampleBackend)

# Field types, checked on construction (msgspec): NaN and infinities fail every bound.
Spacing = Annotated[float, msgspec.Meta(gt=0, le=100)]  # mm
HU = Annotated[float, msgspec.Meta(ge=-1e5, le=1e5)]
Window = Annotated[int, msgspec.Meta(ge=1, le=1024)]  # voxels of a sliding window
Share = Annotated[float, msgspec.Meta(ge=0, lt=1)]


def _field(default: Any, *, section: str | None = None, required: bool = False, outputs: bool = True) -> Any:
    """A field's default and what it is: its model.json section (None: not in model.json),
    whether a model must state it, whether it can change a study's outputs."""
    return dataclasses.field(default=default, metadata={"section": section, "required": required, "outputs": outputs})


@dataclass(frozen=True)
class Settings:
    """Preprocessing and inference parameters.

    Attributes:
        target_spacing: network grid spacing in mm (x, y, z).
        ct_window: CT clip range in HU, mapped linearly onto [0, 1].
        ct_fill_hu: HU used where the CT does not cover the PET grid.
        body_threshold_hu: voxels of the CT (on the PET grid) above this are "body";
            the crop is their bounding box plus ``body_margin_mm``.
        body_margin_mm: margin added around the body bounding box on each side.
        click_sigma_mm: None for a CT/PET model; for a click-aware model (input channels
            CT, PET, tumour clicks, background clicks) the Gaussian width of a click, mm.
        modalities: the images the model takes: ("CT", "PET"), or ("PET",) for a PET-only
            model (no CT is read, no body crop: the whole PET field of view). In model.json
            they are the "channels" key, without the click channels.
        roi_size: sliding-window size in voxels of the network grid.
        overlap: sliding-window overlap fraction.
        sw_batch_size: windows per network call.
        time_budget_s: if the first windows show that the ensemble would overrun this
            many seconds (from the start of the study), drop mirrorings, then folds (never
            below one), instead of timing out with no output. None = no budget.
        threshold: a voxel is lesion when the ensemble's mean foreground probability is
            strictly above this (0.5 = the argmax of the two classes).
        max_clicks: points of each kind read from a clicks file (autoPET IV gives 10 clicks
            per kind; the rest are skipped with a WARNING); None reads all of them, as
            scribbles need (autoPET V: runs of tens of adjacent points, accumulating).
        click_removal: a background click on a predicted lesion removes that lesion (its
            18-connected component on the PET grid gets probability 0) unless a tumour click
            lies in it too; off, background clicks only reach the network as its input.
        device: "auto", "cpu", "cuda" or "cuda:N" ("gpu[:N]" is read as "cuda[:N]").
        precision: "auto" (bf16 where the device supports it, fp16 on older GPUs), "fp32"
            (the reference), "bf16" or "fp16": autocast for the network only.
        resample_backend: where preprocessing and restore run: "sitk" (SimpleITK on the
            CPU, the reference), "torch" (torch on the predictor's device, the same steps and
            record), or "auto": torch on CUDA, SimpleITK on the CPU (where it is faster).
        channels_last: run the network in channels-last 3D memory layout.
        fold_batchnorm: fold BatchNorm into the preceding convolution for inference.
        compile: wrap the ensemble in ``torch.compile``.
        tta: average over the 8 mirrorings of each window (test-time augmentation).
        progress: show a tqdm bar over sliding windows (on a terminal only).
        uncertainty: also compute the standard deviation of the folds' probabilities
            (fold disagreement), from running sums of p and p^2 in the one pass.
        fold_votes: also keep each fold's own probability (one map per fold on the network
            grid: memory grows by the fold count) to tell, per lesion, how many folds' own
            masks overlap it.
    """

    # what a model folder fixes: model.json's "preprocessing" section
    target_spacing: tuple[Spacing, Spacing, Spacing] = _field((2.0, 2.0, 2.0), section="preprocessing", required=True)
    ct_window: tuple[HU, HU] = _field((-1024.0, 1024.0), section="preprocessing", required=True)
    ct_fill_hu: HU = _field(-1024.0, section="preprocessing", required=True)
    body_threshold_hu: HU = _field(-500.0, section="preprocessing", required=True)
    body_margin_mm: Annotated[float, msgspec.Meta(ge=0, le=1000)] = _field(10.0, section="preprocessing", required=True)
    click_sigma_mm: Annotated[float, msgspec.Meta(gt=0, le=1000)] | None = _field(None, section="preprocessing")
    modalities: tuple[str, ...] = _field(CHANNELS)  # model.json: "channels" (see from_model_sections)
    # ... and its "inference" section (a run may change the window batch, the time budget, the
    # threshold and click removal; the others are how the model was validated)
    roi_size: tuple[Window, Window, Window] = _field((192, 192, 192), section="inference", required=True)
    overlap: Share = _field(0.5, section="inference")
    sw_batch_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = _field(2, section="inference", outputs=False)
    time_budget_s: Annotated[float, msgspec.Meta(gt=0, le=1e7)] | None = _field(None, section="inference")
    threshold: Share = _field(0.5, section="inference")
    max_clicks: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = _field(10, section="inference")
    click_removal: bool = _field(True, section="inference")
    # how one run executes
    device: str = _field("auto", outputs=False)
    precision: Precision = _field("auto")
    # both backends give the same masks (identical on identity directions): like the device, not
    # part of a run's key, so a resumed run keeps what the other backend wrote
    resample_backend: ResampleBackend = _field("auto", outputs=False)
    channels_last: bool = _field(True)
    fold_batchnorm: bool = _field(True)
    compile: bool = _field(False, outputs=False)
    tta: bool = _field(False)
    progress: bool = _field(False, outputs=False)
    # what it computes beside the mean probability, for the outputs asked for
    uncertainty: bool = _field(False)
    fold_votes: bool = _field(False)

    def __post_init__(self) -> None:
        for name, kind in _field_types().items():  # types and ranges: one line naming field and value
            value = getattr(self, name)
            try:
                checked = msgspec.convert(value, type=kind, strict=True)
            except msgspec.ValidationError as err:
                raise ConfigError(*mismatch(err, value, prefix=name)) from None
            object.__setattr__(self, name, checked)  # lists become tuples, ints floats
        lo, hi = self.ct_window
        if not hi > lo:
            raise ConfigError("ct_window", f"must be (low, high) with high > low, got {self.ct_window!r}")
        object.__setattr__(self, "device", check_device(self.device))  # "gpu" -> "cuda"
        if self.modalities not in (CHANNELS, PET_ONLY):
            raise ConfigError(
                "modalities",
                f"must be ['CT', 'PET'] or ['PET'] (then any click channels), got {list(self.modalities)!r}",
            )
        if self.modalities == PET_ONLY and self.click_sigma_mm is not None:
            raise ConfigError("click_sigma_mm", "click-aware models take CT and PET, not PET alone")

    @property
    def channels(self) -> tuple[str, ...]:
        """The network's input channels, in order."""
        return self.modalities if self.click_sigma_mm is None else self.modalities + CLICK_CHANNELS

    @property
    def uses_ct(self) -> bool:
        return "CT" in self.modalities

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the given non-None fields replaced (tuples coerced from lists)."""
        clean = {k: _as_field_value(v) for k, v in overrides.items() if v is not None}
        unknown = set(clean) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError("settings", f"unknown: {sorted(unknown)}")
        return dataclasses.replace(self, **clean)

    @classmethod
    def from_model_sections(cls, sections: Mapping[str, Mapping[str, Any]]) -> Settings:
        """Settings from model.json's (or train.json's) "preprocessing" and "inference"
        sections: every key a field (an explicit null only where the field may be None).
        Raises KeyError for a missing section, ConfigError for unknown keys or bad values."""
        values = {**sections["preprocessing"], **sections["inference"]}
        channels = values.pop("channels", None)  # the modalities, then click channels by click_sigma_mm
        if channels is not None:
            values["modalities"] = tuple(c for c in channels if c not in CLICK_CHANNELS)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError("settings", f"unknown: {sorted(unknown)}")
        settings = cls(**values)
        if channels is not None and list(channels) != list(settings.channels):
            hint = (
                " (click channels need click_sigma_mm)"
                if settings.click_sigma_mm is None and len(channels) > len(settings.channels)
                else ""
            )
            raise ConfigError(
                "channels", f"input channels {list(channels)!r} do not match {list(settings.channels)!r}{hint}"
            )
        return settings

    def model_sections(self) -> dict[str, dict[str, Any]]:
        """model.json's (and train.json's) "preprocessing" and "inference" sections, JSON-ready,
        every key of each, with the network's input channels (a model fact, not a field)."""
        sections = {
            section: {k: _as_json(getattr(self, k)) for k in keys}
            for section, keys in (("preprocessing", self.PREPROCESSING_KEYS), ("inference", self.INFERENCE_KEYS))
        }
        sections["preprocessing"]["channels"] = list(self.channels)
        return sections


def _keys(section: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Settings) if f.metadata.get("section") == section)


# declared once, per field: which model.json section it belongs to, whether a model must state
# it, whether it changes outputs (a run's key in its manifest leaves out those that do not)
Settings.PREPROCESSING_KEYS = _keys("preprocessing")
Settings.INFERENCE_KEYS = _keys("inference")
Settings.REQUIRED_KEYS = tuple(f.name for f in dataclasses.fields(Settings) if f.metadata.get("required"))
Settings.RUNTIME_ONLY = tuple(f.name for f in dataclasses.fields(Settings) if not f.metadata.get("outputs", True))


@functools.cache
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings, include_extras=True)


def check_device(name: str) -> str:
    """The device name, lower-cased, if it is "auto", "cpu", "cuda" or "cuda:N"; "gpu" and
    "gpu:N" (TotalSegmentator's spelling) mean "cuda" and "cuda:N"."""
    name = str(name or "auto").strip().lower()
    if not re.fullmatch(r"auto|cpu|(cuda|gpu)(:\d+)?", name):
        raise ConfigError("device", f"must be 'auto', 'cpu', 'cuda[:N]' or 'gpu[:N]', got {name!r}")
    return re.sub(r"^gpu", "cuda", name)


def resolve_backend(name: str, device) -> str:
    """The resampling backend a run uses: "sitk" or "torch" as asked; "auto" is torch when
    ``device`` (a torch.device, a name, or None for the CPU) is a CUDA device, else sitk."""
    if name not in RESAMPLE_BACKENDS:
        raise ConfigError("resample_backend", f"must be one of {', '.join(RESAMPLE_BACKENDS)}, got {name!r}")
    if name != "auto":
        return name
    return "torch" if str(device or "cpu").startswith("cuda") else "sitk"


def _as_field_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _as_json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
