"""``petseg`` command line: thin wrappers over the package."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from petseg.errors import InputError, PetsegError
from petseg.settings import PAPER_NETWORK

log = logging.getLogger("petseg")


@dataclass(frozen=True)
class Case:
    name: str
    ct: Path
    pet: Path
    suffix: str  # output extension, the input's


def find_cases(input_dir: str | Path) -> list[Case]:
    """Cases of an nnU-Net-named folder (``<case>_0000`` = CT, ``_0001`` = PET) or of a
    Grand Challenge input folder (``images/ct``, ``images/pet``)."""
    from petseg import gc
    from petseg.io import image_suffix, list_images, strip_suffix

    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(input_dir, "input folder not found")
    if (input_dir / "images" / "ct").is_dir() or (input_dir / "images" / "pet").is_dir():
        ct, pet = gc.find_inputs(input_dir)
        return [Case(strip_suffix(ct), ct, pet, ".mha")]
    cases = []
    for ct in list_images(input_dir):
        stem, suffix = strip_suffix(ct), image_suffix(ct)
        if not stem.endswith("_0000"):
            continue
        name = stem[: -len("_0000")]
        pet = input_dir / f"{name}_0001{suffix}"
        if not pet.is_file():
            raise InputError(pet, f"PET of case {name} not found (expected beside its CT {ct.name})")
        cases.append(Case(name, ct, pet, suffix))
    if not cases:
        raise InputError(
            input_dir, "no cases found: expected <case>_0000.<ext> (CT) + <case>_0001.<ext> (PET), or images/ct + images/pet"
        )
    return cases


def _make_predictor(args: argparse.Namespace):
    from petseg.predictor import Predictor

    return Predictor.from_model_dir(
        args.model_dir, device=args.device, sw_batch_size=args.sw_batch_size, progress=args.verbose,
        **speed_overrides(args),
    )  # fmt: skip


def _extras(args: argparse.Namespace, *, name: str, mask, pet) -> None:
    """--qc and --report for one case (``mask`` and ``pet`` images or paths)."""
    if not (args.qc or args.report):
        return
    import SimpleITK as sitk

    from petseg.io import read_image

    pet = pet if isinstance(pet, sitk.Image) else read_image(pet, role="PET")
    mask = mask if isinstance(mask, sitk.Image) else read_image(mask, role="mask")
    if args.qc:
        from petseg.qc import render_qc

        render_qc(pet=pet, mask=mask, output=Path(args.output) / f"{name}_qc.png", title=name)
    if args.report:
        from petseg.report import lesion_report, write_report

        write_report(lesion_report(mask, pet, case=name), args.output)


def _predict(args: argparse.Namespace) -> int:
    if args.pet_dicom or args.ct_dicom:
        return _predict_dicom(args)
    if args.dicom_seg:
        raise InputError("--dicom-seg", "needs DICOM input (--pet-dicom and --ct-dicom)")
    if args.input is None:
        raise InputError("petseg predict", "give -i INPUT, or --pet-dicom DIR and --ct-dicom DIR")
    cases = find_cases(args.input)
    predictor = _make_predictor(args)
    failed = []
    for case in tqdm(cases, desc="cases", unit="case", disable=len(cases) < 2):
        output = Path(args.output) / f"{case.name}{case.suffix}"
        log.info("case %s", case.name)
        try:
            predictor.predict_files(ct=case.ct, pet=case.pet, output=output)
            _extras(args, name=case.name, mask=output, pet=case.pet)
        except InputError as err:  # a bad case does not stop the others
            log.error("%s", err)
            failed.append(case.name)
    if failed:
        log.error("%d of %d case(s) failed: %s", len(failed), len(cases), ", ".join(failed))
        return 1
    return 0


def _predict_dicom(args: argparse.Namespace) -> int:
    from petseg.dicom import read_ct, read_pet_suv, study_name, write_dicom_seg
    from petseg.io import write_image

    if not (args.pet_dicom and args.ct_dicom):
        raise InputError("petseg predict", "DICOM input needs both --pet-dicom and --ct-dicom")
    pet, pet_datasets = read_pet_suv(args.pet_dicom, uid=args.pet_series)
    ct = read_ct(args.ct_dicom, uid=args.ct_series)
    mask = _make_predictor(args).predict(ct, pet, ct_source=str(args.ct_dicom), pet_source=str(args.pet_dicom))
    name = study_name(pet_datasets)
    mask_path = write_image(mask, Path(args.output) / f"{name}.nii.gz")
    log.info("wrote %s", mask_path)
    if args.dicom_seg:
        log.info("wrote %s", write_dicom_seg(mask, pet_datasets, Path(args.output) / f"{name}_seg.dcm"))
    _extras(args, name=name, mask=mask, pet=pet)
    return 0


def _convert_dicom(args: argparse.Namespace) -> int:
    from petseg.dicom import convert_dicom

    for path in convert_dicom(pet_dir=args.pet_dicom, ct_dir=args.ct_dicom, output=args.output,
                              pet_uid=args.pet_series, ct_uid=args.ct_series):  # fmt: skip
        print(f"wrote {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from petseg.evaluate import evaluate, rank, read_groups, summarize, write_csv

    groups = read_groups(args.groups) if args.groups else None
    summaries, rows, lesion_rows = {}, [], []
    for pred in args.pred:
        results, lesions = evaluate(gt=args.gt, pred=pred, pet=args.pet, groups=groups)
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
            print(f"  {group:>6}: {s['cases']:4d} cases  DSC {s['dsc']:.4f}  FPV {s['fpv_ml']:.3f} ml  FNV {s['fnv_ml']:.3f} ml")
    if len(summaries) > 1:
        print("ranking (0.5 DSC + 0.25 FPV + 0.25 FNV ranks, mean over groups; lower is better):")
        for position, row in enumerate(rank(summaries), 1):
            print(f"  {position}. {row['prediction']}  score {row['score']:.3f}")
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
    )
    return 0


def _network_from_args(args: argparse.Namespace) -> dict:
    """The paper's UNet arguments with --channels (strides 2 between levels) and --num-res-units applied."""
    network = dict(PAPER_NETWORK)
    if args.channels:
        network["channels"] = args.channels
        network["strides"] = [2] * (len(args.channels) - 1)
    if getattr(args, "num_res_units", None) is not None:
        network["num_res_units"] = args.num_res_units
    return network


