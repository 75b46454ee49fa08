"""``train_fold``: setup, optional resume, epochs of random patches, validation with the
challenge metrics, checkpoints (written atomically; only rank 0 writes)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from petseg.errors import ConfigError, InputError, ModelError
from petseg.inference import FoldAverage, foreground_probability, resolve_precision
from petseg.io import atomic_path
from petseg.layout import find_training_cases
from petseg.metrics import case_metrics
from petseg.model import ModelFolder, build_network, load_state_dict, read_state_dict
from petseg.outputs import BEST, CURVES, LAST, TRAIN_LOG, cache_folder
from petseg.settings import Settings
from petseg.train.config import TrainConfig
from petseg.train.data import cache_case, cache_key, load_cached, load_splits, make_splits, open_cache
from petseg.train.distributed import Dist, init_distributed
from petseg.train.plots import plot_curves
from petseg.train.run import (
    FoldLog,
    check_resume,
    claim_fold,
    claim_run,
    claim_splits,
    read_training_state,
    split_digest,
)
from petseg.train.transforms import train_transforms

log = logging.getLogger(__name__)


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

    def state(self, *, epoch: int, recipe: dict[str, Any]) -> dict:
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
        }

    def load(self, state: dict, *, source: Path) -> None:
        load_state_dict(self.network, state["model"], source=source, against="this run's network")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
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


def prepare_data(
    config: TrainConfig, dist: Dist, *, overwrite: bool = False
) -> tuple[list[dict], list[dict], dict[str, list[str]]]:
    """Check the run folder's recipe and split (every rank; a refusal must not leave the others
    waiting), write them and fill the cache (rank 0; the others wait), and load this fold's
    training and validation cases and its split."""
    out_dir = Path(config.out_dir)
    cases = find_training_cases(config.data_dir)
    if config.splits_file:
        splits = load_splits(config.splits_file, list(cases))
    else:
        splits = make_splits(list(cases), n_folds=config.n_folds, seed=config.seed)
    claim_run(config, overwrite=overwrite, write=dist.main)
    splits = claim_splits(config, splits, overwrite=overwrite, write=dist.main)
    if config.fold >= len(splits):
        raise ConfigError("fold", f"{config.splits_file} has {len(splits)} folds, fold {config.fold} asked for")
    split = splits[config.fold]
    t0 = time.perf_counter()
    cache_dir = open_cache(out_dir, config.settings) if dist.main else cache_folder(out_dir, cache_key(config.settings))
    if dist.main:
        for case in split["train"] + split["val"]:
            cache_case(cases[case], cache_dir, config.settings)
    dist.barrier()
    train_data = [load_cached(cache_dir / f"{c}.npz", hot_suv=config.hot_suv) for c in split["train"]]
    val_data = [load_cached(cache_dir / f"{c}.npz") for c in split["val"]]
    log.info(
        "fold %d: %d train / %d val cases, cache %s ready in %.1f s (rank %d of %d)",
        config.fold,
        len(train_data),
        len(val_data),
        cache_dir.name,
        time.perf_counter() - t0,
        dist.rank,
        dist.world,
    )
    return train_data, val_data, split


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
    environ = os.environ if environ is None else environ
    per_gpu = available_cpus() // max(1, int(environ.get("LOCAL_WORLD_SIZE", "1")))
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


def train_fold(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> Path:
    """Train one fold; returns the folder with ``best.pt``, ``last.pt``, ``log.csv`` and ``curves.png``.

    A trained fold folder is continued with ``resume`` (weights, optimizer, scheduler, scaler,
    epoch and best score from ``last.pt``; with per-epoch seeding the continued run equals an
    uninterrupted one; a changed recipe is refused, more epochs extend the schedule) or started
    anew with ``overwrite``, never replaced otherwise (see :mod:`petseg.train.run`).
    ``stop_after`` ends the run after that many epochs (a job with a wall-time limit; resume
    later). Under ``torchrun`` (WORLD_SIZE > 1) each rank trains on its share of every epoch
    (DDP), validation is split over the ranks and gathered, and only rank 0 writes.
    ``progress`` shows a bar over epochs (and steps) on a terminal.
    """
    dist, device = init_distributed(config.settings.device)
    run_fold = claim_fold(Path(config.out_dir), config.fold, resume=resume, overwrite=overwrite, write=False)
    last_path, best_path, log_path = run_fold / LAST, run_fold / BEST, run_fold / TRAIN_LOG
    state = read_training_state(last_path, device=device) if resume else None  # a bad one fails before any work
    initial = init_checkpoint(config.init_from, config.fold) if state is None and config.init_from else None
    train_data, val_data, split = prepare_data(config, dist, overwrite=overwrite)
    claim_fold(Path(config.out_dir), config.fold, resume=resume, overwrite=overwrite, write=dist.main)
    recipe = {**config.recipe(), "split": split_digest(split)}
    planned = check_resume(state, recipe, source=last_path) if state is not None else None
    trainer = build_trainer(config, device=device, dist=dist)
    transform = train_transforms(config)
    if state is not None:
        trainer.load(state, source=last_path)
        if planned is not None:
            trainer.extend_schedule(epochs=config.epochs)
            log.info(
                "fold %d: extended from %d to %d epochs; the learning rate follows the cosine of a %d-epoch run "
                "from epoch %d on (%.3g now)",
                config.fold,
                planned,
                config.epochs,
                config.epochs,
                trainer.start_epoch + 1,
                trainer.optimizer.param_groups[0]["lr"],
            )
        log.info("fold %d: resumed after epoch %d of %d", config.fold, trainer.start_epoch, config.epochs)
    elif initial is not None:
        load_state_dict(trainer.network, widened(read_state_dict(initial), trainer.network), source=initial)
        log.info("fold %d: starting from %s", config.fold, initial)
    if dist.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        trainer.model = torch.nn.parallel.DistributedDataParallel(trainer.network, device_ids=ids)
    loader, sampler = make_loader(config, train_data, transform, dist, device=device)
    history = FoldLog(log_path, keep_before=trainer.start_epoch)
    last_epoch = config.epochs if stop_after is None else min(config.epochs, trainer.start_epoch + stop_after)
    if trainer.start_epoch >= config.epochs:
        log.info("fold %d: all %d epochs are trained already; nothing to do", config.fold, config.epochs)
    started = time.perf_counter()
    bar = tqdm(
        total=config.epochs,
        initial=trainer.start_epoch,
        desc=f"fold {config.fold}",
        unit="epoch",
        disable=None if progress and dist.main else True,  # None: only on a terminal
        dynamic_ncols=True,
    )
    try:
        trainer.model.train()
        for epoch in range(trainer.start_epoch, last_epoch):
            t_epoch = time.perf_counter()
            seed_epoch(config, epoch, transform)
            if sampler is not None:
                sampler.set_epoch(epoch)
            loss = train_epoch(trainer, loader, device, dist, progress=progress and bar.disable is False)
            row = {"epoch": epoch, "loss": loss, "lr": trainer.optimizer.param_groups[0]["lr"]}
            trainer.scheduler.step()
            improved = False
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                metrics = validate(trainer.network, val_data, settings=config.settings, device=device, dist=dist)
                row.update(metrics)
                score = metrics["val_dsc"] if not math.isnan(metrics["val_dsc"]) else 0.0
                if score > trainer.best:  # every rank sees the same gathered metrics, so agrees
                    trainer.best, trainer.best_epoch, improved = score, epoch, True
                    if dist.main:
                        save_atomic(trainer.network.state_dict(), best_path)
            row["seconds"] = round(time.perf_counter() - t_epoch, 2)
            if dist.main:
                save_atomic(trainer.state(epoch=epoch, recipe=recipe), last_path)  # then the log: never ahead of it
                history.add(row)
                if "val_dsc" in row:
                    plot_curves(log_path, run_fold / CURVES)
            report_epoch(config, row, improved=improved)
            bar.update()
            bar.set_postfix_str(f"loss {loss:.4f}" + (f", best DSC {trainer.best:.4f}" if trainer.best >= 0 else ""))
    finally:
        bar.close()
    if dist.main and not best_path.is_file():  # stopped before the first validation
        save_atomic(trainer.network.state_dict(), best_path)
    dist.barrier()
    trained = last_epoch - trainer.start_epoch
    if trained > 0:
        best = (
            f"best DSC {trainer.best:.4f} at epoch {trainer.best_epoch + 1}"
            if trainer.best_epoch >= 0
            else "not validated yet"
        )
        log.info(
            "fold %d: %d epoch(s) in %s, now %d of %d; %s (%s)",
            config.fold,
            trained,
            _duration(time.perf_counter() - started),
            last_epoch,
            config.epochs,
            best,
            best_path,
        )
    return run_fold


def report_epoch(config: TrainConfig, row: dict[str, Any], *, improved: bool) -> None:
    """One line per validated epoch (the others at debug level), and a line for a new best."""
    where = f"fold {config.fold} epoch {row['epoch'] + 1}/{config.epochs}"
    text = f"{where}: loss {row['loss']:.4f}, lr {row['lr']:.2e}, {row['seconds']:.1f} s"
    if "val_dsc" not in row:
        log.debug("%s", text)
        return
    log.info(
        "%s; validation DSC %s, FPV %s ml, FNV %s ml (%d cases)",
        text,
        _number(row["val_dsc"], 4),
        _number(row["val_fpv_ml"], 2),
        _number(row["val_fnv_ml"], 2),
        row["val_cases"],
    )
    if improved:
        log.info("fold %d: new best DSC %.4f at epoch %d, saved best.pt", config.fold, row["val_dsc"], row["epoch"] + 1)


def _number(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
