"""The QC picture tells found, missed and false lesions apart (pixel counts per colour on a
built case), numbers lesions as the report does, and takes the case name as its title."""

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.colors import to_rgb

from petseg.cli import main
from petseg.qc import COLOURS, Outlines, render_qc
from petseg.report import lesion_report

from conftest import DIRECTIONS, make_image, physical_points

SIZE, SPACING, ORIGIN = (40, 36, 44), (3.1, 2.4, 4.3), (-37.5, 120.0, -400.2)


def _spheres(template, centres, radius=9.0):
    pts = physical_points(template)
    out = np.zeros(template.GetSize(), bool)
    for c in centres:
        out |= np.linalg.norm(pts - np.asarray(c), axis=-1) <= radius
    return out


@pytest.fixture(scope="module")
def case():
    """An oblique, anisotropic PET with three hot spheres: A predicted and true (found), B
    true only (missed), C predicted only (false)."""
    template = make_image(np.zeros(SIZE, np.float32), spacing=SPACING, origin=ORIGIN, direction=DIRECTIONS["oblique"])
    centre = physical_points(template).reshape(-1, 3).mean(axis=0)
    a, b, c = (centre + off for off in ([-25.0, 0, 30], [25.0, 0, 0], [0.0, 0, -40]))
    geometry = dict(spacing=SPACING, origin=ORIGIN, direction=DIRECTIONS["oblique"])
    pet = make_image(np.where(_spheres(template, [a, b, c]), 8.0, 1.0).astype(np.float32), **geometry)

    def mask(*centres):
        return make_image(_spheres(template, centres).astype(np.uint8), **geometry)

    return {"pet": pet, "a": a, "b": b, "c": c, "mask": mask}


def colour_pixels(png) -> dict[str, int]:
    """Pixels near each outline colour (the PET is grey, so a coloured pixel is an outline)."""
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(png)))[..., :3].astype(int)
    found = {}
    for name in ("found", "missed", "false"):
        target = np.asarray(to_rgb(COLOURS[name])) * 255
        found[name] = int((np.abs(rgb - target).max(axis=-1) < 40).sum())
    return found


def test_found_missed_and_false_lesions_each_have_their_colour(case, tmp_path):
    pet, mask = case["pet"], case["mask"]
    gt = mask(case["a"], case["b"])
    full = colour_pixels(render_qc(pet=pet, mask=mask(case["a"], case["c"]), gt=gt, output=tmp_path / "all.png"))
    no_false = colour_pixels(render_qc(pet=pet, mask=mask(case["a"]), gt=gt, output=tmp_path / "nf.png"))
    none_missed = colour_pixels(
        render_qc(pet=pet, mask=mask(case["a"], case["c"]), gt=mask(case["a"]), output=tmp_path / "nm.png")
    )
    legend = colour_pixels(render_qc(pet=pet, mask=mask(), gt=mask(), output=tmp_path / "empty.png"))
    for name in ("found", "missed", "false"):  # each outline stands out from what the legend alone draws
        assert full[name] > legend[name] + 40, (name, full, legend)
    assert no_false["false"] <= legend["false"] + 5 and abs(no_false["found"] - full["found"]) < 10
    assert none_missed["missed"] <= legend["missed"] + 5 and abs(none_missed["false"] - full["false"]) < 10


def test_classes_are_counted_by_lesion(case):
    to_array = sitk.GetArrayFromImage
    outlines = Outlines.of(to_array(case["mask"](case["a"], case["c"])), to_array(case["mask"](case["a"], case["b"])))
    assert outlines.counts() == {"found": 1, "missed": 1, "false": 1}
    assert Outlines.of(to_array(case["mask"](case["a"]))).counts() == {"predicted": 1}


def test_lesion_numbers_are_the_reports(case):
    mask = case["mask"](case["a"], case["b"], case["c"])
    report = lesion_report(mask, case["pet"], case="x")
    labels = Outlines.of(sitk.GetArrayFromImage(mask)).labels
    for lesion in report["lesions"]:
        point = [lesion[f"centroid_{axis}_mm"] for axis in "xyz"]
        x, y, z = np.round(mask.TransformPhysicalPointToContinuousIndex(point)).astype(int)
        assert labels[z, y, x] == lesion["lesion"]


def test_the_qc_command_titles_the_picture_with_the_case(case, tmp_path, monkeypatch):
    import matplotlib.figure

    titles = []
    real = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(matplotlib.figure.Figure, "suptitle", lambda self, t, **kw: titles.append(t) or real(self, t))
    for name, image in (("SUV.nii.gz", case["pet"]), ("P7_baseline.nii.gz", case["mask"](case["a"]))):
        sitk.WriteImage(image, str(tmp_path / name))
    args = ["qc", "--pet", str(tmp_path / "SUV.nii.gz"), "--mask", str(tmp_path / "P7_baseline.nii.gz")]
    assert main([*args, "-o", str(tmp_path / "q.png")]) == 0
    assert main([*args, "-o", str(tmp_path / "t.png"), "--title", "mine"]) == 0
    assert titles == ["P7_baseline", "mine"]