def _import_weights(args: argparse.Namespace) -> int:
    from petseg.model import import_weights

    folder = import_weights(args.files, args.output, network=_network_from_args(args))
    print(f"model folder {folder.path}: folds {[f.fold for f in folder.folds]}")
    return 0


def _phantom(args: argparse.Namespace) -> int:
    from petseg.phantom import make_study, write_study

    for index in tqdm(range(args.n), desc="phantom", unit="study", disable=args.n < 2):
        study = make_study(
            tracer=args.tracer,
            seed=args.seed,
            index=index,
            shape=tuple(args.shape),
            spacing=tuple(args.spacing),
            ct_spacing=tuple(args.ct_spacing) if args.ct_spacing else None,
            n_lesions=args.lesions,
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


def _train(args: argparse.Namespace) -> int:
    from petseg.settings import Settings
    from petseg.train import TrainConfig, train_fold

    network = _network_from_args(args)
    settings = Settings(device=args.device).with_overrides(
        target_spacing=args.target_spacing, roi_size=args.roi_size, sw_batch_size=args.sw_batch_size
    )
    config = TrainConfig(
        data_dir=args.data, out_dir=args.output, fold=args.fold, n_folds=args.folds, seed=args.seed,
        epochs=args.epochs, batch_size=args.batch_size, patch_size=tuple(args.patch_size), lr=args.lr,
        val_every=args.val_every, augment=not args.no_augment, network=network, settings=settings,
        splits_file=args.splits, device=args.device, num_workers=args.num_workers,
        sync_batchnorm=args.sync_batchnorm, init_from=args.init_from, pos_neg=tuple(args.pos_neg),
        hard_negatives=args.hard_negatives, hot_suv=args.hot_suv, precision=args.precision,
        focal_weight=tuple(args.focal_weight),
    )  # fmt: skip
    for fold in range(args.folds) if args.fold == -1 else [args.fold]:
        train_fold(dataclasses.replace(config, fold=fold), resume=args.resume)
    return 0


def _assemble(args: argparse.Namespace) -> int:
    from petseg.train import assemble

    folder = assemble(args.run, args.output, description=args.description)
    print(f"model folder {folder.path}: folds {[f.fold for f in folder.folds]}")
    return 0


def add_speed_options(p: argparse.ArgumentParser, *, time_budget_default: float | None = None) -> None:
    """Options shared by ``petseg predict`` and ``process.py``."""
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="network precision (default auto: bf16 where supported; fp32 is the reference)")  # fmt: skip
    p.add_argument("--tta", action="store_true", help="average the 8 mirrorings of each window")
    default = "from model.json" if time_budget_default is None else f"{time_budget_default:g}"
    p.add_argument("--time-budget", type=float, metavar="SECONDS", default=time_budget_default,
                   help=f"drop mirrorings, then folds, if the ensemble would overrun (default {default})")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")


