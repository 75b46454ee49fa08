"""``train_fold``: setup, optional resume, epochs of random patches, validation with the
challenge metrics, checkpoints (written atomically; only rank 0 writes)."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petseg.errors import ConfigError, InputError, ModelError
from petseg.inference import FoldAverage, foreground_probability, resolve_precision
from petseg.io import atomic_path, write_text
from petseg.layout import BEST, CURVES, LAST, SPLITS_JSON, TRAIN_JSON, TRAIN_LOG, find_training_cases, fold_dir
from petseg.metrics import case_metrics
from petseg.model import ModelFolder, build_network, load_state_dict, model_sections, read_state_dict
from petseg.schemas import TrainingState, convert, regular_file
from petseg.settings import Settings
from petseg.train.config import TrainConfig
from petseg.train.data import cache_case, load_cached, load_splits, make_splits
from petseg.train.distributed import Dist, init_distributed
from petseg.train.plots import plot_curves
from petseg.train.transforms import train_transforms

log = logging.getLogger(__name__)

LOG_FIELDS = ["epoch", "loss", "lr", "val_dsc", "val_fpv_ml", "val_fnv_ml", "val_cases", "seconds"]


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
    error_clicks: Any = None  # train.clicks.ErrorClicks for a click-aware model with --error-clicks

    def state(self, *, epoch: int, config: TrainConfig) -> dict:
        """Everything resume needs, as tensors, numbers and strings (loadable with weights_only)."""
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "best": self.best,
            "config": {k: str(v) for k, v in asdict(config).items()},
        }

    def load(self, state: dict, *, source: Path) -> None:
        load_state_dict(self.network, state["model"], source=source)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ModelError(source, f"optimizer state does not fit this run ({type(err).__name__}: {err})") from None
        self.start_epoch, self.best = state["epoch"] + 1, state["best"]


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


def prepare_data(config: TrainConfig, dist: Dist) -> tuple[list[dict], list[dict]]:
    """Split, cache (rank 0; the others wait) and load this fold's training and validation cases."""
    out_dir = Path(config.out_dir)
    cases = find_training_cases(config.data_dir)
    if config.splits_file:
        splits = load_splits(config.splits_file, list(cases))
    else:
        splits = make_splits(list(cases), n_folds=config.n_folds, seed=config.seed)
    if config.fold >= len(splits):
        raise ConfigError("fold", f"{config.splits_file} has {len(splits)} folds, fold {config.fold} asked for")
    split = splits[config.fold]
    cache_dir = out_dir / "cache"
    t0 = time.perf_counter()
    if dist.main:  # rank 0 writes the run description and fills the cache
        fold_dir(out_dir, config.fold).mkdir(parents=True, exist_ok=True)
        write_text(json.dumps(splits, indent=1), out_dir / SPLITS_JSON)
        run_meta = {"network": config.network, **model_sections(config.settings)}
        write_text(json.dumps(run_meta, indent=1, allow_nan=False), out_dir / TRAIN_JSON)
        for case in split["train"] + split["val"]:
            cache_case(cases[case], cache_dir, config.settings)
    dist.barrier()
    train_data = [load_cached(cache_dir / f"{c}.npz", hot_suv=config.hot_suv) for c in split["train"]]
    val_data = [load_cached(cache_dir / f"{c}.npz") for c in split["val"]]
    log.info(
        "fold %d: %d train / %d val cases, cached in %.1f s (rank %d of %d)",
        config.fold,
        len(train_data),
        len(val_data),
        time.perf_counter() - t0,
        dist.rank,
        dist.world,
    )
    return train_data, val_data


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


def make_loader(config: TrainConfig, train_data: list[dict], transform, dist: Dist):
    from monai.data import DataLoader, Dataset
    from torch.utils.data.distributed import DistributedSampler

    dataset = Dataset(train_data, transform=transform)
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
        num_workers=config.num_workers,
        drop_last=len(train_data) >= config.batch_size * dist.world,
    )
    return loader, sampler


def train_epoch(trainer: Trainer, loader, device: torch.device, dist: Dist) -> float:
    """One pass over the loader; the mean loss over all ranks."""
    losses = []
    for batch in loader:
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


