"""Sliding-window ensemble inference: one pass over the windows, every fold on each window.

The fast path (each piece switchable in ``Settings``; fp32 without it is the reference):
autocast to bf16/fp16, channels-last 3D, BatchNorm folded into convolutions, all folds
(and mirrorings) run on a window batch while it is on the device, one running average of
the foreground probability. Out-of-memory errors step down the window batch, then
aggregate on the CPU, then run on the CPU. A time budget drops mirrorings, then folds.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from petseg.errors import ConfigError, ModelError
from petseg.settings import Settings, check_device
from petseg.stages import EnsembleMaps

log = logging.getLogger(__name__)

# mirrorings of a (B, C, X, Y, Z) window: identity, each axis, each pair, all three
MIRRORS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


def resolve_device(name: str) -> torch.device:
    """ "auto" -> CUDA when available, else CPU (the predictor's first line says which). A CUDA
    request without CUDA falls back to CPU with a warning."""
    name = check_device(name)
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    if name != "auto":
        log.warning("--device %s: CUDA is not available here, running on the CPU", name)
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device_type: str) -> torch.dtype | None:
    """Autocast dtype for ``name`` on a device type, for inference and training alike; None
    means fp32. "auto": bf16 where the device has it natively (CUDA Ampere and newer, CPUs with
    AVX512-BF16/AMX), fp16 on older GPUs (training then scales the loss), else fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if device_type == "cuda":  # auto
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def fold_batchnorm(network: torch.nn.Module) -> torch.nn.Module:
    """Fold every BatchNorm that directly follows a convolution in a MONAI ``Convolution``
    block (ordering N first, as in the UNet) into that convolution. Eval mode only."""
    from monai.networks.blocks import Convolution
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for block in network.modules():
        if not isinstance(block, Convolution) or "adn" not in block._modules:
            continue
        adn = block.adn
        order = list(adn._modules)
        if not order or order[0] != "N" or not isinstance(adn.N, torch.nn.modules.batchnorm._BatchNorm):
            continue
        block.conv = fuse_conv_bn_eval(block.conv, adn.N, transpose=isinstance(block.conv, torch.nn.ConvTranspose3d))
        adn.N = torch.nn.Identity()
        folded += 1
    log.debug("folded %d BatchNorm layers", folded)
    return network


def check_compiler() -> None:
    """torch.compile builds C++ (CPU) or Triton (CUDA) kernels: both need a C compiler. The
    Grand Challenge image has none, on purpose (g++ would add 374 MB, and every job starts
    with an empty compile cache, so compiling never pays back there)."""
    if shutil.which("g++") is None or shutil.which("gcc") is None:
        raise ConfigError("compile", "needs a C/C++ compiler (gcc, g++), which this environment lacks; run without it")


def prepare_network(network: torch.nn.Module, *, settings: Settings) -> torch.nn.Module:
    """Eval mode, BatchNorm folded, channels-last, optionally compiled; a copy whenever
    anything is changed, so the caller's module stays as it was."""
    if settings.fold_batchnorm or settings.channels_last:
        network = copy.deepcopy(network)
    network = network.eval()
    if settings.fold_batchnorm:
        network = fold_batchnorm(network)
    if settings.channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    if settings.compile:
        check_compiler()
        network = torch.compile(network)
    return network


def window_count(shape: Sequence[int], settings: Settings) -> int:
    """Number of sliding windows MONAI will use for an image of ``shape`` (X, Y, Z)."""
    total = 1
    for size, roi in zip(shape, settings.roi_size):
        if size <= roi:
            continue
        interval = max(1, int(roi * (1 - settings.overlap)))
        total *= math.ceil((size - roi) / interval) + 1
    return total


@dataclass
class Budget:
    """Projects the ensemble's run time from the windows done so far."""

    deadline: float  # time.monotonic() by which the study must be done
    total_calls: int  # window batches in this study
    calls: int = 0
    pass_seconds: float = 0.0  # mean seconds of one (fold, mirroring) pass over a window batch


class FoldAverage(torch.nn.Module):
    """Maps a window batch to the folds' mean foreground probability, shape (B, 1, ...).

    Averaging probabilities (softmax per fold) rather than logits keeps each fold's vote
    bounded; only the foreground channel is kept, which halves what is blended and restored.
    """

    def __init__(self, networks: Sequence[torch.nn.Module], *, settings: Settings | None = None) -> None:
        super().__init__()
        if not networks:
            raise ModelError("networks", "at least one network is needed")
        self.settings = settings or Settings(fold_batchnorm=False, channels_last=False)
        self.networks = torch.nn.ModuleList([prepare_network(n, settings=self.settings) for n in networks])
        self.reset()

    def reset(self, budget: Budget | None = None) -> None:
        """Before each study: all folds and mirrorings again, and a new budget."""
        self.active_folds = len(self.networks)
        self.mirrors: tuple[tuple[int, ...], ...] = MIRRORS if self.settings.tta else MIRRORS[:1]
        self.budget: Budget | None = budget

    def forward(self, window: torch.Tensor) -> dict[str, torch.Tensor]:
        """The window batch's maps by name: "mean" (B, 1, ...) always, "variance" (B, 1, ...)
        with ``settings.uncertainty``, "folds" (B, n, ...) with ``settings.fold_votes``."""
        start = time.perf_counter()
        dtype = resolve_precision(self.settings.precision, window.device.type)
        if self.settings.channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        stats = _FoldStats(self.settings, folds=len(self.networks), mirrors=len(self.mirrors))
        for network in self.networks[: self.active_folds]:
            stats.add(self._fold_sum(network, window, dtype))
        if self.budget is not None:
            self._check_budget(time.perf_counter() - start, stats.passes)
        return stats.maps()

    def _fold_sum(self, network: torch.nn.Module, window: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        """One fold's foreground probability summed over the mirrorings."""
        total = None
        for flips in self.mirrors:
            x = window.flip(flips) if flips else window
            with torch.autocast(window.device.type, dtype=dtype, enabled=dtype is not None):
                logits = network(x)
            if logits.ndim != x.ndim or logits.shape[1] != 2 or logits.shape[2:] != x.shape[2:]:
                raise ModelError(
                    type(network).__name__,
                    f"returned shape {tuple(logits.shape)} for input {tuple(x.shape)}; expected (B, 2, ...)",
                )
            probability = torch.softmax(logits.float(), dim=1)[:, 1:2]
            probability = probability.flip(flips) if flips else probability
            total = probability if total is None else total + probability
        return total

    def _check_budget(self, seconds: float, passes: int) -> None:
        budget = self.budget
        budget.calls += 1
        budget.pass_seconds += (seconds / passes - budget.pass_seconds) / budget.calls
        left_calls = budget.total_calls - budget.calls
        left_seconds = budget.deadline - time.monotonic()
        if left_calls <= 0:
            return

        def projected() -> float:
            return left_calls * budget.pass_seconds * self.active_folds * len(self.mirrors)

        if projected() > left_seconds and len(self.mirrors) > 1:
            self.mirrors = MIRRORS[:1]
            log.warning(
                "time budget: dropping test-time mirroring (%.0f s left for %d window batches)",
                left_seconds,
                left_calls,
            )
        if projected() > left_seconds and self.active_folds > 1:
            keep = max(1, int(left_seconds // (left_calls * budget.pass_seconds)))
            if keep < self.active_folds:
                log.warning(
                    "time budget: using %d of %d folds for the remaining %d window batches "
                    "(%.0f s left, %.2f s per fold and batch)",
                    keep,
                    len(self.networks),
                    left_calls,
                    left_seconds,
                    budget.pass_seconds,
                )
                self.active_folds = keep


class _FoldStats:
    """The folds' maps of one window batch, accumulated fold by fold: the sum of every
    (fold, mirroring) probability for the mean; shifted running sums of each fold's probability
    and its square for the variance (no per-fold volume kept, no float32 cancellation); each
    fold's own probability for the votes."""

    def __init__(self, settings: Settings, *, folds: int, mirrors: int) -> None:
        self.settings, self.folds, self.mirrors = settings, folds, mirrors
        self.total = self.reference = self.shifts = self.squares = None
        self.passes, self.active = 0, 0
        self.own: list[torch.Tensor] = []

    def add(self, fold_sum: torch.Tensor) -> None:
        self.total = fold_sum if self.total is None else self.total + fold_sum
        self.passes += self.mirrors
        self.active += 1
        fold_p = fold_sum / self.mirrors
        if self.settings.fold_votes:
            self.own.append(fold_p)
        if self.settings.uncertainty:
            self.reference = fold_p if self.reference is None else self.reference
            shift = fold_p - self.reference
            self.shifts = shift if self.shifts is None else self.shifts + shift
            self.squares = shift * shift if self.squares is None else self.squares + shift * shift

    def maps(self) -> dict[str, torch.Tensor]:
        mean = self.total / self.passes
        maps = {"mean": mean}
        if self.squares is not None:
            # the folds' variance per window; the sliding window then averages it over overlapping
            # windows (blending E[p^2] and E[p] instead would mix in the windows' own disagreement)
            shift_mean = self.shifts / self.active
            maps["variance"] = (self.squares / self.active - shift_mean * shift_mean).clamp_min(0.0)
        if self.settings.fold_votes:
            # a fold dropped by the time budget votes as the remaining folds' mean does
            maps["folds"] = torch.cat(self.own + [mean] * (self.folds - len(self.own)), dim=1)
        return maps


def oom_ladder(sw_batch_size: int, device: torch.device) -> list[tuple[int, torch.device, torch.device]]:
    """(window batch, network device, aggregation device) to try in order after out-of-memory."""
    sizes = []
    size = sw_batch_size
    while size >= 1:
        sizes.append(size)
        size //= 2
    if sizes[-1] != 1:
        sizes.append(1)
    cpu = torch.device("cpu")
    steps = [(s, device, device) for s in sizes]
    if device.type != "cpu":
        steps += [(1, device, cpu), (1, cpu, cpu)]
    return steps


def foreground_probability(
    image: np.ndarray, ensemble: FoldAverage, *, device: torch.device, deadline: float | None = None
) -> np.ndarray:
    """(C, X, Y, Z) network input -> (X, Y, Z) mean foreground probability, float32."""
    return ensemble_maps(image, ensemble, device=device, deadline=deadline).mean


def ensemble_maps(
    image: np.ndarray | torch.Tensor, ensemble: FoldAverage, *, device: torch.device, deadline: float | None = None
) -> EnsembleMaps:
    """(C, X, Y, Z) network input -> the ensemble's maps on that grid, with the ensemble's
    settings (window, overlap, window batch, precision, mirroring): the mean foreground
    probability; with ``settings.uncertainty`` the variance of the folds' probabilities
    (computed per window from running sums of p and p^2, averaged over overlapping windows);
    with ``settings.fold_votes`` each fold's own probability.

    On out-of-memory, retries down :func:`oom_ladder`, logging each step; never crashes for
    memory unless even the CPU run fails.
    """
    settings = ensemble.settings
    # a host array, or a tensor already on the device (the torch resampling backend)
    inputs = (image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image)))[None]
    steps = oom_ladder(settings.sw_batch_size, device)
    for attempt, (batch, sw_device, out_device) in enumerate(steps):
        if deadline is not None:
            calls = math.ceil(window_count(image.shape[1:], settings) / batch)
            ensemble.reset(Budget(deadline=deadline, total_calls=calls))
        else:
            ensemble.reset()
        ensemble.to(sw_device)
        if sw_device.type == "cpu" and inputs.device.type != "cpu":
            inputs = (
                inputs.cpu()
            )  # the last rung: the windows come from the host (the caller may still hold the device copy)
        try:
            with torch.inference_mode():
                output = sliding_window_inference(
                    inputs,
                    roi_size=settings.roi_size,
                    sw_batch_size=batch,
                    predictor=ensemble,
                    overlap=settings.overlap,
                    mode="constant",
                    sw_device=sw_device,
                    device=out_device,
                    progress=settings.progress and sys.stderr.isatty(),  # a bar in a log file is only redraws
                )
            maps = {key: value[0].float().cpu().numpy() for key, value in output.items()}
            return EnsembleMaps(maps["mean"][0], maps["variance"][0] if "variance" in maps else None, maps.get("folds"))
        except torch.OutOfMemoryError:
            if attempt + 1 == len(steps):
                raise
            if sw_device.type == "cuda":
                torch.cuda.empty_cache()
            nxt = steps[attempt + 1]
            log.warning(
                "out of memory (window batch %d, network on %s, aggregation on %s): retrying with "
                "window batch %d, network on %s, aggregation on %s",
                batch,
                sw_device,
                out_device,
                *nxt,
            )
    raise AssertionError("unreachable")
