"""``petseg train`` and ``petseg assemble``: options and handlers."""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.frontend import add_device_option, number, positive
from petseg.settings import PRECISIONS


def train(args: argparse.Namespace) -> int:
    import dataclasses

    from petseg.model import network_kwargs
    from petseg.settings import PET_ONLY, Settings
    from petseg.train import TrainConfig
    from petseg.train.loop import train_folds

    settings = Settings(device=args.device, precision=args.precision).with_overrides(
        target_spacing=args.target_spacing,
        roi_size=args.roi_size,
        sw_batch_size=args.sw_batch_size,
        click_sigma_mm=args.click_sigma_mm if args.clicks else None,
        modalities=PET_ONLY if args.pet_only else None,
    )
    if args.scribbles:  # the model reads every point of a clicks file: scribbles are runs of points
        settings = dataclasses.replace(settings, max_clicks=None)
    network = network_kwargs(channels=args.channels, num_res_units=args.num_res_units)
    network["in_channels"] = len(settings.channels)
    config = TrainConfig(
        data_dir=args.data,
        out_dir=args.output,
        fold=max(args.fold, 0),  # -1: every fold, one after another
        n_folds=args.folds,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patch_size=tuple(args.patch_size),
        lr=args.lr,
        val_every=args.val_every,
        augment=not args.no_augment,
        network=network,
        settings=settings,
        splits_file=args.splits,
        num_workers=args.num_workers,
        sync_batchnorm=args.sync_batchnorm,
        init_from=args.init_from,
        pos_neg=tuple(args.pos_neg),
        hard_negatives=args.hard_negatives,
        hot_suv=args.hot_suv,
        click_free=args.click_free,
        error_clicks=args.error_clicks,
        scribbles=args.scribbles,
        focal_weight=tuple(args.focal_weight),
    )
    folds = list(range(args.folds)) if args.fold == -1 else [args.fold]
    train_folds(config, folds, resume=args.resume, overwrite=args.overwrite)
    return 0


def assemble(args: argparse.Namespace) -> int:
    from petseg.model_write import assemble as collect

    folder = collect(args.run, args.output, description=args.description)
    print(f"model folder {folder.path}: folds {[f.fold for f in folder.folds]}")
    return 0


def add_parsers(sub) -> None:
    """Register ``train`` and ``assemble`` on the ``petseg`` subcommand parser."""
    p = sub.add_parser("train", help="train fold K (or all folds with --fold -1)")
    p.add_argument("-d", "--data", required=True, type=Path, help="folder with imagesTr/ and labelsTr/")
    p.add_argument("-o", "--output", required=True, type=Path, help="run folder (cache, splits, fold_K/)")
    p.add_argument("--fold", type=int, default=0, help="fold to train; -1 trains all folds one after another")
    p.add_argument("--folds", type=positive(int), default=5, help="number of cross-validation folds")
    p.add_argument("--splits", type=Path, help="nnU-Net splits_final.json to use instead of a seeded split")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split and of the sampling")
    p.add_argument(
        "--epochs", type=positive(int), default=400, help="epochs (the cosine schedule reaches 0 at the last)"
    )
    p.add_argument("--batch-size", type=positive(int), default=4, help="patches per step")
    p.add_argument(
        "--patch-size", type=positive(int), nargs=3, default=(128, 128, 128), metavar=("X", "Y", "Z"), help="voxels"
    )
    p.add_argument("--lr", type=positive(float), default=1e-3, help="Adam's initial learning rate")
    p.add_argument("--val-every", type=positive(int), default=10, help="validate every N epochs (and at the last)")
    p.add_argument("--no-augment", action="store_true", help="train without the paper's augmentations")
    p.add_argument("--channels", type=positive(int), nargs="+", help="UNet widths (default: the paper's)")
    p.add_argument("--num-res-units", type=number(int, low=0), help="residual units per level (default: the paper's 2)")
    p.add_argument(
        "--target-spacing",
        type=positive(float),
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="network grid, mm (default 2 2 2)",
    )
    p.add_argument(
        "--roi-size",
        type=positive(int),
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="sliding window, voxels (default 192 192 192)",
    )
    p.add_argument("--sw-batch-size", type=positive(int), help="windows per network call in validation (default 1)")
    add_device_option(p)
    p.add_argument(
        "--num-workers",
        type=number(int, low=0),
        help="data-loader processes (default: on a GPU the CPUs per GPU less one, at most 12; on the CPU 0)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue fold_K from its last.pt (the same recipe; a larger --epochs extends the schedule)",
    )
    p.add_argument("--overwrite", action="store_true", help="start fold_K anew, removing what it holds")
    p.add_argument("--sync-batchnorm", action="store_true", help="SyncBatchNorm across GPUs (under torchrun)")
    p.add_argument("--init-from", type=Path, help="start from a state dict or a model folder's fold K (fine-tuning)")
    p.add_argument(
        "--pos-neg",
        type=float,
        nargs=2,
        default=(1.0, 1.0),
        metavar=("POS", "NEG"),
        help="ratio of lesion- to background-centred patches (default 1 1)",
    )
    p.add_argument(
        "--hard-negatives",
        type=float,
        default=0.0,
        metavar="W",
        help="weight, on the POS/NEG scale, of patches centred on hot background "
        "(PET >= --hot-suv outside the label: brain, bladder, kidneys...); default 0 = off",
    )
    p.add_argument("--hot-suv", type=positive(float), default=3.0, help="SUV that makes background 'hot' (default 3)")
    p.add_argument(
        "--focal-weight",
        type=float,
        nargs=2,
        default=(1.0, 100.0),
        metavar=("BG", "FG"),
        help="class weights of the focal term (default: the paper's 1 100)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="autocast (default auto: bf16 where the device has it natively, fp16 with loss scaling on older GPUs)",
    )
    p.add_argument(
        "--pet-only",
        action="store_true",
        help="train a PET-only model (one input channel; the CT is not read) for studies without a usable CT",
    )
    p.add_argument(
        "--clicks",
        action="store_true",
        help="train a click-aware model (inputs CT, PET, tumour and background click maps) with simulated clicks",
    )
    p.add_argument(
        "--click-sigma-mm", type=positive(float), default=5.0, help="Gaussian width of a click map, mm (default 5)"
    )
    p.add_argument(
        "--click-free",
        type=number(float, low=0, high=1),
        default=0.3,
        metavar="P",
        help="with --clicks: share of training patches without any click, so the model also works alone (default 0.3)",
    )
    p.add_argument(
        "--error-clicks",
        type=number(float, low=0, high=1),
        default=0.0,
        metavar="P",
        help="with --clicks: share of batches that also get 1-3 rounds of error-driven clicks from the "
        "network's own prediction (default 0 = off)",
    )
    p.add_argument(
        "--scribbles",
        action="store_true",
        help="with --clicks: simulated scribbles (autoPET V: lines on lesions and hot spots, error-driven "
        "ones with --error-clicks) instead of point clicks; the model reads every point of a clicks file",
    )
    p.set_defaults(func=train)

    p = sub.add_parser("assemble", help="collect fold_K/best.pt of a run into a model folder")
    p.add_argument("run", type=Path, help="run folder of petseg train (holds fold_K/)")
    p.add_argument("-o", "--output", required=True, type=Path, help="model folder to write")
    p.add_argument("--description", default="", help="one line for model.json (default: none)")
    p.set_defaults(func=assemble)
