"""DICOM out: a DICOM Segmentation of a mask on the PET grid (highdicom), and a DICOM study
converted to the autoPET release's NIfTI files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.dicom import read_ct, read_pet_suv
from petseg.outputs import CT_NII, CT_ON_PET_NII, SUV_NII
from petseg.settings import Settings

SERIES_DESCRIPTION = "petseg lesions (autoPET III residual UNet ensemble)"


def write_dicom_seg(mask: sitk.Image, pet_datasets: list, output: str | Path) -> Path:
    """A binary DICOM Segmentation ("Lesion") referencing the PET series; the mask must lie
    on the PET grid in the slice order of ``pet_datasets``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from petseg import __version__
    from petseg.atomic import atomic_path

    array = sitk.GetArrayFromImage(mask).astype(np.uint8)
    if array.shape != (len(pet_datasets), int(pet_datasets[0].Rows), int(pet_datasets[0].Columns)):
        raise ValueError(f"mask shape {array.shape} does not match the PET series")
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="petseg", version=__version__, family=codes.DCM.ArtificialIntelligence
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=pet_datasets,
        pixel_array=array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="petseg",
        manufacturer_model_name="petseg autoPET III residual UNet ensemble",
        software_versions=__version__,
        device_serial_number="0",
        omit_empty_frames=False,
        series_description=SERIES_DESCRIPTION,
    )
    with atomic_path(output) as tmp:
        seg.save_as(tmp)
    return Path(output)


def study_name(pet_datasets: list, *, identifying: bool = False) -> str:
    """A DICOM study's case name. By default pseudonymous and stable: ``pet-`` and the first
    12 hex digits of the SHA-256 of the StudyInstanceUID and the PET's SeriesInstanceUID (no
    name, ID or date in a file name; the same series always gives the same name). With
    ``identifying``: ``<PatientID>_<StudyDate>``, file-name-safe, or "study"."""
    import hashlib

    from petseg.layout import case_name

    ds = pet_datasets[0]
    if not identifying:
        uids = f"{ds.get('StudyInstanceUID', '')}/{ds.get('SeriesInstanceUID', '')}"
        return f"pet-{hashlib.sha256(uids.encode()).hexdigest()[:12]}"
    parts = [str(ds.get("PatientID", "")).strip(), str(ds.get("StudyDate", "")).strip()]
    return case_name("_".join(p for p in parts if p))


def convert_dicom(
    *,
    pet_dir: str | Path,
    output: str | Path,
    ct_dir: str | Path | None = None,
    pet_uid: str | None = None,
    ct_uid: str | None = None,
    settings: Settings | None = None,
) -> list[Path]:
    """Write ``SUV.nii.gz`` and, given a CT, ``CT.nii.gz`` and ``CTres.nii.gz`` (CT on the PET
    grid, ``settings.ct_fill_hu`` outside the CT), like the autoPET data release. All files
    or none are written."""
    from petseg.atomic import atomic_paths
    from petseg.io import save_image
    from petseg.preprocess import ct_on_pet_grid

    suv, _ = read_pet_suv(pet_dir, uid=pet_uid)
    images = {SUV_NII: suv}
    if ct_dir is not None:
        ct = read_ct(ct_dir, uid=ct_uid)
        images[CT_NII] = ct
        images[CT_ON_PET_NII] = ct_on_pet_grid(ct, suv, settings=settings or Settings())[0]
    targets = [Path(output) / name for name in images]
    with atomic_paths(targets) as temps:
        for tmp, target, image in zip(temps, targets, images.values()):
            save_image(image, tmp, target=target)
    return targets
