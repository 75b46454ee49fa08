"""Grand Challenge entry point: ``python process.py [--input /input] [--output /output]``.

A thin handler over ``petseg.gc``; weights come from ``weights/`` beside this file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from petseg.frontend import (
    ArgumentParser,
    add_device_option,
    add_speed_options,
    configure_threads,
    run_guarded,
    setup_logging,
    speed_overrides,
)

configure_threads()  # before torch is imported: a Grand Challenge instance may have 4 of the host's CPUs

from petseg import grand_challenge as gc  # noqa: E402  (no torch: see job())

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, default=Path("/input"), help="input folder (default /input)")
    parser.add_argument("--output", type=Path, default=Path("/output"), help="output folder (default /output)")
    parser.add_argument(
        "--model-dir", type=Path, default=HERE / "weights", help="model folder (default weights/ beside process.py)"
    )
    parser.add_argument(
        "--interface",
        choices=sorted(gc.INTERFACES),
        default=os.environ.get("PETSEG_GC_INTERFACE", "autopet3"),  # the image's build argument INTERFACE
        help="Grand Challenge interface (default $PETSEG_GC_INTERFACE, else autopet3)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="folder kept between the steps of an interactive case (default: the interface's, /cache for autopet5)",
    )
    add_device_option(parser)
    budgets = ", ".join(f"{name} {i.time_budget_s:g} s" for name, i in sorted(gc.INTERFACES.items()))
    add_speed_options(parser, time_budget_default=f"the interface's limit less 30 s: {budgets}")
    args = parser.parse_args(argv)
    if args.interface not in gc.INTERFACES:  # argparse does not check a default against the choices
        parser.error(f"PETSEG_GC_INTERFACE={args.interface!r} is not one of {sorted(gc.INTERFACES)}")
    if args.time_budget is None:  # the challenge's limit per case, less 30 s for start-up, reading, writing
        args.time_budget = gc.INTERFACES[args.interface].time_budget_s
    setup_logging()

    def job() -> int:
        from petseg.model import ModelFolder  # model.json only: no torch yet

        settings = ModelFolder.open(args.model_dir).settings
        gc.check_job(args.input, args.output, args.interface, takes_clicks=settings.click_sigma_mm is not None)
        # the study's files decompress while torch and MONAI import and the folds load
        ahead = gc.read_ahead(args.input, args.interface, settings=settings)
        from petseg.predictor import Predictor

        predictor = Predictor.from_model_dir(args.model_dir, device=args.device, **speed_overrides(args))
        if args.device == "auto" and predictor.device.type == "cpu":  # the platform gives a GPU: say it was lost
            gc.log.warning("CUDA is not available: running on the CPU")
        gc.run(
            input_dir=args.input,
            output_dir=args.output,
            predictor=predictor,
            interface=args.interface,
            cache_dir=args.cache,
            ahead=ahead,
        )
        return 0

    return run_guarded("process.py", job)


if __name__ == "__main__":
    sys.exit(main())
