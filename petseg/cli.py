"""``petseg`` command line: thin wrappers over the package."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from petseg.clicks import MAX_CLICKS
from petseg.errors import ConfigError, InputError
from petseg.frontend import (
    ArgumentParser,
    add_speed_options,
    configure_threads,
    number,
    positive,
    run_guarded,
    setup_logging,
    speed_overrides,
)
from petseg.train.cli import add_train_commands

log = logging.getLogger("petseg")


def _make_predictor(args: argparse.Namespace, *, device: str | None = None):
    from petseg.predictor import Predictor

    # the lesion report and the QC picture show each lesion's confidence and fold vote
    report = getattr(args, "report", False) or getattr(args, "qc", False)
    return Predictor.from_model_dir(
        args.model_dir,
        device=device or args.device,
        sw_batch_size=args.sw_batch_size,
        threshold=args.threshold,
        uncertainty=getattr(args, "save_uncertainty", False) or report or None,
        fold_votes=report or None,
        click_removal=False if getattr(args, "no_click_removal", False) else None,
        progress=getattr(args, "verbose", False),
        **speed_overrides(args),
    )


def add_click_removal_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-click-removal",
        action="store_true",
        help="background clicks only reach the network; by default one on a predicted lesion also removes it",
    )


def _predict(args: argparse.Namespace) -> int:
    if args.pet_dicom or args.ct_dicom:
        return _predict_dicom(args)
    if args.dicom_seg:
        raise ConfigError("--dicom-seg", "needs DICOM input (--pet-dicom and --ct-dicom)")
    if args.input is None:
        raise ConfigError("petseg predict", "give -i INPUT, or --pet-dicom DIR and --ct-dicom DIR")
    from petseg.cohort import Job, Manifest, Shard, default_workers, rank_device, run_cohort
    from petseg.io import check_output_folder
    from petseg.layout import find_cases, map_path, output_path

    if args.part_id is not None and args.num_parts is None:
        raise ConfigError("--part-id", "needs --num-parts")
    if args.num_parts is not None:
        shard = Shard(args.num_parts, args.part_id or 0)
    else:
        shard = Shard.from_environment() or Shard()  # torchrun: one part per process
    cases, problems = find_cases(args.input)
    check_output_folder(args.output)
    click_files = clicks_by_case([case.name for case in cases], args.clicks)  # before the model loads
    cases = shard.select(cases, key=lambda case: case.name)
    problems = problems if shard.part_id == 0 else []  # each incomplete case is reported once
    if shard.num_parts > 1:
        log.info("part %d of %d: %d case(s)", shard.part_id, shard.num_parts, len(cases))
    for problem in problems:  # an incomplete case does not stop the others
        log.error("skipped: %s", problem)
    failed = [f"{Path(p.source).name} ({p.problem})" for p in problems]
    if not cases:
        log.info("no case to predict")
        return 1 if failed else 0
    predictor = _make_predictor(args, device=rank_device(args.device))
    jobs = [
        Job(
            name=case.name,
            ct=case.ct,
            pet=case.pet,
            mask=output_path(case, args.output),
            probability=map_path(case, args.output, kind="probability") if args.save_probabilities else None,
            uncertainty=map_path(case, args.output, kind="uncertainty") if args.save_uncertainty else None,
            report=args.report,
            qc=args.qc,
            clicks=click_files.get(case.name),
            clicks_world=args.clicks_world,
        )
        for case in cases
    ]
    manifest = Manifest(
        args.output,
        model=predictor.model_info(),
        settings=predictor.settings,
        shard=shard,
        device=str(predictor.device),
    )
    workers = default_workers(predictor.device.type) if args.workers is None else args.workers
    if workers:
        workers = min(workers, len(jobs))
    summary = run_cohort(jobs, predictor=predictor, manifest=manifest, workers=workers, overwrite=args.overwrite)
    failed += [f"{name} ({message})" for name, message in summary.failed.items()]
    log.info("%s; manifest %s", summary.line(), manifest.case_log)
    if failed:
        log.error("%d case(s) failed: %s", len(failed), "; ".join(failed))
        return 1
    return 0


def clicks_by_case(cases: list[str], clicks: Path | None) -> dict[str, Path]:
    """--clicks: a JSON file (one case; its form is checked now, before any work), or a folder
    of ``<case>_clicks.json`` (a case without one runs without clicks; files that match no
    case get a warning: a misnamed file would otherwise be silently unused)."""
    from petseg.clicks import check_clicks_file

    if clicks is None or not cases:
        return {}
    if clicks.is_dir():
        found = {case: clicks / f"{case}_clicks.json" for case in cases}
        found = {case: path for case, path in found.items() if path.is_file()}
        unused = sorted(p.name for p in clicks.glob("*.json") if p not in set(found.values()))
        if unused:
            log.warning(
                "--clicks %s: %d file(s) match no case (<case>_clicks.json), not used: %s",
                clicks,
                len(unused),
                ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""),
            )
        if not found:
            log.warning(
                "--clicks %s: no <case>_clicks.json for any of the %d case(s): all run without clicks",
                clicks,
                len(cases),
            )
        elif len(found) < len(cases):
            log.info(
                "--clicks %s: %d of %d case(s) have clicks, the others run without", clicks, len(found), len(cases)
            )
        return found
    if not clicks.exists():
        raise ConfigError("--clicks", f"{clicks}: no such file or folder")
    if len(cases) > 1:
        raise ConfigError("--clicks", f"{clicks} is one file but the input holds {len(cases)} cases: give a folder")
    check_clicks_file(clicks)
    return {cases[0]: clicks}


def _predict_dicom(args: argparse.Namespace) -> int:
    from petseg.dicom import read_ct, read_pet_suv, study_name, write_dicom_seg
    from petseg.io import write_image

    if not (args.pet_dicom and args.ct_dicom):
        raise ConfigError("petseg predict", "DICOM input needs both --pet-dicom and --ct-dicom")
    if args.clicks is not None:
        from petseg.clicks import check_clicks_file

        check_clicks_file(args.clicks)  # before the DICOM is read and the model loaded
    pet, pet_datasets = read_pet_suv(args.pet_dicom, uid=args.pet_series)
    ct = read_ct(args.ct_dicom, uid=args.ct_series)
    prediction = _make_predictor(args).predict_images(
        ct,
        pet,
        ct_source=str(args.ct_dicom),
        pet_source=str(args.pet_dicom),
        clicks=args.clicks,
        clicks_world=args.clicks_world,
    )
    mask = prediction.mask
    name = study_name(pet_datasets)
    mask_path = write_image(mask, Path(args.output) / f"{name}.nii.gz")
    log.info("wrote %s", mask_path)
    if args.dicom_seg:
        log.info("wrote %s", write_dicom_seg(mask, pet_datasets, Path(args.output) / f"{name}_seg.dcm"))
    if args.report or args.qc:
        from petseg.cohort import write_extras

        write_extras(prediction, pet=pet, name=name, output_dir=Path(args.output), report=args.report, qc=args.qc)
    return 0


def _convert_dicom(args: argparse.Namespace) -> int:
    from petseg.dicom import convert_dicom

    if args.pet_dicom is None:
        raise ConfigError("petseg convert-dicom", "give --pet-dicom DIR (and --ct-dicom DIR for the CT files)")
    paths = convert_dicom(
        pet_dir=args.pet_dicom, ct_dir=args.ct_dicom, output=args.output, pet_uid=args.pet_series, ct_uid=args.ct_series
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from petseg.evaluate import evaluate, pooled_calibration, rank, read_groups, summarize
    from petseg.io import write_csv

    if args.prob and len(args.pred) > 1:
        raise ConfigError("--prob", "give one --pred with --prob (the maps belong to one prediction)")
    groups = read_groups(args.groups) if args.groups else None
    summaries, rows, lesion_rows = {}, [], []
    for pred in args.pred:
        results, lesions = evaluate(gt=args.gt, pred=pred, pet=args.pet, prob=args.prob, groups=groups)
        calibration = pooled_calibration(results)
        if calibration is not None:
            from petseg.calibration import reliability_diagram

            png = args.reliability or (
                Path(args.out).with_name(Path(args.out).stem + "_reliability.png")
                if args.out
                else Path("reliability.png")
            )
            print(f"wrote {reliability_diagram(calibration, png)}")
        tag = {"prediction": str(pred)} if len(args.pred) > 1 else {}
        rows += [{**r.row(), **tag} for r in results]
        lesion_rows += [{**r, **tag} for r in lesions]
        summaries[str(pred)] = summarize(results)
    if args.out:
        write_csv(rows, args.out)
        if lesion_rows:
            write_csv(lesion_rows, Path(args.out).with_name(Path(args.out).stem + "_lesions.csv"))
    for pred, summary in summaries.items():
        print(f"{pred}:")
        for group, s in summary.items():
            means = f"DSC {s['dsc']:.4f}  FPV {s['fpv_ml']:.3f} ml  FNV {s['fnv_ml']:.3f} ml"
            means += f"  lesions: sensitivity {s['lesion_sensitivity']:.3f} precision {s['lesion_precision']:.3f}"
            means += f" F1 {s['lesion_f1']:.3f} (FN {s['fn_lesions']}, FP {s['fp_lesions']})"
            if "ece" in s:
                means += f"  ECE {s['ece']:.4f}"
            print(f"  {group:>6}: {s['cases']:4d} cases  {means}")
    if len(summaries) > 1:
        print("ranking (0.5 DSC + 0.25 FPV + 0.25 FNV ranks, mean over groups; lower is better):")
        for position, row in enumerate(rank(summaries), 1):
            print(f"  {position}. {row['prediction']}  score {row['score']:.3f}")
    return 0


def _evaluate_interactive(args: argparse.Namespace) -> int:
    from petseg.interactive import interactive_case, plot_curves, summarize_curves
    from petseg.io import check_output_folder, write_csv
    from petseg.layout import find_cases, index_images

    cases, problems = find_cases(args.input)
    if problems:
        raise problems[0]
    if not cases:
        raise InputError(args.input, "no cases (<case>_0000 CT and <case>_0001 PET)")
    labels = index_images(args.gt, role="ground truth")
    missing = [c.name for c in cases if c.name not in labels]
    if missing:
        raise InputError(args.gt, f"no ground truth for {len(missing)} case(s): {', '.join(missing[:5])}")
    check_output_folder(args.output)
    predictor = _make_predictor(args)
    if predictor.settings.click_sigma_mm is None and args.clicks > 0:
        log.warning("the model takes no clicks: every step gives the automatic result")
    curves = [
        interactive_case(predictor, case=c.name, ct=c.ct, pet=c.pet, gt=labels[c.name], clicks=args.clicks)
        for c in tqdm(cases, desc="interactive", unit="case", disable=True if len(cases) < 2 else None)
    ]
    out = Path(args.output)
    write_csv([row for c in curves for row in c.rows], out / "interactive.csv")
    summary = summarize_curves(curves)
    per_case = [
        {
            "case": c.case,
            **{f"{m}_{k}": getattr(c, k)(m) for m in ("dsc", "fpv_ml", "fnv_ml") for k in ("final", "auc")},
        }
        for c in curves
    ]
    write_csv(per_case, out / "interactive_cases.csv")
    plot_curves(curves, out / "interactive.png", title=f"{len(curves)} studies, 0-{args.clicks} simulated clicks")
    print(
        f"{summary['cases']} cases: DSC {summary['dsc_final']:.4f} after {args.clicks} clicks "
        f"(AUC {summary['dsc_auc']:.3f}), FPV {summary['fpv_ml_final']:.3f} ml (AUC {summary['fpv_ml_auc']:.3f}), "
        f"FNV {summary['fnv_ml_final']:.3f} ml (AUC {summary['fnv_ml_auc']:.3f})"
    )
    print(f"wrote {out / 'interactive.csv'}, {out / 'interactive_cases.csv'}, {out / 'interactive.png'}")
    return 0


def _qc(args: argparse.Namespace) -> int:
    from petseg.io import read_image
    from petseg.qc import render_qc

    render_qc(
        pet=read_image(args.pet, role="PET"),
        mask=read_image(args.mask, role="mask"),
        gt=read_image(args.gt, role="ground truth") if args.gt else None,
        output=args.output,
        suv_window=tuple(args.suv_window),
        title=args.title or "",
        sources={"PET": str(args.pet), "mask": str(args.mask), "ground truth": str(args.gt)},
    )
    return 0


def _import_weights(args: argparse.Namespace) -> int:
    from petseg.model import ModelFolder, import_weights, network_kwargs

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
    folder = import_weights(args.files, args.output, network=network, settings=settings)
    print(f"model folder {folder.path}: folds {[f.fold for f in folder.folds]}")
    return 0


def _phantom(args: argparse.Namespace) -> int:
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


def _compare(args: argparse.Namespace) -> int:
    from petseg.compare import compare_outputs

    result = compare_outputs(args.expected, args.actual, min_dice=args.min_dice)
    for problem in result.problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    print(f"{len(result.checked)} file(s) compared, {len(result.problems)} problem(s)")
    return 0 if result.ok else 1


def add_dicom_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pet-dicom", type=Path, help="folder holding the PET DICOM series (searched recursively)")
    p.add_argument("--ct-dicom", type=Path, help="folder holding the CT DICOM series")
    p.add_argument("--pet-series", help="SeriesInstanceUID of the PET series when the folder holds several")
    p.add_argument("--ct-series", help="SeriesInstanceUID of the CT series when the folder holds several")


def build_parser() -> argparse.ArgumentParser:
    # -v/-q before or after the subcommand; SUPPRESS keeps a subcommand from resetting the other
    common = ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="warnings and errors only"
    )
    parser = ArgumentParser(prog="petseg", description="PET/CT lesion segmentation (autoPET III).", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub_add = sub.add_parser
    sub.add_parser = lambda *a, **kw: sub_add(*a, parents=[common], **kw)

    p = sub.add_parser("predict", help="segment every case of a folder, or one DICOM study")
    p.add_argument("-i", "--input", type=Path, help="nnU-Net-named folder or Grand Challenge input")
    add_dicom_options(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (one mask per case)")
    p.add_argument("--model-dir", type=Path, help="model folder (default: $PETSEG_MODEL_DIR or ./weights)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto: CUDA if available)")
    p.add_argument("--sw-batch-size", type=positive(int), help="windows per network call (default from model.json)")
    add_speed_options(p)
    p.add_argument("--threshold", type=float, help="lesion where the mean probability > T (default model.json's, 0.5)")
    p.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write <case>_probability.<ext>: the ensemble's mean foreground probability (float32)",
    )
    p.add_argument(
        "--save-uncertainty",
        action="store_true",
        help="also write <case>_uncertainty.<ext>: the standard deviation of the folds' probabilities (float32)",
    )
    p.add_argument("--qc", action="store_true", help="also write <case>_qc.png (PET MIPs with lesion outlines)")
    p.add_argument("--report", action="store_true", help="also write <case>_lesions.json and .csv")
    p.add_argument("--dicom-seg", action="store_true", help="also write <case>_seg.dcm referencing the PET series")
    p.add_argument(
        "--workers",
        type=number(int, low=0),
        help="background processes that read/preprocess the next cases and restore/write finished ones "
        "while the network runs (0: none; default 2 on a GPU, 0 on the CPU)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo cases the run manifest lists as done")
    p.add_argument(
        "--clicks",
        type=Path,
        help="lesion clicks for a click-aware model: a JSON file (autoPET IV format, PET voxel indices) "
        "or a folder of <case>_clicks.json",
    )
    p.add_argument("--clicks-world", action="store_true", help="the clicks' points are in mm (LPS), not voxel indices")
    add_click_removal_option(p)
    p.add_argument("--num-parts", type=positive(int), help="split the cases into N parts (cluster job arrays)")
    p.add_argument("--part-id", type=number(int, low=0), help="which part this process predicts, 0..N-1")
    p.set_defaults(func=_predict)

    p = sub.add_parser("convert-dicom", help="DICOM PET[/CT] -> SUV.nii.gz [CT.nii.gz, CTres.nii.gz]")
    add_dicom_options(p)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.set_defaults(func=_convert_dicom)

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
    p.add_argument("--reliability", type=Path, help="reliability diagram PNG (default: <out>_reliability.png)")
    p.add_argument("--groups", type=Path, help="CSV with columns case,group (default: fdg/psma name prefix)")
    p.add_argument("--out", type=Path, help="per-case CSV (and <name>_lesions.csv with --pet)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "evaluate-interactive",
        help="interactive evaluation (autoPET IV measures): DSC/FPV/FNV after 0..N error-driven clicks, and their AUC",
    )
    p.add_argument("-i", "--input", required=True, type=Path, help="nnU-Net-named images folder")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth masks folder (<case>.<ext>)")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for interactive.csv, _cases.csv, .png")
    p.add_argument("--model-dir", type=Path, help="model folder (default: $PETSEG_MODEL_DIR or ./weights)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    # autoPET IV scores 0..10 clicks; more would also exceed the 10 per kind a clicks file may hold
    p.add_argument(
        "--clicks",
        type=number(int, low=0, high=MAX_CLICKS),
        default=MAX_CLICKS,
        help="clicks per study, 0..10 (default 10)",
    )
    add_click_removal_option(p)
    p.add_argument("--sw-batch-size", type=positive(int), help="windows per network call (default from model.json)")
    p.add_argument("--threshold", type=float, help="lesion where the mean probability > T (default model.json's)")
    add_speed_options(p)
    p.set_defaults(func=_evaluate_interactive)

    p = sub.add_parser("qc", help="PNG with coronal/sagittal PET MIPs and lesion outlines")
    p.add_argument("--pet", required=True, type=Path)
    p.add_argument("--mask", required=True, type=Path)
    p.add_argument("--gt", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--suv-window", type=float, nargs=2, default=(0.0, 10.0), metavar=("LOW", "HIGH"))
    p.add_argument("--title")
    p.set_defaults(func=_qc)

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
    p.set_defaults(func=_import_weights)

    add_train_commands(sub)

    p = sub.add_parser("phantom", help="write synthetic whole-body PET/CT studies with labels")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("-n", type=positive(int), default=1, help="number of studies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracer", choices=("fdg", "psma"), default="fdg")
    p.add_argument("--layout", choices=("nnunet", "gc"), default="nnunet")
    p.add_argument("--shape", type=positive(int), nargs=3, default=(80, 64, 160), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=positive(float), nargs=3, default=(5.0, 5.0, 4.5), metavar=("X", "Y", "Z"))
    p.add_argument("--ct-spacing", type=positive(float), nargs=3, metavar=("X", "Y", "Z"), help="CT on its own grid")
    p.add_argument("--lesions", type=positive(int), help="lesions per study (default: random 1-6)")
    p.add_argument(
        "--hard", action="store_true", help="small faint lesions and unlabelled lesion-like uptake (for click models)"
    )
    p.set_defaults(func=_phantom)

    p = sub.add_parser("compare", help="compare an output folder with the expected one (test.sh)")
    p.add_argument("expected", type=Path)
    p.add_argument("actual", type=Path)
    p.add_argument("--min-dice", type=number(float, low=0, high=1, low_open=True), default=0.99)
    p.set_defaults(func=_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_threads()  # torch and SimpleITK are imported later, by the command
    args = build_parser().parse_args(argv)
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    setup_logging(verbose=verbose, quiet=quiet)
    return run_guarded("petseg", lambda: args.func(args), verbose=verbose)


if __name__ == "__main__":
    sys.exit(main())
