"""Training one fold of the residual UNet on the autoPET layout, and assembling folds.

Data: ``imagesTr/<id>_0000`` (CT), ``imagesTr/<id>_0001`` (PET, SUV), ``labelsTr/<id>``.
Every case goes once through the engine's own ``preprocess`` (same crop, same grid as at
inference) and is cached as ``.npz``. Splits are by patient (``fdg_<patient>_<date>``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petseg.errors import InputError
from petseg.inference import FoldAverage, foreground_probability, resolve_device
from petseg.io import image_suffix, list_images, read_image, strip_suffix
from petseg.model import ModelFolder, build_network, write_model_folder
from petseg.preprocess import preprocess
from petseg.settings import PAPER_NETWORK, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the paper's; everything can be set."""

    data_dir: Path
    out_dir: Path
    fold: int = 0
    n_folds: int = 5
    seed: int = 0
    epochs: int = 400
    batch_size: int = 4
    patch_size: tuple[int, int, int] = (128, 128, 128)
    lr: float = 1e-3
    focal_weight: tuple[float, float] = (1.0, 100.0)
    pos_neg: tuple[float, float] = (1.0, 1.0)  # foreground/background patch centres
    val_every: int = 10
    augment: bool = True
    network: dict = field(default_factory=lambda: dict(PAPER_NETWORK))
    settings: Settings = field(default_factory=Settings)
    splits_file: Path | None = None
    device: str = "auto"
    num_workers: int = 0


# --- data ---------------------------------------------------------------------------------


def find_training_cases(data_dir: str | Path) -> dict[str, tuple[Path, Path, Path]]:
    """case id -> (CT, PET, label) of an autoPET/nnU-Net training folder."""
    data_dir = Path(data_dir)
    cases = {}
    for ct in list_images(data_dir / "imagesTr"):
        stem = strip_suffix(ct)
        if not stem.endswith("_0000"):
            continue
        case = stem[: -len("_0000")]
        suffix = image_suffix(ct)
        pet = data_dir / "imagesTr" / f"{case}_0001{suffix}"
        label = data_dir / "labelsTr" / f"{case}{suffix}"
        for path in (pet, label):
            if not path.is_file():
                raise InputError(path, f"missing for training case {case}")
        cases[case] = (ct, pet, label)
    if not cases:
        raise InputError(data_dir / "imagesTr", "no training cases (<id>_0000 / <id>_0001 + labelsTr/<id>)")
    return cases


def patient_of(case: str) -> str:
    """``fdg_<patient>_<date>`` -> ``fdg_<patient>``: studies of one patient share a fold."""
    return case.rsplit("_", 1)[0] if case.count("_") >= 2 else case


def make_splits(cases: list[str], *, n_folds: int, seed: int) -> list[dict[str, list[str]]]:
    """nnU-Net style ``[{"train": [...], "val": [...]}, ...]``, grouped by patient, seeded."""
    patients = sorted({patient_of(c) for c in cases})
    if len(patients) < n_folds:
        raise ValueError(f"{len(patients)} patients cannot make {n_folds} folds")
    random.Random(seed).shuffle(patients)
    fold_of = {p: i % n_folds for i, p in enumerate(patients)}
    splits = []
    for k in range(n_folds):
        val = sorted(c for c in cases if fold_of[patient_of(c)] == k)
        splits.append({"train": sorted(c for c in cases if fold_of[patient_of(c)] != k), "val": val})
    return splits


def load_splits(path: str | Path, cases: list[str]) -> list[dict[str, list[str]]]:
    splits = json.loads(Path(path).read_text())
    known = set(cases)
    for k, split in enumerate(splits):
        missing = sorted((set(split["train"]) | set(split["val"])) - known)
        if missing:
            raise InputError(path, f"fold {k} names {len(missing)} unknown case(s), e.g. {missing[0]}")
    return splits


