"""``petseg evaluate`` (challenge metrics, detection, calibration, ranking) and
``petseg evaluate-interactive`` (autoPET IV curves over simulated clicks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from petseg.cli.common import add_click_removal_option, add_model_options, make_predictor
from petseg.clicks import MAX_CLICKS
from petseg.frontend import number
from petseg.scribbles import CHOICES


def add_parsers(sub) -> None:
    p = sub.add_parser("evaluate", help="challenge metrics (DSC, FPV, FNV) and lesion measures")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth mask file or folder")
    p.add_argument("--pred", required=True, type=Path, action="append", help="prediction file or folder (repeatable)")
    p.add_argument("--pet", type=Path, help="PET (SUV) file or folder: adds TMTV, TLG, SUVmax, SUVmean, lesion table")
    p.add_argument(
        "--prob",
        type=Path,
        help="probability map file or folder (<case>_probability.<ext>, from predict --save-probabilities): "
        "adds the expected calibration error (needs --pet) and a reliability diagram",
    )
    p.add_argument("--reliability", type=Path, help="reliability diagram PNG (default: <output>_reliability.png)")
    p.add_argument("--groups", type=Path, help="CSV with columns case,group (default: fdg/psma name prefix)")
    p.add_argument(
        "-o", "--output", "--out", dest="out", type=Path, help="per-case CSV (and <name>_lesions.csv with --pet)"
    )
    p.set_defaults(func=evaluate)

    p = sub.add_parser(
        "evaluate-interactive",
        help="interactive evaluation (autoPET IV measures): DSC/FPV/FNV after 0..N error-driven clicks, and their AUC",
    )
    p.add_argument("-i", "--input", required=True, type=Path, help="nnU-Net-named images folder")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth masks folder (<case>.<ext>)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for interactive.csv, _cases.csv, .png")
    add_model_options(p)
    # autoPET IV scores 0..10 clicks; more would also exceed the 10 per kind a clicks file may hold
    p.add_argument(
        "--num-clicks",
        type=number(int, low=0, high=MAX_CLICKS),
        default=MAX_CLICKS,
        help="simulated clicks per study, 0..10 (default 10)",
    )
    p.add_argument(
        "--protocol",
        choices=("autopet4", "autopet5"),
        default="autopet4",
        help="autopet4: error-driven clicks at region centres; autopet5: an initial mask and 5 simulated "
        "scribbles, with Dice, DMM and their AUCs (docs/interactive.md)",
    )
    p.add_argument(
        "--style",
        choices=CHOICES,
        default="mixed",
        help="autopet5 scribble style: skeleton centerline, random line, boundary walk, or one at random per step",
    )
    p.add_argument("--seed", type=number(int, low=0, high=2**31 - 1), default=0, help="autopet5 scribble seed")
    p.add_argument("--clicks", type=_renamed_clicks, help=argparse.SUPPRESS)
    add_click_removal_option(p)
    p.add_argument("--threshold", type=float, help="lesion where the mean probability > T (default model.json's)")
    p.set_defaults(func=evaluate_interactive)


def _renamed_clicks(text: str) -> None:
    raise argparse.ArgumentTypeError(
        f"the count of simulated clicks is --num-clicks {text}; --clicks names a clicks file (petseg predict)"
    )


def evaluate(args: argparse.Namespace) -> int:
    from petseg.evaluate import evaluate_predictions

    run = evaluate_predictions(
        gt=args.gt,
        preds=args.pred,
        pet=args.pet,
        prob=args.prob,
        groups=args.groups,
        table=args.out,
        reliability=args.reliability,
    )
    for path in run.written:
        if path.suffix == ".png":
            print(f"wrote {path}")
    for pred, summary in run.summaries.items():
        print(f"{pred}:")
        for group, s in summary.items():
            means = f"DSC {s['dsc']:.4f}  FPV {s['fpv_ml']:.3f} ml  FNV {s['fnv_ml']:.3f} ml"
            means += f"  lesions: sensitivity {s['lesion_sensitivity']:.3f} precision {s['lesion_precision']:.3f}"
            means += f" F1 {s['lesion_f1']:.3f} (FN {s['fn_lesions']}, FP {s['fp_lesions']})"
            if "dmm" in s:
                means += f"  DMM {s['dmm']:.3f}"
            if "ece" in s:
                means += f"  ECE {s['ece']:.4f}"
            print(f"  {group:>6}: {s['cases']:4d} cases  {means}")
    ranking = run.ranking()
    if ranking:
        print("ranking (0.5 DSC + 0.25 FPV + 0.25 FNV ranks, mean over groups; lower is better):")
        for position, row in enumerate(ranking, 1):
            print(f"  {position}. {row['prediction']}  score {row['score']:.3f}")
    return 0


def evaluate_interactive(args: argparse.Namespace) -> int:
    if args.protocol == "autopet5":
        return evaluate_autopet5(args)
    from petseg.interactive import evaluate_interactive as run

    summary, written = run(
        args.input, args.gt, args.output, make_predictor=lambda: make_predictor(args), clicks=args.num_clicks
    )
    print(
        f"{summary['cases']} cases: DSC {summary['dsc_final']:.4f} after {args.num_clicks} clicks "
        f"(AUC {summary['dsc_auc']:.3f}), FPV {summary['fpv_ml_final']:.3f} ml (AUC {summary['fpv_ml_auc']:.3f}), "
        f"FNV {summary['fnv_ml_final']:.3f} ml (AUC {summary['fnv_ml_auc']:.3f})"
    )
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def evaluate_autopet5(args: argparse.Namespace) -> int:
    from petseg.protocol import STEPS, evaluate_protocol

    summary, written = evaluate_protocol(
        args.input, args.gt, args.output, make_predictor=lambda: make_predictor(args), style=args.style, seed=args.seed
    )
    print(
        f"{summary['cases']} cases, {STEPS} {args.style} scribble steps: Dice-AUC {summary['dice_auc']:.4f} "
        f"(step 0 {summary['dice_step0']:.4f}, step {STEPS} {summary['dice_final']:.4f}), DMM-AUC "
        f"{summary['dmm_auc']:.4f} (step 0 {summary['dmm_step0']:.4f}, step {STEPS} {summary['dmm_final']:.4f}), "
        f"score {summary['score']:.4f}"
    )
    for path in written:
        print(f"wrote {path}")
    return 0
