"""Write small synthetic DICOM PET/CT series with pydicom (tests only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PET_SOP = "1.2.840.10008.5.1.4.1.1.128"
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"


def write_series(
    folder: Path,
    values_zyx: np.ndarray,
    *,
    modality: str = "PT",
    spacing=(4.0, 3.5, 3.0),  # x, y, z
    origin=(-100.0, -80.0, 50.0),
    slopes=None,
    study_uid: str | None = None,
    frame_uid: str | None = None,
    series_time: str = "110000",
    series_date: str = "20200101",
    injection_time: str | None = "100000",
    injection_datetime: str | None = None,
    dose: float | None = 3.7e8,
    half_life: float | None = 6586.2,
    weight: float | None = 70.0,
    units: str = "BQML",
    decay_correction: str = "START",
    extra: dict | None = None,
) -> list[Path]:
    """One file per slice; stored values = round(value / slope) with a per-slice slope."""
    folder.mkdir(parents=True, exist_ok=True)
    nz = values_zyx.shape[0]
    if slopes is None:  # per-slice slope so that the slice fills int16, as scanners do
        peaks = np.abs(values_zyx).reshape(nz, -1).max(axis=1)
        slopes = np.where(peaks > 0, peaks / 30000.0, 1.0) if modality == "PT" else np.ones(nz)
    slopes = np.asarray(slopes, float)
    series_uid = generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    paths = []
    for k in range(nz):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = PET_SOP if modality == "PT" else CT_SOP
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{modality}_{k:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "PH001", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyID, ds.StudyDate, ds.StudyTime = "1", series_date, series_time
        ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
        ds.SeriesNumber, ds.InstanceNumber = 1 if modality == "PT" else 2, k + 1
        ds.SeriesDate, ds.SeriesTime = series_date, series_time
        ds.AcquisitionDate, ds.AcquisitionTime = series_date, series_time
        ds.SeriesDescription = f"synthetic {modality}"
        ds.Manufacturer = "petseg-tests"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[2]]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = values_zyx.shape[1], values_zyx.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = float(slopes[k]), 0.0
        stored = np.round(values_zyx[k] / slopes[k]).astype(np.int16)
        ds.PixelData = stored.tobytes()
        if modality == "PT":
            ds.Units, ds.DecayCorrection = units, decay_correction
            ds.CorrectedImage = ["DECY", "ATTN"]
            if weight is not None:
                ds.PatientWeight = weight
            info = FileDataset(None, {})
            if dose is not None:
                info.RadionuclideTotalDose = dose
            if half_life is not None:
                info.RadionuclideHalfLife = half_life
            if injection_time is not None:
                info.RadiopharmaceuticalStartTime = injection_time
            if injection_datetime is not None:
                info.RadiopharmaceuticalStartDateTime = injection_datetime
            ds.RadiopharmaceuticalInformationSequence = [info]
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
