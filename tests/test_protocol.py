"""autoPET V's protocol: an initial mask, 5 simulated scribbles, Dice and DMM per step, AUCs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from test_interactive import ClickFollower

from petseg.cli import main
from petseg.geometry import Grid
from petseg.predictor import Predictor
from petseg.protocol import dice, normalised_area, protocol_case, summarize_runs

from conftest import DIRECTIONS, SMALL, blob_study


def _write(tmp_path, *, direction="identity", empty=False):
    ct, pet = blob_study(direction=DIRECTIONS[direction], radius=9.0)
    gt = sitk.Cast(pet > (100.0 if empty else 2.5), sitk.sitkUInt8)
    for name, image in (("ct", ct), ("pet", pet), ("gt", gt)):
        sitk.WriteImage(image, str(tmp_path / f"{name}.nii.gz"))
    return pet, sitk.GetArrayFromImage(gt) > 0


def _follower() -> Predictor:
    settings = SMALL.with_overrides(click_sigma_mm=20.0, fold_batchnorm=False, channels_last=False)
    return Predictor([ClickFollower()], settings=settings)


def _run(tmp_path, style, **kw):
    return protocol_case(
        _follower(),
        case="c",
        ct=tmp_path / "ct.nii.gz",
        pet=tmp_path / "pet.nii.gz",
        gt=tmp_path / "gt.nii.gz",
        style=style,
        **kw,
    )


@pytest.mark.parametrize(("direction", "style"), [("identity", "centerline"), ("oblique", "mixed")])
def test_scribbles_drawn_from_the_errors_find_the_lesions(tmp_path, direction, style):
    pet, lesion = _write(tmp_path, direction=direction)
    run = _run(tmp_path, style)
    assert [row["step"] for row in run.rows] == list(range(6))
    first, last = run.rows[0], run.rows[-1]
    assert (first["dice"], first["dmm"], first["tumor_points"]) == (0.0, 0.0, 0)  # nothing without guidance
    assert last["dice"] > 0.9 and last["dmm"] == 1.0  # both spheres once each has a scribble
    drawn = [s for s in run.scribbles if s.z >= 0]
    assert drawn[0].kind == "tumor" and run.rows[1]["scribble_points"] == len(drawn[0].points) > 1
    for scribble in drawn:  # on the PET grid, one axial slice, inside what was missed
        x, y, z = scribble.points.T
        assert np.all(z == scribble.z) and lesion[z, y, x].all()
    assert run.rows[-1]["tumor_points"] == sum(len(s.points) for s in drawn if s.kind == "tumor")
    summary = summarize_runs([run])
    assert summary["dice_auc"] == pytest.approx(normalised_area(np.array([r["dice"] for r in run.rows])))
    assert summary["score"] == pytest.approx(0.5 * (summary["dice_auc"] + summary["dmm_auc"]))
    assert Grid.of(pet).size[::-1] == lesion.shape


def test_a_lesion_free_study_scores_dice_one_and_no_dmm(tmp_path):
    _write(tmp_path, empty=True)
    run = _run(tmp_path, "random")
    assert all(row["dice"] == 1.0 and math.isnan(row["dmm"]) for row in run.rows)
    assert run.auc("dice") == 1.0 and math.isnan(run.auc("dmm"))
    assert all(s.z < 0 for s in run.scribbles)  # nothing to correct: no scribble, the mask stays


def test_dice_and_the_normalised_area():
    empty = np.zeros((3, 3, 3), bool)
    assert dice(empty, empty) == 1.0 and dice(empty | True, empty) == 0.0
    assert normalised_area(np.ones(6)) == 1.0
    assert normalised_area(np.array([0.0, 1, 1, 1, 1, 1])) == pytest.approx(0.9)
    assert math.isnan(normalised_area(np.array([0.0, math.nan])))


def test_the_cli_writes_steps_cases_and_scribbles(tmp_path, click_model_dir, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "gt").mkdir()
    for name in ("a", "b"):
        ct, pet = blob_study(radius=9.0)
        sitk.WriteImage(ct, str(tmp_path / "in" / f"{name}_0000.nii.gz"))
        sitk.WriteImage(pet, str(tmp_path / "in" / f"{name}_0001.nii.gz"))
        sitk.WriteImage(sitk.Cast(pet > 3.0, sitk.sitkUInt8), str(tmp_path / "gt" / f"{name}.nii.gz"))
    args = ["evaluate-interactive", "-i", str(tmp_path / "in"), "--gt", str(tmp_path / "gt"), "-o", str(tmp_path / "o")]
    extra = ["--model-dir", str(click_model_dir), "--device", "cpu", "--protocol", "autopet5", "--style", "boundary"]
    assert main([*args, *extra]) == 0
    out = capsys.readouterr().out
    assert "Dice-AUC" in out and "DMM-AUC" in out
    with (tmp_path / "o" / "autopet5.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case"], r["step"]) for r in rows] == [(c, str(k)) for c in ("a", "b") for k in range(6)]
    with (tmp_path / "o" / "autopet5_cases.csv").open() as fh:
        assert [r["case"] for r in csv.DictReader(fh)] == ["a", "b"]
    drawn = json.loads((tmp_path / "o" / "autopet5_scribbles.json").read_text())
    assert set(drawn) == {"a", "b"}
    for steps in drawn.values():
        assert all(s["style"] == "boundary" and all(p[2] == s["z"] for p in s["points"]) for s in steps)
    # the same seed draws the same scribbles
    assert main([*args[:-1], str(tmp_path / "o2"), *extra]) == 0
    assert json.loads((tmp_path / "o2" / "autopet5_scribbles.json").read_text()) == drawn
