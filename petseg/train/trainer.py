"""One fold's training machinery: the trainer (network, optimizer, cosine schedule, AMP
scaler, loss, what resume restores), the loader, one epoch, and validation with the
challenge metrics."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from petseg.atomic import atomic_path
from petseg.errors import InputError, ModelError
from petseg.inference import FoldAverage, foreground_probability, resolve_precision
from petseg.metrics import case_metrics
from petseg.model import ModelFolder, build_network, load_state_dict
from petseg.settings import Settings
from petseg.torchrun import local_world_size
from petseg.train.config import TrainConfig
from petseg.train.distributed import Dist

log = logging.getLogger("petseg.train.loop")


@dataclass
class Trainer:
    """What one fold's epochs need; ``model`` is ``network`` wrapped in DDP under torchrun."""

    network: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: torch.dtype | None
    loss_fn: Any
    start_epoch: int = 0
    best: float = -1.0
    best_epoch: int = -1
    error_clicks: Any = None  # train.clicks.ErrorClicks for a click-aware model with --error-clicks

    def state(self, *, epoch: int, recipe: dict[str, Any], loader_workers: int = 0) -> dict:
        """Everything resume needs, as tensors, numbers and strings (loadable with weights_only),
        and the recipe it was trained with (a resume checks it)."""
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "recipe": recipe,
            "loader_workers": loader_workers,
        }

    def load(self, state: dict, *, source: Path) -> None:
        load_state_dict(self.network, state["model"], source=source, against="this run's network")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler.is_enabled() and state["scaler"]:  # from bf16/fp32 to fp16: a fresh loss scale
                self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ModelError(source, f"optimizer state does not fit this run ({type(err).__name__}: {err})") from None
        self.start_epoch, self.best = state["epoch"] + 1, state["best"]
        self.best_epoch = int(state.get("best_epoch", -1))

    def extend_schedule(self, *, epochs: int) -> None:
        """Resumed with more epochs than planned: from the resumed epoch on, the schedule is the
        one a run planned for ``epochs`` would have had (cosine from --lr at epoch 0 to 0 at
        epoch ``epochs``; a completed run so goes on at a small learning rate, not at 0). The
        scheduler's state in last.pt carries the new plan to later resumes."""
        for group in self.optimizer.param_groups:  # the new plan's value now; the scheduler goes on from it
            group["lr"] = group["initial_lr"] * (1 + math.cos(math.pi * self.start_epoch / epochs)) / 2
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=epochs, eta_min=0.0, last_epoch=self.start_epoch - 1
        )


def save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def seed_epoch(config: TrainConfig, epoch: int, transform) -> None:
    """Every random stream of an epoch depends on (seed, fold, epoch) alone, so a resumed
    run draws exactly what an uninterrupted one would."""
    seed = (config.seed * 1_000_003 + config.fold * 10_007 + epoch) % (2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    transform.set_random_state(seed=seed)


def build_trainer(config: TrainConfig, *, device: torch.device, dist: Dist) -> Trainer:
    from monai.losses import GeneralizedDiceFocalLoss
    from monai.utils import set_determinism

    set_determinism(seed=config.seed + config.fold)  # also makes cuDNN deterministic
    network = build_network(config.network).to(device)
    if dist.world > 1 and config.sync_batchnorm:
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=0.0)
    autocast = resolve_precision(config.settings.precision, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)  # bf16 needs no scaling
    loss_fn = GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True, weight=list(config.focal_weight))
    trainer = Trainer(network, network, optimizer, scheduler, scaler, autocast, loss_fn)
    if config.error_clicks > 0:
        from petseg.train.clicks import ErrorClicks

        trainer.error_clicks = ErrorClicks(
            network,
            spacing=config.settings.target_spacing,
            sigma_mm=config.settings.click_sigma_mm,
            probability=config.error_clicks,
            autocast=autocast,
            scribbles=config.scribbles,
        )
    return trainer


def init_checkpoint(path: str | Path, fold: int) -> Path:
    """A state-dict file, or fold ``fold`` of a model folder (fine-tuning, e.g. from imported weights)."""
    path = Path(path)
    if path.is_dir():
        folder = ModelFolder.open(path)
        chosen = [f for f in folder.folds if f.fold == fold] or list(folder.folds[:1])
        return folder.path / chosen[0].file
    if not path.is_file():
        raise InputError(path, "initial weights not found")
    return path


