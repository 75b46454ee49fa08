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
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from petseg.errors import InputError
from petseg.inference import FoldAverage, cpu_supports_bf16, foreground_probability, resolve_device
from petseg.io import atomic_path, image_suffix, list_images, read_image, strip_suffix
from petseg.metrics import case_metrics
from petseg.model import ModelFolder, build_network, load_state_dict, read_state_dict, write_model_folder
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
    # patches centred on "hot" background (PET SUV >= hot_suv outside the label: brain, heart,
    # kidneys, bladder, salivary glands, where false positives come from); relative to pos_neg
    hard_negatives: float = 0.0
    hot_suv: float = 3.0
    precision: str = "auto"  # auto: fp16 AMP on CUDA, bf16 autocast on CPUs with native bf16; or fp32
    val_every: int = 10
    augment: bool = True
    network: dict = field(default_factory=lambda: dict(PAPER_NETWORK))
    settings: Settings = field(default_factory=Settings)
    splits_file: Path | None = None
    sync_batchnorm: bool = False  # DDP only
    init_from: Path | None = None  # start from these weights: a state dict, or a model folder (its fold K)
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
    with atomic_path(out) as tmp:  # a unique temp name: parallel fold jobs share the cache
        np.savez(tmp, image=prep.image, label=prep.label)
    return out


def load_cached(path: Path, *, hot_suv: float | None = None) -> dict[str, np.ndarray]:
    """A cached case; with ``hot_suv`` (training cases) also its patch-sampling map."""
    with np.load(path) as data:
        case = {"image": data["image"], "label": data["label"][None].astype(np.float32)}
    return case if hot_suv is None else with_sampling_map(case, hot_suv=hot_suv)


def with_sampling_map(case: dict[str, Any], *, hot_suv: float) -> dict[str, Any]:
    """Add the map ``train_transforms`` draws patch centres from: 0 background, 1 lesion,
    2 hot background (PET >= hot_suv outside the label). Built once per case, not per patch."""
    lesion = np.asarray(case["label"][0]) > 0.5
    sampling = lesion.astype(np.uint8)
    sampling[(np.asarray(case["image"][1]) >= hot_suv) & ~lesion] = 2
    return {**case, "sampling": sampling[None]}


def train_transforms(config: TrainConfig):
    """Random patches and the paper's augmentations; labels always nearest-neighbour. Cases
    carry a sampling map (``with_sampling_map``); patch centres are background, lesion and
    hot background in the ratio NEG : POS : hard_negatives."""
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        DeleteItemsd,
        EnsureTyped,
        Rand3DElasticd,
        RandAdjustContrastd,
        RandCropByLabelClassesd,
        RandGaussianNoised,
        SpatialPadd,
        SplitDimd,
    )

    keys = ["image", "label"]
    steps = [
        SpatialPadd(keys=[*keys, "sampling"], spatial_size=config.patch_size),
        RandCropByLabelClassesd(  # centres: background, lesion, hot background (load_cached's map)
            keys=keys, label_key="sampling", spatial_size=config.patch_size, num_classes=3,
            ratios=[config.pos_neg[1], config.pos_neg[0], config.hard_negatives], warn=False,
        ),
        DeleteItemsd(keys="sampling"),
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
            # gamma per channel: over the stacked image, min/max would mix CT [0, 1] with PET SUV
            # and bend the CT far more than the paper's 0.7-1.5 intends
            SplitDimd(keys="image", output_postfixes=["ct", "pet"], dim=0, update_meta=False),
            RandAdjustContrastd(keys=["image_ct"], prob=0.3, gamma=(0.7, 1.5)),
            RandAdjustContrastd(keys=["image_pet"], prob=0.3, gamma=(0.7, 1.5)),
            ConcatItemsd(keys=["image_ct", "image_pet"], name="image", dim=0),
            DeleteItemsd(keys=["image_ct", "image_pet"]),
            RandGaussianNoised(keys=["image"], prob=0.2, std=0.05),
        ]
    steps.append(EnsureTyped(keys=keys, track_meta=False))
    return Compose(steps)