def train_fold(config: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> Path:
    """Train one fold; returns the folder with ``best.pt``, ``last.pt``, ``log.csv`` and ``curves.png``.

    ``resume`` continues from ``last.pt`` (weights, optimizer, scheduler, scaler, epoch, best
    score); with per-epoch seeding the continued run equals an uninterrupted one. ``stop_after``
    ends the run after that many epochs (a job with a wall-time limit; resume later).
    Under ``torchrun`` (WORLD_SIZE > 1) each rank trains on its share of every epoch (DDP),
    validation is split over the ranks and gathered, and only rank 0 writes.
    """
    dist, device = init_distributed(config.settings.device)
    run_fold = fold_dir(config.out_dir, config.fold)
    train_data, val_data = prepare_data(config, dist)
    trainer = build_trainer(config, device=device, dist=dist)
    transform = train_transforms(config)
    last_path, best_path, log_path = run_fold / LAST, run_fold / BEST, run_fold / TRAIN_LOG
    if resume and last_path.is_file():
        trainer.load(read_training_state(last_path, device=device), source=last_path)
        log.info("fold %d: resumed after epoch %d (best DSC %.4f)", config.fold, trainer.start_epoch - 1, trainer.best)
    else:
        if config.init_from is not None:
            source = init_checkpoint(config.init_from, config.fold)
            load_state_dict(trainer.network, widened(read_state_dict(source), trainer.network), source=source)
            log.info("fold %d: starting from %s", config.fold, source)
        if log_path.exists() and dist.main:
            log_path.unlink()
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        trainer.model = torch.nn.parallel.DistributedDataParallel(trainer.network, device_ids=ids)
    loader, sampler = make_loader(config, train_data, transform, dist)

    fh = writer = None
    if dist.main:
        new_log = not log_path.exists()
        fh = open(log_path, "a", newline="")
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        if new_log:
            writer.writeheader()
    try:
        trainer.model.train()
        last_epoch = config.epochs if stop_after is None else min(config.epochs, trainer.start_epoch + stop_after)
        for epoch in range(trainer.start_epoch, last_epoch):
            t_epoch = time.perf_counter()
            seed_epoch(config, epoch, transform)
            if sampler is not None:
                sampler.set_epoch(epoch)
            loss = train_epoch(trainer, loader, device, dist)
            row = {"epoch": epoch, "loss": loss, "lr": trainer.optimizer.param_groups[0]["lr"]}
            trainer.scheduler.step()
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                metrics = validate(trainer.network, val_data, settings=config.settings, device=device, dist=dist)
                row.update(metrics)
                score = metrics["val_dsc"] if not math.isnan(metrics["val_dsc"]) else 0.0
                if score > trainer.best:  # every rank sees the same gathered metrics, so agrees
                    trainer.best = score
                    if dist.main:
                        save_atomic(trainer.network.state_dict(), best_path)
            row["seconds"] = round(time.perf_counter() - t_epoch, 2)
            log.info("fold %d epoch %d: %s", config.fold, epoch, row)
            if dist.main:
                writer.writerow(row)
                fh.flush()
                save_atomic(trainer.state(epoch=epoch, config=config), last_path)
                if "val_dsc" in row:
                    plot_curves(log_path, run_fold / CURVES)
    finally:
        if fh is not None:
            fh.close()
    if dist.main and not best_path.is_file():  # stopped before the first validation
        save_atomic(trainer.network.state_dict(), best_path)
    dist.barrier()
    return run_fold


def read_training_state(path: Path, *, device: torch.device) -> dict:
    """``last.pt`` of a fold, checked: tensors, numbers and strings only (``weights_only``: a
    crafted file runs no code), and the fields a resumed run needs. One line naming the file
    otherwise, never PyTorch's advice to load it unsafely."""
    regular_file(path, role="training state", error=ModelError)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated, not a checkpoint, or objects that would run code
        raise ModelError(path, f"cannot be loaded as a training state ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise ModelError(path, f"is not a training state (a {type(state).__name__})")
    convert(state, TrainingState, source=path, error=ModelError, what="not a training state")
    return state
