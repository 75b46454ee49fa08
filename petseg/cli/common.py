"""What several commands share: the model options and the predictor they make, DICOM and
click options."""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.frontend import add_speed_options, positive, speed_overrides


def add_model_options(p: argparse.ArgumentParser, *, device_help: str = "auto | cpu | cuda[:N]") -> None:
    """The model folder and how it runs: ``predict`` and ``evaluate-interactive``."""
    p.add_argument("--model-dir", type=Path, help="model folder (default: $PETSEG_MODEL_DIR or ./weights)")
    p.add_argument("--device", default="auto", help=device_help)
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
    return Predictor.from_model_dir(
        args.model_dir,
        device=device or args.device,
        sw_batch_size=args.sw_batch_size,
        threshold=args.threshold,
        click_removal=False if args.no_click_removal else None,
        progress=args.verbose,
        **outputs.settings(),
        **speed_overrides(args),
    )