# --- the loop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dist:
    """torchrun's process group (world 1 without torchrun). Only rank 0 writes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join torchrun's process group when WORLD_SIZE > 1 (NCCL on CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(), resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device_name != "cpu"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    return Dist(torch.distributed.get_rank(), world, local_rank), device


def validate(
    network: torch.nn.Module, cases: list[dict], *, settings: Settings, device: torch.device, dist: Dist = Dist()
) -> dict:
    """Sliding-window inference on the whole validation fold, split over the ranks; DSC, FPV
    and FNV per case (challenge definitions, on the network grid), gathered from all ranks:
    mean DSC over lesion-positive cases, mean FPV over negatives, mean FNV over positives."""
    network.eval()
    ensemble = FoldAverage([network])  # the training network itself (no BatchNorm folding, no copy)
    voxel_volume = float(np.prod(settings.target_spacing)) / 1000.0
    mine = []
    for case in cases[dist.rank :: dist.world]:
        prob = foreground_probability(case["image"], ensemble, settings=settings, device=device)
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


def plot_curves(log_path: Path, out_path: Path) -> None:
    """Loss and validation DSC against epoch, from the fold's CSV log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [float(r["loss"]) for r in rows], label="training loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    val = [(int(r["epoch"]), float(r["val_dsc"])) for r in rows if r["val_dsc"] not in ("", "nan")]
    twin = ax.twinx()
    if val:
        twin.plot(*zip(*val), "o-", color="tab:red", label="validation DSC")
    twin.set_ylabel("validation DSC")
    twin.set_ylim(0, 1)
    fig.legend(loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def seed_epoch(config: TrainConfig, epoch: int, transform) -> None:
    """Every random stream of an epoch depends on (seed, fold, epoch) alone, so a resumed
    run draws exactly what an uninterrupted one would."""
    seed = (config.seed * 1_000_003 + config.fold * 10_007 + epoch) % (2**31)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    transform.set_random_state(seed=seed)


def train_fold(config: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> Path:
    """Train one fold; returns the folder with ``best.pt``, ``last.pt``, ``log.csv`` and ``curves.png``.

    ``resume`` continues from ``last.pt`` (weights, optimizer, scheduler, scaler, epoch, best
    score); with per-epoch seeding the continued run equals an uninterrupted one. ``stop_after``
    ends the run after that many epochs (a job with a wall-time limit; resume later).
    Under ``torchrun`` (WORLD_SIZE > 1) each rank trains on its share of every epoch (DDP),
    validation is split over the ranks and gathered, and only rank 0 writes.
    """
    from monai.data import DataLoader, Dataset
    from monai.losses import GeneralizedDiceFocalLoss
    from monai.utils import set_determinism
    from torch.utils.data.distributed import DistributedSampler

    dist, device = init_distributed(config.device)
    out_dir = Path(config.out_dir)
    fold_dir = out_dir / f"fold_{config.fold}"
    cases = find_training_cases(config.data_dir)
    splits = (
        load_splits(config.splits_file, list(cases))
        if config.splits_file
        else make_splits(list(cases), n_folds=config.n_folds, seed=config.seed)
    )
    split = splits[config.fold]
    cache_dir = out_dir / "cache"
    t0 = time.perf_counter()
    if dist.main:  # rank 0 writes the run description and fills the cache; the others wait
        fold_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "splits_final.json").write_text(json.dumps(splits, indent=1))
        run_meta = {"network": config.network, **config.settings.model_sections()}
        (out_dir / "train.json").write_text(json.dumps(run_meta, indent=1))
        for case in split["train"] + split["val"]:
            cache_case(case, cases[case], cache_dir, config.settings)
    dist.barrier()
    train_data = [load_cached(cache_dir / f"{c}.npz", hot_suv=config.hot_suv) for c in split["train"]]
    val_data = [load_cached(cache_dir / f"{c}.npz") for c in split["val"]]
    log.info("fold %d: %d train / %d val cases, cached in %.1f s (rank %d of %d)", config.fold, len(train_data),
             len(val_data), time.perf_counter() - t0, dist.rank, dist.world)  # fmt: skip

    set_determinism(seed=config.seed + config.fold)  # also makes cuDNN deterministic
    network = build_network(config.network).to(device)
    if dist.world > 1 and config.sync_batchnorm:
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs, eta_min=0.0)
    autocast_dtype = training_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)  # bf16: no scaling
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
    else:
        if config.init_from is not None:
            source = init_checkpoint(config.init_from, config.fold)
            load_state_dict(network, read_state_dict(source), source=source)
            log.info("fold %d: starting from %s", config.fold, source)
        if log_path.exists() and dist.main:
            log_path.unlink()
    model = network
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None
        )

    dataset = Dataset(train_data, transform=transform)
    sampler = DistributedSampler(dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=config.seed,
                                 drop_last=False) if dist.world > 1 else None  # fmt: skip
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.num_workers,
        drop_last=len(train_data) >= config.batch_size * dist.world,
    )
    fields = ["epoch", "loss", "lr", "val_dsc", "val_fpv_ml", "val_fnv_ml", "val_cases", "seconds"]
    fh = None
    if dist.main:
        new_log = not log_path.exists()
        fh = open(log_path, "a", newline="")
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new_log:
            writer.writeheader()
    try:
        model.train()
        last_epoch = config.epochs if stop_after is None else min(config.epochs, start_epoch + stop_after)
        for epoch in range(start_epoch, last_epoch):
            t_epoch = time.perf_counter()
            seed_epoch(config, epoch, transform)
            if sampler is not None:
                sampler.set_epoch(epoch)
            losses = []
            for batch in loader:
                x, y = batch["image"].to(device), batch["label"].to(device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss = loss_fn(model(x), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
            epoch_loss = float(np.mean([v for part in dist.gather(losses) for v in part]))
            row = {"epoch": epoch, "loss": epoch_loss, "lr": optimizer.param_groups[0]["lr"]}
            scheduler.step()
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                metrics = validate(network, val_data, settings=config.settings, device=device, dist=dist)
                row.update(metrics)
                score = metrics["val_dsc"] if not math.isnan(metrics["val_dsc"]) else 0.0
                if score > best:  # every rank sees the same gathered metrics, so agrees
                    best = score
                    if dist.main:
                        torch.save(network.state_dict(), best_path)
            row["seconds"] = round(time.perf_counter() - t_epoch, 2)
            log.info("fold %d epoch %d: %s", config.fold, epoch, row)
            if dist.main:
                writer.writerow(row)
                fh.flush()
                torch.save(
                    {"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "best": best, "config": {k: str(v) for k, v in asdict(config).items()}},
                    last_path,
                )  # fmt: skip
                if "val_dsc" in row:
                    plot_curves(log_path, fold_dir / "curves.png")
    finally:
        if fh is not None:
            fh.close()
    if dist.main and not best_path.is_file():  # stopped before the first validation
        torch.save(network.state_dict(), best_path)
    dist.barrier()
    return fold_dir


def training_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for training; None = fp32. "auto": fp16 (with loss scaling) on CUDA as
    the paper, bf16 on CPUs with native bf16 (about 1.7x faster on this project's CPU)."""
    if name not in ("auto", "fp32"):
        raise ValueError(f"training precision must be 'auto' or 'fp32', got {name!r}")
    if name == "fp32":
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_supports_bf16() else None


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
    folder = write_model_folder(
        model_dir, state_dicts=states, network=meta["network"], settings=settings, description=description
    )
    # provenance beside the weights: the split and each fold's log and curves
    extras = [(run_dir / "splits_final.json", "splits_final.json")]
    for fold in states:
        extras += [(run_dir / f"fold_{fold}" / name, f"fold{fold}_{name}") for name in ("log.csv", "curves.png")]
    for source, name in extras:
        if source.is_file():
            with atomic_path(Path(model_dir) / name) as tmp:
                shutil.copyfile(source, tmp)
    return folder
