"""The resampling backend chosen by Settings.resample_backend / --resample-backend through
every door: the predictor (mask, probability, uncertainty, votes, clicks), cohorts in this
process and pipelined over workers, the CLI; CT and PET read at once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.clicks import Clicks
from petseg.errors import InputError
from petseg.geometry import Grid
from petseg.io import read_images
from petseg.predictor import Predictor

from conftest import DIRECTIONS, SMALL, Oracle, blob_study, cohort_folder, dice, predict_cli

MAPS = SMALL.with_overrides(uncertainty=True, fold_votes=True)


class Scaled(Oracle):
    """The oracle with its own slope: folds that disagree a little (uncertainty, votes)."""

    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x):
        return super().forward(x) * self.slope


def _predict(backend: str, ct, pet, **kw):
    networks = [Scaled(0.4), Scaled(1.0), Scaled(3.0)]
    predictor = Predictor(networks, settings=MAPS.with_overrides(resample_backend=backend))
    assert predictor.backend == backend
    return predictor.predict_images(ct, pet, **kw)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_both_backends_give_the_same_prediction(name):
    ct, pet = blob_study(direction=DIRECTIONS[name], radius=15.0)
    reference, ours = _predict("sitk", ct, pet), _predict("torch", ct, pet)
    for image in (ours.mask, ours.probability, ours.uncertainty, ours.votes):
        assert Grid.of(image) == Grid.of(pet)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(ours.probability), sitk.GetArrayFromImage(reference.probability), atol=1e-3
    )
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(ours.uncertainty), sitk.GetArrayFromImage(reference.uncertainty), atol=1e-3
    )
    masks = [sitk.GetArrayFromImage(p.mask) for p in (reference, ours)]
    votes = [sitk.GetArrayFromImage(p.votes) for p in (reference, ours)]
    assert masks[0].sum() > 500
    if name == "identity":
        np.testing.assert_array_equal(masks[1], masks[0])
        np.testing.assert_array_equal(votes[1], votes[0])
    else:
        assert dice(masks[1], masks[0]) >= 0.999
        assert (votes[1] != votes[0]).mean() < 1e-3


CLICK_PEAKS: list[float] = []  # module-level: the predictor runs a copy of the network


class ClickOracle(Oracle):
    """The oracle, which also records the largest click-channel value it was given."""

    def forward(self, x):
        assert x.shape[1] == 4
        CLICK_PEAKS.append(float(x[:, 2:].max()))
        return super().forward(x)


def test_a_click_aware_model_takes_its_clicks_on_the_device():
    """Clicks join the device's network input; a background click removes its lesion in both."""
    ct, pet = blob_study(direction=DIRECTIONS["oblique"], radius=15.0)
    values = sitk.GetArrayFromImage(pet)
    z, y, x = np.argwhere(values > 2.5)[0]
    click = Clicks(background=[tuple(pet.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))])
    settings = SMALL.with_overrides(click_sigma_mm=5.0)
    masks = []
    for backend in ("sitk", "torch"):
        predictor = Predictor([ClickOracle()], settings=settings.with_overrides(resample_backend=backend))
        CLICK_PEAKS.clear()
        masks.append(sitk.GetArrayFromImage(predictor.predict_images(ct, pet, clicks=click).mask))
        assert max(CLICK_PEAKS) > 0.5  # the click's Gaussian reached the network
        unclicked = sitk.GetArrayFromImage(predictor.predict_images(ct, pet).mask)
        assert unclicked.sum() > 500
    assert masks[0].sum() < unclicked.sum()  # the clicked lesion removed
    np.testing.assert_array_equal(masks[1], masks[0])


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_cohort_on_the_torch_backend_writes_what_the_reference_writes(tiny_model_dir, tmp_path, workers):
    src = cohort_folder(tmp_path / "in", 2)
    for backend in ("sitk", "torch"):
        code = predict_cli(
            src, tmp_path / backend, tiny_model_dir, "--workers", workers, "--resample-backend", backend, "--report"
        )
        assert code == 0
    names = sorted(p.name for p in (tmp_path / "sitk").glob("case*.nii.gz"))
    assert len(names) == 2
    for name in names:
        a, b = (sitk.ReadImage(str(tmp_path / backend / name)) for backend in ("sitk", "torch"))
        assert Grid.of(a) == Grid.of(b)
        assert dice(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)) >= 0.999
    assert sorted(p.name for p in (tmp_path / "torch").iterdir()) == sorted(
        p.name for p in (tmp_path / "sitk").iterdir()
    )


