"""``train_fold``: claim the fold, check its recipe and data, set up or resume the trainer,
train epochs of random patches, validate, and write checkpoints, log and curves (written
atomically; only rank 0 writes)."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from petseg.errors import ConfigError, InputError
from petseg.layout import find_training_cases
from petseg.model import load_state_dict, read_state_dict
from petseg.outputs import BEST, CURVES, LAST, TRAIN_LOG, cache_folder, fold_dir
from petseg.train.claims import claim_fold, claim_run, claim_splits, fold_lock
from petseg.train.config import TrainConfig
from petseg.train.data import cache_case, cache_key, load_cached, load_splits, make_splits, open_cache
from petseg.train.distributed import Dist, init_distributed
from petseg.train.plots import plot_curves
from petseg.train.run import (
    FoldLog,
    check_best,
    check_resume,
    check_split,
    distributed_recipe,
    read_training_state,
    split_digest,
)
from petseg.train.trainer import (
    build_trainer,
    init_checkpoint,
    make_loader,
    save_atomic,
    seed_epoch,
    train_epoch,
    validate,
    widened,
)
from petseg.train.transforms import train_transforms

log = logging.getLogger(__name__)


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

    def load(name: str, **kwargs: Any) -> dict:
        try:
            return load_cached(cache_dir / f"{name}.npz", **kwargs)
        except InputError as err:  # damaged since: preprocess it again (atomically: other ranks may too)
            log.warning("%s: %s: preprocessed again", err.source, err.problem)
            return load_cached(cache_case(cases[name], cache_dir, config.settings, force=True), **kwargs)

    train_data = [load(c, hot_suv=config.hot_suv) for c in split["train"]]
    val_data = [load(c) for c in split["val"]]
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
    anew with ``overwrite``, never replaced otherwise (see :mod:`petseg.train.claims`).
    ``stop_after`` ends the run after that many epochs (a job with a wall-time limit; resume
    later). Under ``torchrun`` (WORLD_SIZE > 1) each rank trains on its share of every epoch
    (DDP), validation is split over the ranks and gathered, and only rank 0 writes.
    ``progress`` shows a bar over epochs (and steps) on a terminal.
    """
    check_training_device(config)
    dist, device = init_distributed(config.settings.device)
    if not dist.main:  # one voice: rank 0 logs the run, the others only warnings
        logging.getLogger("petseg").setLevel(logging.WARNING)
    run_fold = claim_fold(Path(config.out_dir), config.fold, resume=resume, overwrite=overwrite, write=False)
    with fold_lock(run_fold) if dist.main else nullcontext():
        return _train_claimed(
            config, dist, device, run_fold, resume=resume, overwrite=overwrite, stop_after=stop_after, progress=progress
        )


def check_training_device(config: TrainConfig) -> None:
    """An explicit CUDA device must be there (training on the CPU by a fallback would take
    days unnoticed); SyncBatchNorm needs GPUs."""
    device = config.settings.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device", f"{device}: no CUDA device here; --device cpu trains on the CPU (slowly)")
    if config.sync_batchnorm and (device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("--sync-batchnorm", "needs GPUs (PyTorch's SyncBatchNorm runs on CUDA only)")


def _train_claimed(
    config: TrainConfig,
    dist: Dist,
    device: torch.device,
    run_fold: Path,
    *,
    resume: bool,
    overwrite: bool,
    stop_after: int | None,
    progress: bool,
) -> Path:
    last_path, best_path, log_path = run_fold / LAST, run_fold / BEST, run_fold / TRAIN_LOG
    recipe = {**config.recipe(), **distributed_recipe(config, dist)}
    state = read_training_state(last_path, device=device) if resume else None  # a bad one fails before any work
    planned = None
    if state is not None:
        planned = check_resume(state, recipe, source=last_path)
        check_best(state, best_path)
    initial = init_checkpoint(config.init_from, config.fold) if state is None and config.init_from else None
    train_data, val_data, split = prepare_data(config, dist, overwrite=overwrite)
    recipe["split"] = split_digest(split)
    if state is not None:
        check_split(state, recipe["split"], source=last_path)
    claim_fold(Path(config.out_dir), config.fold, resume=resume, overwrite=overwrite, write=dist.main)
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
    if state is not None and state.get("loader_workers") not in (None, loader.num_workers):
        log.warning(
            "fold %d: %d loader worker(s) now, %d before: the augmentations' random streams differ from an "
            "uninterrupted run's (--num-workers %d keeps them)",
            config.fold,
            loader.num_workers,
            state["loader_workers"],
            state["loader_workers"],
        )
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
            if dist.main:  # the log first: a resume drops rows past last.pt, never lacks one
                history.add(row)
                save_atomic(trainer.state(epoch=epoch, recipe=recipe, loader_workers=loader.num_workers), last_path)
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
        "%s; validation DSC %s, FPV %s, FNV %s (%d cases)",
        text,
        _number(row["val_dsc"], 4),
        _number(row["val_fpv_ml"], 2, " ml"),
        _number(row["val_fnv_ml"], 2, " ml"),
        row["val_cases"],
    )
    if improved:
        log.info("fold %d: new best DSC %.4f at epoch %d, saved best.pt", config.fold, row["val_dsc"], row["epoch"] + 1)


def _number(value: float, digits: int, unit: str = "") -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}{unit}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def train_folds(config: TrainConfig, folds: list[int], *, resume: bool = False, overwrite: bool = False) -> None:
    """Train ``folds`` one after another (``petseg train --fold -1``). With ``resume`` each fold
    that has a last.pt continues and the others start; every fold's claim is checked before
    any trains, so a refusal does not come after hours of the first folds."""
    run_dir = Path(config.out_dir)
    plan = []
    for fold in folds:
        resumes = resume and (len(folds) == 1 or (fold_dir(run_dir, fold) / LAST).exists())
        claim_fold(run_dir, fold, resume=resumes, overwrite=overwrite, write=False)
        plan.append((fold, resumes))
    for fold, resumes in plan:
        train_fold(dataclasses.replace(config, fold=fold), resume=resumes, overwrite=overwrite)
