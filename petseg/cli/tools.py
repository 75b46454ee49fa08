"""``petseg qc``, ``petseg import-weights``, ``petseg phantom`` and ``petseg compare``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from petseg.errors import ConfigError
from petseg.frontend import number, positive

log = logging.getLogger("petseg")


def add_parsers(sub) -> None:
    p = sub.add_parser("qc", help="PNG with coronal/sagittal PET MIPs and lesion outlines")
    p.add_argument("--pet", required=True, type=Path, help="PET image (SUV)")
    p.add_argument("--mask", required=True, type=Path, help="predicted lesion mask on the PET grid")
    p.add_argument("--gt", type=Path, help="ground-truth mask: outlines found, missed and false lesions apart")
    p.add_argument("-o", "--output", required=True, type=Path, help="PNG to write")
    p.add_argument(
        "--suv-window", type=float, nargs=2, default=(0.0, 10.0), metavar=("LOW", "HIGH"), help="grey scale, SUV"
    )
    p.add_argument("--title", help="title (default: the mask's file name without extension)")
    p.set_defaults(func=qc)

    p = sub.add_parser("import-weights", help="turn the authors' fold checkpoints into a model folder")
    p.add_argument("files", nargs="+", type=Path, help="state dicts, e.g. fold0_model_ep=0284.pth ...")
    p.add_argument("-o", "--output", required=True, type=Path, help="model folder to write")
    p.add_argument(
        "--channels", type=positive(int), nargs="+", help="UNet widths (default: the paper's 32 64 128 256 512)"
    )
    p.add_argument("--num-res-units", type=number(int, low=0), help="residual units per level (default: the paper's 2)")
    p.add_argument(
        "--like",
        type=Path,
        metavar="MODEL_DIR",
        help="take the network and the preprocessing/inference settings from this model folder's model.json "
        "(e.g. a click-aware or another grid's model)",
    )
    p.add_argument(
        "--target-spacing",
        type=positive(float),
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="grid the weights were trained on, mm (default 2 2 2)",
    )
    p.set_defaults(func=import_weights)

    p = sub.add_parser("phantom", help="write synthetic whole-body PET/CT studies with labels")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder to write (added to, never replaced)")
    p.add_argument("-n", type=positive(int), default=1, help="number of studies")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same studies")
    p.add_argument("--tracer", choices=("fdg", "psma"), default="fdg", help="uptake pattern")
    p.add_argument(
        "--layout",
        choices=("nnunet", "gc"),
        default="nnunet",
        help="nnunet: imagesTr/ + labelsTr/; gc: a Grand Challenge input folder",
    )
    p.add_argument(
        "--shape", type=positive(int), nargs=3, default=(80, 64, 160), metavar=("X", "Y", "Z"), help="PET voxels"
    )
    p.add_argument(
        "--spacing", type=positive(float), nargs=3, default=(5.0, 5.0, 4.5), metavar=("X", "Y", "Z"), help="PET mm"
    )
    p.add_argument("--ct-spacing", type=positive(float), nargs=3, metavar=("X", "Y", "Z"), help="CT on its own grid")
    p.add_argument("--lesions", type=positive(int), help="lesions per study (default: random 1-6)")
    p.add_argument(
        "--hard", action="store_true", help="small faint lesions and unlabelled lesion-like uptake (for click models)"
    )
    p.set_defaults(func=phantom)

    p = sub.add_parser("compare", help="compare an output folder with the expected one (test.sh)")
    p.add_argument("expected", type=Path, help="folder of expected outputs")
    p.add_argument("actual", type=Path, help="folder of outputs to check")
    p.add_argument(
        "--min-dice", type=number(float, low=0, high=1, low_open=True), default=0.99, help="least Dice per mask"
    )
    p.set_defaults(func=compare)


def qc(args: argparse.Namespace) -> int:
    from petseg.io import read_image
    from petseg.layout import strip_suffix
    from petseg.qc import render_qc

    render_qc(
        pet=read_image(args.pet, role="PET"),
        mask=read_image(args.mask, role="mask"),
        gt=read_image(args.gt, role="ground truth") if args.gt else None,
        output=args.output,
        suv_window=tuple(args.suv_window),
        title=strip_suffix(args.mask) if args.title is None else args.title,
        sources={"PET": str(args.pet), "mask": str(args.mask), "ground truth": str(args.gt)},
    )
    return 0


def import_weights(args: argparse.Namespace) -> int:
    from petseg.model import ModelFolder, network_kwargs
    from petseg.model_write import import_weights as write_imported

    if args.like is not None:  # another model folder's network and settings (click-aware, another grid)
        if args.channels or args.num_res_units is not None:
            raise ConfigError("--like", "gives the network already: drop --channels/--num-res-units")
        like = ModelFolder.open(args.like)
        network, settings = like.network, like.settings
    else:
        network, settings = network_kwargs(channels=args.channels, num_res_units=args.num_res_units), None
    if args.target_spacing:
        from petseg.settings import Settings

        settings = (settings or Settings()).with_overrides(target_spacing=args.target_spacing)
    folder = write_imported(args.files, args.output, network=network, settings=settings)
    print(f"model folder {folder.path}: folds {[f.fold for f in folder.folds]}")
    return 0


def phantom(args: argparse.Namespace) -> int:
    from petseg.phantom import make_study, write_study

    for index in tqdm(range(args.n), desc="phantom", unit="study", disable=True if args.n < 2 else None):
        study = make_study(
            tracer=args.tracer,
            seed=args.seed,
            index=index,
            shape=tuple(args.shape),
            spacing=tuple(args.spacing),
            ct_spacing=tuple(args.ct_spacing) if args.ct_spacing else None,
            n_lesions=args.lesions,
            hard=args.hard,
        )
        for path in write_study(study, args.output, layout=args.layout):
            log.info("wrote %s", path)
    return 0


def compare(args: argparse.Namespace) -> int:
    from petseg.compare import compare_outputs

    result = compare_outputs(args.expected, args.actual, min_dice=args.min_dice)
    for problem in result.problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    print(f"{len(result.checked)} file(s) compared, {len(result.problems)} problem(s)")
    return 0 if result.ok else 1
