"""``petseg report``: the measures of a lesion mask over its PET (:mod:`petseg.reports`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from petseg.errors import ConfigError
from petseg.frontend import number

log = logging.getLogger("petseg")
COORDINATE = number(float, low=-1e6, high=1e6)


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "report",
        help="measure lesion masks: SUVmax/peak/mean, MTV, TLG, TMTV by convention, Dmax (docs/measures.md)",
        description="Measure a lesion mask (petseg's, a manual contour, another tool's) over its PET, "
        "or a folder of them: <case>_lesions.json/.csv per study, and studies.csv + lesions.csv over a folder.",
    )
    p.add_argument(
        "--pet",
        required=True,
        type=Path,
        help="PET in SUV (image file), a PET DICOM series folder, or a folder of studies in any layout "
        "predict reads, or of <case>.<ext> PET files",
    )
    p.add_argument(
        "--mask", required=True, type=Path, help="lesion mask (0/1 or labels), or a folder of <case>.<ext> masks"
    )
    p.add_argument("--ct", type=Path, help="the study's CT on the PET grid: checked for a swapped CT/PET only")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder to write the reports to")
    p.add_argument("--name", help="case name of a single study (default: after the PET file or folder)")
    p.add_argument(
        "--suv",
        choices=("bw", "lbm", "bsa"),
        default="bw",
        help="SUV normalisation: body weight, lean body mass (SUL, Janmahasatian), body surface area (Du Bois)",
    )
    p.add_argument(
        "--min-volume",
        type=number(float, low=0.0, high=1e6),
        default=0.0,
        metavar="ML",
        help="count only lesions of at least this volume, in every convention (0: all)",
    )
    liver = p.add_mutually_exclusive_group()
    liver.add_argument("--liver-mask", type=Path, help="liver reference mask (a folder: matched by case) for PERCIST")
    liver.add_argument(
        "--liver-centre",
        type=COORDINATE,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="centre of a 3 cm liver sphere for PERCIST, mm in patient LPS coordinates (3D Slicer shows RAS: negate X and Y)",
    )
    p.add_argument(
        "--weight", type=number(float, low=1, high=500), metavar="KG", help="patient weight (over the DICOM header)"
    )
    p.add_argument(
        "--height", type=number(float, low=30, high=250), metavar="CM", help="patient height (over the DICOM header)"
    )
    p.add_argument("--sex", type=str.upper, choices=("M", "F"), help="patient sex, for SUL (over the DICOM header)")
    p.set_defaults(func=report)


def report(args: argparse.Namespace) -> int:
    from petseg.normalise import Patient
    from petseg.report import ReportSettings
    from petseg.reports import find_studies, report_studies

    settings = ReportSettings(
        suv=args.suv,
        min_volume_ml=args.min_volume,
        liver_centre_mm=None if args.liver_centre is None else tuple(args.liver_centre),
    )
    studies = find_studies(args.pet, args.mask, liver_mask=args.liver_mask, name=args.name)
    single = len(studies) == 1 and (args.pet.is_file() or not args.mask.is_dir())
    given = [
        flag
        for flag, value in (("--weight", args.weight), ("--height", args.height), ("--sex", args.sex))
        if value is not None
    ]
    if not single:
        for flag, value in (
            ("--liver-centre", args.liver_centre),
            ("--ct", args.ct),
            (given[0] if given else "", given),
        ):
            if value:
                raise ConfigError(flag, f"applies to one study; {args.pet} is a folder of {len(studies)}")
    patient = Patient(args.weight, args.height, args.sex, source="the command line") if given else None
    if single and args.ct is not None:
        studies = [type(studies[0])(**{**studies[0].__dict__, "ct": args.ct})]
    failures = report_studies(studies, args.output, settings, patient=patient, tables=not single)
    if failures:
        log.error("%d of %d stud(ies) failed: %s", len(failures), len(studies), "; ".join(failures))
        return 1
    return 0
