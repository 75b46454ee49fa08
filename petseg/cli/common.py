"""What several commands share: the model options and the predictor they make, DICOM and
click options."""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.errors import ConfigError
from petseg.frontend import add_device_option, add_speed_options, number, positive, speed_overrides

FAST_OVERLAP = 0.25  # --fast: about 3.4 times fewer windows than the default 0.5


def add_model_options(p: argparse.ArgumentParser) -> None:
    """The model folder and how it runs: ``predict`` and ``evaluate-interactive``."""
    p.add_argument("--model-dir", type=Path, help="model folder (default: $PETSEG_MODEL_DIR or ./weights)")
    add_device_option(p)
    p.add_argument(
        "--folds",
        type=number(int, low=0),
        nargs="+",
        metavar="K",
        help="run only these folds of the ensemble, e.g. --folds 0 2 (default: all)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help=f"one fold (the first, or the first of --folds), window overlap {FAST_OVERLAP:g} instead of "
        "model.json's, no test-time mirroring: a quick look, not the published method",
    )
    p.add_argument("--sw-batch-size", type=positive(int), help="windows per network call (default from model.json)")
    add_speed_options(p)


def add_click_removal_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-click-removal",
        action="store_true",
        help="background clicks only reach the network; by default one on a predicted lesion also removes it",
    )


def add_dicom_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pet-dicom", type=Path, help="folder holding the PET DICOM series (searched recursively)")
    p.add_argument("--ct-dicom", type=Path, help="folder holding the CT DICOM series")
    p.add_argument("--pet-series", help="SeriesInstanceUID of the PET series when the folder holds several")
    p.add_argument("--ct-series", help="SeriesInstanceUID of the CT series when the folder holds several")


def make_predictor(args: argparse.Namespace, *, device: str | None = None, outputs=None):
    """The predictor of a command's model options (see :func:`add_model_options`), computing
    what ``outputs`` (a :class:`petseg.folders.OutputRequest`) needs."""
    from petseg.folders import OutputRequest
    from petseg.predictor import Predictor

    outputs = outputs or OutputRequest()
    speed = speed_overrides(args)
    if args.fast:
        if args.tta:
            raise ConfigError("--fast", "runs without test-time mirroring: drop --tta or --fast")
        speed.update(tta=False, overlap=FAST_OVERLAP)
    return Predictor.from_model_dir(
        args.model_dir,
        folds=args.folds,
        max_folds=1 if args.fast else None,
        device=device or args.device,
        sw_batch_size=args.sw_batch_size,
        threshold=args.threshold,
        click_removal=False if args.no_click_removal else None,
        progress=args.verbose,
        **outputs.settings(),
        **speed,
    )
