"""DICOM RT Structure Sets: a lesion mask on the PET grid as one ROI of closed planar
contours per PET slice (for the many PACS and planning systems that show no DICOM-SEG), and
any RTSTRUCT's ROI read back onto a PET grid.

Contours are traced at level 0.5 of each slice (contourpy's marching squares), so they run
half-way between a lesion voxel's centre and its neighbour's; filling them again by voxel
centre, holes by the even-odd rule as RTSTRUCT readers do, gives back the mask voxel for
voxel. :func:`write_rtstruct` checks exactly that before the file is published.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.dicom_write import SERIES_DESCRIPTION
from petseg.errors import InputError
from petseg.geometry import Grid

RTSTRUCT_SOP = "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set Storage
STUDY_SOP = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management, the reference to a study
COPIED = (  # patient and study attributes the structure set shares with the PET series
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "FrameOfReferenceUID",
)


def slice_contours(mask_yx: np.ndarray) -> list[np.ndarray]:
    """Closed contours (each (N, 2) in (column, row) voxel indices) around the 1-voxels of a slice."""
    import contourpy

    padded = np.pad(mask_yx.astype(np.float64), 1)  # closes contours that reach the slice's edge
    generator = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    loops = []
    for line in generator.lines(0.5):
        points = np.asarray(line, float) - 1.0
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        points = _corners(points)
        if len(points) >= 3:
            loops.append(points)
    return loops


def _corners(loop: np.ndarray) -> np.ndarray:
    """The loop without the points that lie on a straight run between their neighbours (the
    same polygon, fewer points: a large lesion's contour stays well below DICOM's limits)."""
    if len(loop) < 4:
        return loop
    before, after = np.roll(loop, 1, axis=0), np.roll(loop, -1, axis=0)
    cross = (loop[:, 0] - before[:, 0]) * (after[:, 1] - before[:, 1]) - (loop[:, 1] - before[:, 1]) * (
        after[:, 0] - before[:, 0]
    )
    return loop[np.abs(cross) > 1e-9]


def fill_contours(loops: list[np.ndarray], shape_yx: tuple[int, int]) -> np.ndarray:
    """The voxels whose centres lie inside an odd number of ``loops`` ((N, 2) column, row)."""
    from matplotlib.path import Path as Polygon

    inside = np.zeros(shape_yx, bool)
    for loop in loops:
        lo = np.maximum(np.floor(loop.min(axis=0)).astype(int), 0)  # (column, row): only the loop's box
        hi = np.minimum(np.ceil(loop.max(axis=0)).astype(int) + 1, (shape_yx[1], shape_yx[0]))
        if (hi <= lo).any():
            continue
        rows, cols = np.mgrid[lo[1] : hi[1], lo[0] : hi[0]]
        centres = np.column_stack([cols.ravel(), rows.ravel()])
        # closed=True takes the last vertex for the closing one: repeat the first
        hit = Polygon(np.vstack([loop, loop[:1]]), closed=True).contains_points(centres)
        inside[lo[1] : hi[1], lo[0] : hi[0]] ^= hit.reshape(rows.shape)
    return inside


def _dataset(pet_datasets: list, label: str, description: str):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    from petseg import __version__

    first = pet_datasets[0]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTSTRUCT_SOP, generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian  # explicit VR caps ContourData at 64 kB
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 192")
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT_SOP, meta.MediaStorageSOPInstanceUID
    for keyword in COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    now = dt.datetime.now()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 902
    ds.SeriesDescription = description
    ds.Manufacturer, ds.SoftwareVersions = "petseg", __version__
    ds.StructureSetLabel, ds.StructureSetName = label, label
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceNumber = 1
    images = []
    for pet in pet_datasets:
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = pet.SOPClassUID, pet.SOPInstanceUID
        images.append(item)
    series = pydicom.Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = first.SeriesInstanceUID, images
    study = pydicom.Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = STUDY_SOP, first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = pydicom.Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = first.FrameOfReferenceUID, [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    roi = pydicom.Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = 1, first.FrameOfReferenceUID
    roi.ROIName, roi.ROIGenerationAlgorithm = label, "AUTOMATIC"
    ds.StructureSetROISequence = [roi]
    observation = pydicom.Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = 1, 1
    observation.RTROIInterpretedType, observation.ROIInterpreter = "", ""
    ds.RTROIObservationsSequence = [observation]
    return ds


def write_rtstruct(
    mask: sitk.Image,
    pet_datasets: list,
    output: str | Path,
    *,
    label: str = "Lesion",
    description: str = SERIES_DESCRIPTION,
) -> float:
    """An RT Structure Set with one ROI ``label`` outlining ``mask`` (on the PET grid, in the
    slice order of ``pet_datasets``). Read back onto the grid before it is published; returns
    that read-back's Dice with the mask (1.0 unless the contours lose a voxel, then refused)."""
    import pydicom

    from petseg.atomic import atomic_path

    array = sitk.GetArrayFromImage(mask) > 0
    if array.shape != (len(pet_datasets), int(pet_datasets[0].Rows), int(pet_datasets[0].Columns)):
        raise ValueError(f"mask shape {array.shape} does not match the PET series")
    ds = _dataset(pet_datasets, label, description)
    grid = Grid.of(mask)
    contours = []
    for k, pet in enumerate(pet_datasets):
        for loop in slice_contours(array[k]):
            points = grid.to_physical(np.column_stack([loop, np.full(len(loop), k)]))
            item = pydicom.Dataset()
            reference = pydicom.Dataset()
            reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = pet.SOPClassUID, pet.SOPInstanceUID
            item.ContourImageSequence = [reference]
            item.ContourGeometricType, item.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
            item.ContourData = [f"{v:.4f}" for v in points.ravel()]
            contours.append(item)
    roi_contour = pydicom.Dataset()
    roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = 1, [255, 0, 0]
    if contours:
        roi_contour.ContourSequence = contours
    ds.ROIContourSequence = [roi_contour]
    with atomic_path(output) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
        back = read_rtstruct(tmp, mask, roi=label)
        dice = _dice(array, sitk.GetArrayViewFromImage(back) > 0)
        if dice < 1.0:
            raise ValueError(f"the RTSTRUCT's contours give back the mask with Dice {dice:.6f}, not 1")
    return dice


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def read_rtstruct(path: str | Path, grid: sitk.Image, *, roi: str | None = None) -> sitk.Image:
    """ROI ``roi`` (default: the only one) of an RTSTRUCT as a uint8 mask on ``grid``'s voxels:
    each closed planar contour on the slice it lies in, filled by voxel centre, even-odd."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    except Exception as err:  # pydicom raises many types for damaged files
        raise InputError(path, f"not a readable RT Structure Set ({type(err).__name__}: {err})") from None
    if roi is None and len(names) != 1:
        raise InputError(path, f"holds {len(names)} ROIs, name one: {', '.join(sorted(names.values()))}")
    wanted = [number for number, name in names.items() if roi is None or name == roi]
    if not wanted:
        raise InputError(path, f"no ROI {roi!r} (it holds {', '.join(sorted(names.values()))})")
    size = grid.GetSize()
    geometry = Grid.of(grid)
    out = np.zeros(size[::-1], bool)
    by_slice: dict[int, list[np.ndarray]] = {}
    for item in ds.ROIContourSequence:
        if int(item.ReferencedROINumber) != wanted[0]:
            continue
        for contour in item.get("ContourSequence", []):
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            index = geometry.to_index(points)
            k = int(round(float(np.median(index[:, 2]))))
            if np.abs(index[:, 2] - k).max() > 0.25:
                raise InputError(path, f"a contour of ROI {names[wanted[0]]!r} does not lie in one slice of the grid")
            if 0 <= k < size[2]:
                by_slice.setdefault(k, []).append(index[:, :2])
    for k, loops in by_slice.items():
        out[k] = fill_contours(loops, (size[1], size[0]))
    image = sitk.GetImageFromArray(out.astype(np.uint8))
    image.CopyInformation(grid)
    return image