def widened(state: dict[str, torch.Tensor], network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of a model with fewer input channels (a CT/PET model, for a click-aware one):
    the extra input channels get zero weights, so the new model starts as the old one."""
    target = network.state_dict()
    out = dict(state)
    for key, value in state.items():
        want = target.get(key)
        if want is None or value.ndim < 2 or value.ndim != want.ndim:
            continue
        if value.shape[1] < want.shape[1] and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]:
            grown = torch.zeros_like(want)
            grown[:, : value.shape[1]] = value
            out[key] = grown
            log.info("%s: input channels %d -> %d (the new ones start at zero)", key, value.shape[1], want.shape[1])
    return out


def loader_workers(config: TrainConfig, device: torch.device, environ: dict[str, str] | None = None) -> int:
    """Data-loader processes: ``config.num_workers``, else on CUDA the CPUs this process may
    use, shared by the GPUs of the node (torchrun's LOCAL_WORLD_SIZE), less one for the
    training loop, at most 12; on the CPU none (the network already takes every core).
    Measured in bench/train_throughput.py."""
    from petseg.frontend import available_cpus

    if config.num_workers is not None:
        return config.num_workers
    if device.type != "cuda":
        return 0
    per_gpu = available_cpus() // (local_world_size() if environ is None else local_world_size(environ))
    return max(0, min(per_gpu - 1, MAX_LOADER_WORKERS))


MAX_LOADER_WORKERS = 12  # nnU-Net's default per GPU; more rarely helps and costs host memory


def make_loader(config: TrainConfig, train_data: list[dict], transform, dist: Dist, *, device: torch.device):
    from monai.data import DataLoader, Dataset
    from torch.utils.data.distributed import DistributedSampler

    dataset = Dataset(train_data, transform=transform)
    workers = loader_workers(config, device)
    log.info("fold %d: %d data-loader worker(s)", config.fold, workers)
    sampler = None
    if dist.world > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=config.seed, drop_last=False
        )
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=workers,
        drop_last=len(train_data) >= config.batch_size * dist.world,
        persistent_workers=False,  # a new iterator per epoch: its random streams follow seed_epoch
    )
    return loader, sampler


def train_epoch(trainer: Trainer, loader, device: torch.device, dist: Dist, *, progress: bool = False) -> float:
    """One pass over the loader; the mean loss over all ranks. ``progress``: a bar over the
    steps (the epochs' bar is on a terminal)."""
    losses = []
    for batch in tqdm(loader, desc="steps", unit="batch", leave=False, disable=not progress, dynamic_ncols=True):
        x, y = batch["image"].to(device), batch["label"].to(device)
        if trainer.error_clicks is not None:
            x = trainer.error_clicks(x, y)
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=trainer.autocast, enabled=trainer.autocast is not None):
            loss = trainer.loss_fn(trainer.model(x), y)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        losses.append(float(loss.detach()))
    return float(np.mean([v for part in dist.gather(losses) for v in part]))


def validation_settings(settings: Settings) -> Settings:
    """The run's window and precision on the training network as it is (no folding, no copy)."""
    return dataclasses.replace(settings, fold_batchnorm=False, channels_last=False, tta=False, compile=False)


def validate(
    network: torch.nn.Module, cases: list[dict], *, settings: Settings, device: torch.device, dist: Dist = Dist()
) -> dict:
    """Sliding-window inference on the whole validation fold, split over the ranks; DSC, FPV
    and FNV per case (challenge definitions, on the network grid), gathered from all ranks:
    mean DSC over lesion-positive cases, mean FPV over negatives, mean FNV over positives."""
    network.eval()
    ensemble = FoldAverage([network], settings=validation_settings(settings))
    voxel_volume = float(np.prod(settings.target_spacing)) / 1000.0
    mine = []
    for case in cases[dist.rank :: dist.world]:
        image = case["image"]
        if settings.click_sigma_mm is not None:  # validated without clicks: the automatic use
            image = np.concatenate([image, np.zeros((2, *image.shape[1:]), image.dtype)])
        prob = foreground_probability(image, ensemble, device=device)
        m = case_metrics(case["label"][0] > 0.5, prob > 0.5, voxel_volume_ml=voxel_volume)
        mine.append((m.dsc, m.fpv_ml, m.fnv_ml))
    network.train()
    rows = np.array([r for part in dist.gather(mine) for r in part], float).reshape(-1, 3)
    positive = np.isfinite(rows[:, 0])

    def mean(values):
        return float(np.mean(values)) if len(values) else float("nan")

    return {
        "val_dsc": mean(rows[positive, 0]),
        "val_fnv_ml": mean(rows[positive, 2]),
        "val_fpv_ml": mean(rows[~positive, 1]),
        "val_cases": int(len(rows)),
    }