def speed_overrides(args: argparse.Namespace) -> dict:
    """``Settings`` overrides from the options of :func:`add_speed_options` (None = model.json's)."""
    return {"precision": args.precision, "tta": args.tta or None, "time_budget_s": args.time_budget,
            "compile": args.compile or None}  # fmt: skip


def add_dicom_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pet-dicom", type=Path, help="folder holding the PET DICOM series (searched recursively)")
    p.add_argument("--ct-dicom", type=Path, help="folder holding the CT DICOM series")
    p.add_argument("--pet-series", help="SeriesInstanceUID of the PET series when the folder holds several")
    p.add_argument("--ct-series", help="SeriesInstanceUID of the CT series when the folder holds several")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petseg", description="PET/CT lesion segmentation (autoPET III).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and window progress bars")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment every case of a folder, or one DICOM study")
    p.add_argument("-i", "--input", type=Path, help="nnU-Net-named folder or Grand Challenge input")
    add_dicom_options(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (one mask per case)")
    p.add_argument("--model-dir", type=Path, help="model folder (default: $PETSEG_MODEL_DIR or ./weights)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto: CUDA if available)")
    p.add_argument("--sw-batch-size", type=int, help="windows per network call (default from model.json)")
    add_speed_options(p)
    p.add_argument("--qc", action="store_true", help="also write <case>_qc.png (PET MIPs with lesion outlines)")
    p.add_argument("--report", action="store_true", help="also write <case>_lesions.json and .csv")
    p.add_argument("--dicom-seg", action="store_true", help="also write <case>_seg.dcm referencing the PET series")
    p.set_defaults(func=_predict)

    p = sub.add_parser("convert-dicom", help="DICOM PET/CT -> SUV.nii.gz, CT.nii.gz, CTres.nii.gz")
    add_dicom_options(p)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.set_defaults(func=_convert_dicom)

    p = sub.add_parser("evaluate", help="challenge metrics (DSC, FPV, FNV) and lesion measures")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth mask file or folder")
    p.add_argument("--pred", required=True, type=Path, action="append", help="prediction file or folder (repeatable)")
    p.add_argument("--pet", type=Path, help="PET (SUV) file or folder: adds TMTV, TLG, SUVmax, SUVmean, lesion table")
    p.add_argument("--groups", type=Path, help="CSV with columns case,group (default: fdg/psma name prefix)")
    p.add_argument("--out", type=Path, help="per-case CSV (and <name>_lesions.csv with --pet)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("qc", help="PNG with coronal/sagittal PET MIPs and lesion outlines")
    p.add_argument("--pet", required=True, type=Path)
    p.add_argument("--mask", required=True, type=Path)
    p.add_argument("--gt", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--suv-window", type=float, nargs=2, default=(0.0, 10.0))
    p.add_argument("--title")
    p.set_defaults(func=_qc)

    p = sub.add_parser("import-weights", help="turn the authors' fold checkpoints into a model folder")
    p.add_argument("files", nargs="+", type=Path, help="state dicts, e.g. fold0_model_ep=0284.pth ...")
    p.add_argument("-o", "--output", required=True, type=Path, help="model folder to write")
    p.add_argument("--channels", type=int, nargs="+", help="UNet widths (default: the paper's 32 64 128 256 512)")
    p.set_defaults(func=_import_weights)

    p = sub.add_parser("phantom", help="write synthetic whole-body PET/CT studies with labels")
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("-n", type=int, default=1, help="number of studies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tracer", choices=("fdg", "psma"), default="fdg")
    p.add_argument("--layout", choices=("nnunet", "gc"), default="nnunet")
    p.add_argument("--shape", type=int, nargs=3, default=(80, 64, 160), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=(5.0, 5.0, 4.5), metavar=("X", "Y", "Z"))
    p.add_argument("--ct-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="CT on its own grid")
    p.add_argument("--lesions", type=int, help="lesions per study (default: random 1-6)")
    p.set_defaults(func=_phantom)

    p = sub.add_parser("train", help="train fold K (or all folds with --fold -1)")
    p.add_argument("-d", "--data", required=True, type=Path, help="folder with imagesTr/ and labelsTr/")
    p.add_argument("-o", "--output", required=True, type=Path, help="run folder (cache, splits, fold_K/)")
    p.add_argument("--fold", type=int, default=0, help="fold to train; -1 trains all folds one after another")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--splits", type=Path, help="nnU-Net splits_final.json to use instead of a seeded split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch-size", type=int, nargs=3, default=(128, 128, 128))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--channels", type=int, nargs="+", help="UNet widths (default: the paper's)")
    p.add_argument("--num-res-units", type=int)
    p.add_argument("--target-spacing", type=float, nargs=3)
    p.add_argument("--roi-size", type=int, nargs=3, help="validation sliding window")
    p.add_argument("--sw-batch-size", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from fold_K/last.pt")
    p.add_argument("--sync-batchnorm", action="store_true", help="SyncBatchNorm across GPUs (under torchrun)")
    p.add_argument("--init-from", type=Path, help="start from a state dict or a model folder's fold K (fine-tuning)")
    p.add_argument("--pos-neg", type=float, nargs=2, default=(1.0, 1.0), metavar=("POS", "NEG"),
                   help="ratio of lesion- to background-centred patches (default 1 1)")  # fmt: skip
    p.add_argument("--hard-negatives", type=float, default=0.0, metavar="W",
                   help="weight, on the POS/NEG scale, of patches centred on hot background "
                        "(PET >= --hot-suv outside the label: brain, bladder, kidneys...); default 0 = off")  # fmt: skip
    p.add_argument("--hot-suv", type=float, default=3.0, help="SUV that makes background 'hot' (default 3)")
    p.add_argument("--focal-weight", type=float, nargs=2, default=(1.0, 100.0), metavar=("BG", "FG"),
                   help="class weights of the focal term (default: the paper's 1 100)")  # fmt: skip
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto: fp16 AMP on CUDA, bf16 autocast on CPUs with native bf16 (default)")  # fmt: skip
    p.set_defaults(func=_train)

    p = sub.add_parser("assemble", help="collect fold_K/best.pt of a run into a model folder")
    p.add_argument("run", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--description", default="")
    p.set_defaults(func=_assemble)

    p = sub.add_parser("compare", help="compare an output folder with the expected one (test.sh)")
    p.add_argument("expected", type=Path)
    p.add_argument("actual", type=Path)
    p.add_argument("--min-dice", type=float, default=0.99)
    p.set_defaults(func=_compare)
    return parser


def setup_logging(*, verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose, quiet=args.quiet)
    try:
        return args.func(args)
    except PetsegError as err:
        print(f"petseg: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
