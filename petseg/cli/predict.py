"""``petseg predict`` (a folder of cases, or one DICOM study) and ``petseg convert-dicom``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from petseg.cli.common import add_click_removal_option, add_dicom_options, add_model_options, make_predictor
from petseg.errors import ConfigError
from petseg.frontend import number, positive

log = logging.getLogger("petseg")


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="segment every case of a folder, or one DICOM study")
    p.add_argument(
        "-i",
        "--input",
        type=Path,
        help="folder of cases: nnU-Net named (<case>_0000 CT, _0001 PET), study folders (CTres + SUV: the "
        "autoPET release, convert-dicom output), or a Grand Challenge input",
    )
    p.add_argument("--ct", type=Path, help="one study's CT file (with --pet): NIfTI, MHA or NRRD")
    p.add_argument("--pet", type=Path, help="one study's PET file in SUV (with --ct)")
    p.add_argument(
        "--name", help="one study's case name (default: the PET file's, or its folder's; DICOM: from the study)"
    )
    add_dicom_options(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder (one mask per case)")
    add_model_options(p)
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
        "--rtstruct",
        action="store_true",
        help="also write <case>_rtstruct.dcm: an RT Structure Set on the PET series (read back and checked)",
    )
    p.add_argument(
        "--dicom-names",
        action="store_true",
        help="name a DICOM study's outputs <PatientID>_<StudyDate> (default: pet-<hash of its UIDs>, no identifying data)",
    )
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
    p.set_defaults(func=predict)

    p = sub.add_parser("convert-dicom", help="DICOM PET[/CT] -> SUV.nii.gz [CT.nii.gz, CTres.nii.gz]")
    add_dicom_options(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="folder to write (a study folder petseg reads)")
    p.set_defaults(func=convert_dicom)


def _requested(args: argparse.Namespace):
    from petseg.folders import OutputRequest

    return OutputRequest(
        probabilities=args.save_probabilities, uncertainty=args.save_uncertainty, report=args.report, qc=args.qc
    )


def predict(args: argparse.Namespace) -> int:
    dicom_dirs = [path for path in (args.ct, args.pet) if path is not None and path.is_dir()]
    if dicom_dirs:  # --ct/--pet DICOM folders: as --ct-dicom/--pet-dicom
        given = [path for path in (args.ct, args.pet) if path is not None]
        if args.pet_dicom or args.ct_dicom or len(dicom_dirs) < len(given):
            raise ConfigError(dicom_dirs[0], "is a folder: give --ct and --pet both as DICOM folders, or both as files")
        args.ct_dicom, args.pet_dicom, args.ct, args.pet = args.ct, args.pet, None, None
    if args.pet_dicom or args.ct_dicom:
        return predict_dicom(args)
    for flag, given in (
        ("--dicom-seg", args.dicom_seg),
        ("--rtstruct", args.rtstruct),
        ("--dicom-names", args.dicom_names),
    ):
        if given:
            raise ConfigError(flag, "needs DICOM input (--pet-dicom DIR, with --ct-dicom DIR for a CT/PET model)")
    source = _single_study(args) or args.input
    if source is None:
        raise ConfigError(
            "petseg predict",
            "give -i FOLDER, --ct CT --pet PET, or --ct-dicom DIR --pet-dicom DIR (no CT: a PET-only model)",
        )
    from petseg.cohort import Shard
    from petseg.folders import predict_folder

    if args.part_id is not None and args.num_parts is None:
        raise ConfigError("--part-id", "needs --num-parts")
    outputs = _requested(args)
    run = predict_folder(
        source,
        args.output,
        make_predictor=lambda device: make_predictor(args, device=device, outputs=outputs),
        device=args.device,
        outputs=outputs,
        clicks=args.clicks,
        clicks_world=args.clicks_world,
        workers=args.workers,
        shard=Shard(args.num_parts, args.part_id or 0) if args.num_parts is not None else None,
        overwrite=args.overwrite,
    )
    if run.summary is not None:
        log.info("%s; manifest %s", run.summary.line(), run.case_log)
    failed = run.failures()
    if failed:
        log.error("%d case(s) failed: %s", len(failed), "; ".join(failed))
        return 1
    return 0


def _single_study(args: argparse.Namespace):
    """The case of ``--ct CT --pet PET`` (DICOM folders go to :func:`predict_dicom`), or None."""
    if args.ct is None and args.pet is None:
        if args.name is not None:
            raise ConfigError("--name", "names the study of --ct/--pet")
        return None
    if args.input is not None:
        raise ConfigError("--ct/--pet", f"give one study (--ct, --pet) or a folder (-i {args.input}), not both")
    if args.pet is None:
        raise ConfigError("--ct", f"{args.ct}: give the PET too (--pet PET, in SUV)")
    from petseg.layout import pair_case

    if args.ct is None:
        pet_only_model(args, source=f"--pet {args.pet}")
    return pair_case(args.ct, args.pet, args.name)


def pet_only_model(args: argparse.Namespace, *, source: str) -> None:
    """A study without a CT takes a PET-only model: without --model-dir the shipped one
    ($PETSEG_PET_MODEL_DIR, else weights-pet/), said in the log; a CT/PET model is refused in
    one line pointing to it. Checked on model.json, before any fold loads."""
    from petseg.model import ModelFolder, default_model_dir

    pet_model = default_model_dir(pet_only=True)
    if args.model_dir is None:
        if pet_model is None:
            raise ConfigError(source, "no CT given and no PET-only model found ($PETSEG_PET_MODEL_DIR, weights-pet/)")
        args.model_dir = pet_model
        log.info("no CT: the PET-only model %s", pet_model)
    folder = ModelFolder.open(args.model_dir)
    if folder.settings.uses_ct:
        other = f"--model-dir {pet_model}" if pet_model else "a model trained with petseg train --pet-only"
        raise ConfigError(source, f"no CT given, and {folder.path} takes CT and PET: give --ct CT, or use {other}")


def predict_dicom(args: argparse.Namespace) -> int:
    from petseg.dicom import read_ct, read_pet
    from petseg.dicom_write import study_name, write_dicom_seg
    from petseg.io import write_image
    from petseg.layout import checked_case_name
    from petseg.outputs import dicom_study_outputs
    from petseg.rtstruct import write_rtstruct
    from petseg.stages import write_extras

    if args.pet_dicom is None:
        raise ConfigError("--ct-dicom", "give the PET too (--pet-dicom DIR)")
    mixed = [flag for flag, value in (("-i", args.input), ("--ct", args.ct), ("--pet", args.pet)) if value is not None]
    if mixed:
        raise ConfigError(mixed[0], "give one study as DICOM folders (--ct-dicom, --pet-dicom) or as files, not both")
    name = None if args.name is None else checked_case_name(args.name)  # before minutes of work
    if args.ct_dicom is None:
        pet_only_model(args, source=f"--pet-dicom {args.pet_dicom}")
    if args.clicks is not None:
        from petseg.clicks import check_clicks_file

        check_clicks_file(args.clicks)  # before the DICOM is read and the model loaded
    series = read_pet(args.pet_dicom, uid=args.pet_series)
    pet, pet_datasets = series.image, series.datasets
    predictor = make_predictor(args, outputs=_requested(args))
    ct = None  # a PET-only model reads no CT, also when one is given
    if args.ct_dicom is not None and predictor.settings.uses_ct:
        ct = read_ct(args.ct_dicom, uid=args.ct_series)
    prediction = predictor.predict_images(
        ct,
        pet,
        ct_source=str(args.ct_dicom),
        pet_source=str(args.pet_dicom),
        clicks=args.clicks,
        clicks_world=args.clicks_world,
    )
    mask = prediction.mask
    name = name or study_name(pet_datasets, identifying=args.dicom_names)
    names = dicom_study_outputs(name, args.output)
    # the checked RTSTRUCT first and the mask last: a mask on disk means its study is complete
    if args.rtstruct:
        dice = write_rtstruct(mask, pet_datasets, names.rtstruct)
        log.info("wrote %s (read back onto the PET grid: Dice %.4f with the mask)", names.rtstruct, dice)
    if args.dicom_seg:
        log.info("wrote %s", write_dicom_seg(mask, pet_datasets, names.seg))
    if args.report or args.qc:
        facts = {"suv_calculation": series.suv.as_dict()}
        output = Path(args.output)
        from petseg.normalise import Patient

        patient = Patient.from_dataset(pet_datasets[0], source=str(args.pet_dicom))
        write_extras(
            prediction,
            pet=pet,
            name=name,
            output_dir=output,
            report=args.report,
            qc=args.qc,
            facts=facts,
            patient=patient,
        )
    log.info("wrote %s", write_image(mask, names.mask))
    return 0


def convert_dicom(args: argparse.Namespace) -> int:
    from petseg.dicom_write import convert_dicom as convert

    if args.pet_dicom is None:
        raise ConfigError("petseg convert-dicom", "give --pet-dicom DIR (and --ct-dicom DIR for the CT files)")
    paths = convert(
        pet_dir=args.pet_dicom, ct_dir=args.ct_dicom, output=args.output, pet_uid=args.pet_series, ct_uid=args.ct_series
    )
    for path in paths:
        print(f"wrote {path}")
    return 0