def test_an_unknown_backend_is_one_line(tmp_path, capsys):
    from petseg.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["predict", "-i", str(tmp_path), "-o", str(tmp_path / "out"), "--resample-backend", "itk"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resample-backend" in err[0] and "'itk'" in err[0]


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path), True)
    return path


def test_two_images_read_at_once_equal_one_after_the_other(tmp_path, capfd):
    ct, pet = blob_study(direction=DIRECTIONS["oblique"])
    paths = [_write(ct, tmp_path / "ct.mha"), _write(pet, tmp_path / "pet.nii.gz")]
    together = read_images([(paths[0], "CT"), (paths[1], "PET")])
    for image, path in zip(together, paths):
        alone = sitk.ReadImage(str(path), sitk.sitkFloat32)
        assert Grid.of(image) == Grid.of(alone)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(alone))
    os.write(2, b"stderr is back\n")  # the threads' redirection of fd 2 is undone
    assert "stderr is back" in capfd.readouterr().err


@pytest.mark.parametrize("bad", [0, 1])
def test_a_damaged_file_read_beside_another_is_named(tmp_path, capfd, bad):
    ct, pet = blob_study()
    paths = [_write(ct, tmp_path / "ct.mha"), _write(pet, tmp_path / "pet.mha")]
    data = paths[bad].read_bytes()
    paths[bad].write_bytes(data[: len(data) // 2])  # truncated voxels: the header reads
    with pytest.raises(InputError) as err:
        read_images([(paths[0], "CT"), (paths[1], "PET")])
    assert str(paths[bad]) in str(err.value)
    assert str(paths[1 - bad]) not in str(err.value)
    os.write(2, b"stderr is back\n")
    assert capfd.readouterr().err.strip().splitlines() == ["stderr is back"]  # and ITK's lines were not shown


def test_out_of_device_memory_falls_back_to_simpleitk(monkeypatch, caplog):
    import torch

    import petseg.preprocess_torch as device_path

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    ct, pet = blob_study(direction=DIRECTIONS["oblique"], radius=15.0)
    reference = _predict("sitk", ct, pet)
    monkeypatch.setattr(device_path, "preprocess_torch", no_memory)
    monkeypatch.setattr(device_path, "restore_many_torch", no_memory)
    with caplog.at_level("WARNING"):
        fallen = _predict("torch", ct, pet)
    assert "preprocessing with SimpleITK on the CPU" in caplog.text
    assert "restoring with SimpleITK on the CPU" in caplog.text
    for ours, theirs in ((fallen.mask, reference.mask), (fallen.votes, reference.votes)):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))


def test_a_run_resumed_with_the_other_backend_keeps_what_is_done(tiny_model_dir, tmp_path):
    """The backends agree (above), so the backend is not part of a run's key, like the device."""
    from conftest import run_entries

    src = cohort_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0", "--resample-backend", "sitk") == 0
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0", "--resample-backend", "torch") == 0
    assert predict_cli(src, out, tiny_model_dir, "--workers", "0") == 0
    assert [e["status"] for e in run_entries(out)] == ["done"] * 2 + ["skipped"] * 4


def test_when_both_files_fail_the_ct_is_named_wherever_each_failed(tmp_path, monkeypatch):
    """The CT fails only when ITK reads its voxels, the PET already at its header's check."""
    import petseg.io as io

    ct, _ = blob_study()
    ct_path = _write(ct, tmp_path / "ct.mha")
    pet_path = tmp_path / "pet.mha"
    pet_path.write_bytes(b"not an image at all\n")
    execute = io._execute

    def failing_ct(path, reader):
        return InputError(path, "cannot be read as an image (simulated)") if path == ct_path else execute(path, reader)

    monkeypatch.setattr(io, "_execute", failing_ct)
    with pytest.raises(InputError) as err:
        read_images([(ct_path, "CT"), (pet_path, "PET")])
    assert str(ct_path) in str(err.value) and "simulated" in str(err.value)


def test_the_demo_study_through_process_py_on_the_torch_backend_gives_the_expected_output(tmp_path):
    """What ./test.sh checks in the image, with the device path on the CPU: the same mask."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT))
    import process

    out = tmp_path / "out"
    args = ["--input", str(ROOT / "test" / "input"), "--output", str(out), "--model-dir", str(ROOT / "weights")]
    assert process.main([*args, "--device", "cpu", "--resample-backend", "torch"]) == 0
    expected = sorted((ROOT / "test" / "expected_output").rglob("*.mha"))
    assert len(expected) == 1
    ours = out / expected[0].relative_to(ROOT / "test" / "expected_output")
    mask, reference = sitk.ReadImage(str(ours)), sitk.ReadImage(str(expected[0]))
    assert Grid.of(mask) == Grid.of(reference)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(reference))