def cache_case(case: str, paths: tuple[Path, Path, Path], cache_dir: Path, settings: Settings) -> Path:
    """Preprocess once with the engine's own pipeline; later epochs read the .npz."""
    out = cache_dir / f"{case}.npz"
    if out.is_file():
        return out
    ct, pet, label = (read_image(p, role=r) for p, r in zip(paths, ("CT", "PET", "label")))
    prep = preprocess(ct, pet, settings=settings, label=label, ct_source=str(paths[0]), pet_source=str(paths[1]))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{case}.partial.npz"
    np.savez(tmp, image=prep.image, label=prep.label)
    tmp.replace(out)
    return out


def load_cached(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {"image": data["image"], "label": data["label"][None].astype(np.float32)}


def train_transforms(config: TrainConfig):
    """Random patches and the paper's augmentations; labels always nearest-neighbour."""
    from monai.transforms import (
        Compose,
        EnsureTyped,
        Rand3DElasticd,
        RandAdjustContrastd,
        RandCropByPosNegLabeld,
        RandGaussianNoised,
        SpatialPadd,
    )

    keys = ["image", "label"]
    steps = [
        SpatialPadd(keys=keys, spatial_size=config.patch_size),
        RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=config.patch_size, pos=config.pos_neg[0], neg=config.pos_neg[1]
        ),
    ]
    if config.augment:
        steps += [
            Rand3DElasticd(  # one resampling for translation, axial rotation, scaling and elastic
                keys=keys,
                prob=0.5,
                sigma_range=(5.0, 8.0),
                magnitude_range=(50.0, 150.0),
                translate_range=(10, 10, 10),
                rotate_range=(0.0, 0.0, math.pi / 12),
                scale_range=(0.1, 0.1, 0.1),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandAdjustContrastd(keys=["image"], prob=0.3, gamma=(0.7, 1.5)),
            RandGaussianNoised(keys=["image"], prob=0.2, std=0.05),
        ]
    steps.append(EnsureTyped(keys=keys, track_meta=False))
    return Compose(steps)


# --- the loop ------------------------------------------------------------------------------


def _dice(pred: np.ndarray, label: np.ndarray) -> float:
    total = int(pred.sum()) + int(label.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, label).sum()) / total


def validate(network: torch.nn.Module, cases: list[dict], *, settings: Settings, device: torch.device) -> dict:
    """Sliding-window inference on whole validation cases: mean DSC over lesion-positive
    cases, and false-positive volume (ml) on lesion-negative ones."""
    network.eval()
    ensemble = FoldAverage([network])  # an fp32 copy of the network as it is now
    voxel_ml = float(np.prod(settings.target_spacing)) / 1000.0
    dscs, fpv = [], []
    for case in cases:
        prob = foreground_probability(case["image"], ensemble, settings=settings, device=device)
        pred, label = prob > 0.5, case["label"][0] > 0.5
        if label.any():
            dscs.append(_dice(pred, label))
        else:
            fpv.append(pred.sum() * voxel_ml)
    network.train()
    return {
        "val_dsc": float(np.mean(dscs)) if dscs else float("nan"),
        "val_fpv_ml": float(np.mean(fpv)) if fpv else float("nan"),
    }


def seed_epoch(config: TrainConfig, epoch: int, transform) -> None:
    """Every random stream of an epoch depends on (seed, fold, epoch) alone, so a resumed
    run draws exactly what an uninterrupted one would."""
    seed = (config.seed * 1_000_003 + config.fold * 10_007 + epoch) % (2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    transform.set_random_state(seed=seed)


def train_fold(config: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> Path:
    """Train one fold; returns the folder with ``best.pt``, ``last.pt`` and ``log.csv``.

    ``resume`` continues from ``last.pt`` (weights, optimizer, scheduler, scaler, epoch, best
    score); with per-epoch seeding the continued run equals an uninterrupted one. ``stop_after``
    ends the run after that many epochs (a job with a wall-time limit; resume later).
    """
    from monai.data import DataLoader, Dataset
    from monai.losses import GeneralizedDiceFocalLoss
    from monai.utils import set_determinism

    fold_dir = Path(config.out_dir) / f"fold_{config.fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    cases = find_training_cases(config.data_dir)
    splits = (
        load_splits(config.splits_file, list(cases))
        if config.splits_file
        else make_splits(list(cases), n_folds=config.n_folds, seed=config.seed)
    )
    (Path(config.out_dir) / "splits_final.json").write_text(json.dumps(splits, indent=1))
    run_meta = {"network": config.network, **config.settings.model_sections()}
    (Path(config.out_dir) / "train.json").write_text(json.dumps(run_meta, indent=1))
    split = splits[config.fold]
    cache_dir = Path(config.out_dir) / "cache"
    t0 = time.perf_counter()
    train_data = [load_cached(cache_case(c, cases[c], cache_dir, config.settings)) for c in split["train"]]
    val_data = [load_cached(cache_case(c, cases[c], cache_dir, config.settings)) for c in split["val"]]
    log.info("fold %d: %d train / %d val cases, cached in %.1f s", config.fold, len(train_data), len(val_data),
             time.perf_counter() - t0)  # fmt: skip

    set_determinism(seed=config.seed + config.fold)  # also makes cuDNN deterministic
    device = resolve_device(config.device)
    network = build_network(config.network).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=0.0)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True, weight=list(config.focal_weight))
    transform = train_transforms(config)
    start_epoch, best = 0, -1.0
    last_path, best_path, log_path = fold_dir / "last.pt", fold_dir / "best.pt", fold_dir / "log.csv"
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=False)
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        log.info("fold %d: resumed after epoch %d (best DSC %.4f)", config.fold, state["epoch"], best)
    elif log_path.exists():
        log_path.unlink()

    loader = DataLoader(
        Dataset(train_data, transform=transform),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=config.num_workers,
        drop_last=len(train_data) >= config.batch_size,
    )
    fields = ["epoch", "loss", "lr", "val_dsc", "val_fpv_ml", "seconds"]
    new_log = not log_path.exists()
    with open(log_path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new_log:
            writer.writeheader()
        network.train()
        last_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
        for epoch in range(start_epoch, last_epoch):
            t_epoch = time.perf_counter()
            seed_epoch(config, epoch, transform)
            losses = []
            for batch in loader:
                x, y = batch["image"].to(device), batch["label"].to(device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=use_amp):
                    loss = loss_fn(network(x), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
            row = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": optimizer.param_groups[0]["lr"],
                   "val_dsc": "", "val_fpv_ml": ""}  # fmt: skip
            scheduler.step()
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                metrics = validate(network, val_data, settings=config.settings, device=device)
                row.update(metrics)
                score = metrics["val_dsc"] if not math.isnan(metrics["val_dsc"]) else 0.0
                if score > best:
                    best = score
                    torch.save(network.state_dict(), best_path)
            row["seconds"] = round(time.perf_counter() - t_epoch, 2)
            writer.writerow(row)
            fh.flush()
            log.info("fold %d epoch %d: %s", config.fold, epoch, {k: v for k, v in row.items() if v != ""})
            torch.save(
                {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch, "best": best,
                 "config": {k: str(v) for k, v in asdict(config).items()}},
                last_path,
            )  # fmt: skip
    if not best_path.is_file():  # no validation ran (epochs < val_every is impossible, but be safe)
        torch.save(network.state_dict(), best_path)
    return fold_dir


def assemble(run_dir: str | Path, model_dir: str | Path, *, description: str = "") -> ModelFolder:
    """Collect ``fold_K/best.pt`` of a training run into one model folder (network and
    settings from the run's ``train.json``)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "train.json"
    if not meta_path.is_file():
        raise InputError(meta_path, "missing: not a petseg training run")
    meta = json.loads(meta_path.read_text())
    settings = Settings().with_overrides(**meta["preprocessing"], **meta["inference"])
    states = {}
    for fold_dir in sorted(run_dir.glob("fold_*")):
        best = fold_dir / "best.pt"
        if best.is_file():
            states[int(fold_dir.name.split("_")[1])] = torch.load(best, map_location="cpu", weights_only=True)
    if not states:
        raise InputError(run_dir, "no fold_K/best.pt found")
    return write_model_folder(
        model_dir, state_dicts=states, network=meta["network"], settings=settings, description=description
    )
