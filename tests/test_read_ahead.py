"""A study read while the process starts (process.py): the same images as a read in turn,
the CT's error first, a PET-only model untouched by a broken CT, fd 2 never redirected."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.geometry import Grid
from petseg.preprocess import read_inputs
from petseg.read_ahead import ReadAhead
from petseg.settings import Settings

from conftest import DIRECTIONS, ROOT, blob_study

sys.path.insert(0, str(ROOT))
import process  # noqa: E402

PET_ONLY = Settings(modalities=("PET",))


@pytest.fixture()
def study(tmp_path):
    ct, pet = blob_study(direction=DIRECTIONS["oblique"])
    paths = tmp_path / "ct.mha", tmp_path / "pet.nii.gz"
    for image, path in zip((ct, pet), paths):
        sitk.WriteImage(image, str(path), True)
    return paths


def test_the_images_equal_a_read_in_turn_and_are_handed_over_once(study, capfd):
    ahead = ReadAhead(*study)
    assert ahead.covers(*study) and not ahead.covers(study[1], study[0])
    for mine, theirs in zip(ahead.images(), read_inputs(*study, settings=Settings())):
        assert Grid.of(mine) == Grid.of(theirs)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mine), sitk.GetArrayFromImage(theirs))
    with pytest.raises(RuntimeError, match="taken already"):  # the ahead no longer holds them
        ahead.images()
    pet_only = ReadAhead(*study, uses_ct=PET_ONLY.uses_ct)
    assert pet_only.ct is None and pet_only.covers(None, study[1]) and pet_only.covers(study[0], study[1])
    ct, pet = pet_only.images()
    assert ct is None and Grid.of(pet) == Grid.of(sitk.ReadImage(str(study[1])))
    os.write(2, b"stderr untouched\n")
    assert "stderr untouched" in capfd.readouterr().err


@pytest.mark.parametrize("broken", ["ct", "pet", "both"])
def test_errors_are_the_ones_a_read_in_turn_gives(study, broken):
    ct, pet = study
    for path in {"ct": [ct], "pet": [pet], "both": [ct, pet]}[broken]:
        path.write_bytes(b"not an image")
    with pytest.raises(InputError) as err:
        ReadAhead(ct, pet).images()
    assert str(pet if broken == "pet" else ct) in str(err.value)
    if broken == "ct":  # a PET-only model never reads the CT: its failure is not the job's
        assert ReadAhead(ct, pet, uses_ct=False).images()[0] is None
    else:
        with pytest.raises(InputError, match="pet.nii.gz"):
            ReadAhead(ct, pet, uses_ct=False).images()


def test_process_py_with_a_pet_only_model_ignores_a_broken_ct(gc_input, pet_model_dir, tmp_path, capsys):
    (ct,) = (gc_input / "images" / "ct").iterdir()
    ct.write_bytes(b"not an image")
    out = tmp_path / "out"
    code = process.main(
        ["--input", str(gc_input), "--output", str(out), "--model-dir", str(pet_model_dir), "--device", "cpu"]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "images" / "automated-petct-lesion-segmentation" / ct.name).is_file()


def test_process_py_names_a_broken_pet_in_one_line(gc_input, tiny_model_dir, tmp_path, capsys):
    (pet,) = (gc_input / "images" / "pet").iterdir()
    data = pet.read_bytes()
    pet.write_bytes(data[: len(data) - 200])  # the voxels cut short
    args = ["--input", str(gc_input), "--output", str(tmp_path / "out"), "--model-dir", str(tiny_model_dir)]
    code = process.main([*args, "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and str(pet) in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.mha"))


def test_a_study_other_than_the_read_ahead_is_refused(study, tmp_path):
    from petseg.stages import load_study

    other = tmp_path / "other_pet.nii.gz"
    other.write_bytes(study[1].read_bytes())
    with pytest.raises(ValueError, match="is not the study of"):
        load_study(ct=study[0], pet=other, settings=Settings(), timings={}, ahead=ReadAhead(*study))


def test_a_process_stopped_while_reading_ahead_waits_for_the_read(tmp_path):
    """Interpreter exit while the read-ahead is inside ITK: the thread is not a daemon, so the
    exit waits for it (a daemon thread torn down inside ITK aborts the process, SIGABRT)."""
    import subprocess
    import textwrap
    import threading

    values = np.random.default_rng(0).random((120, 160, 160), dtype=np.float32)  # seconds to inflate, not ms
    paths = []
    for name in ("ct.mha", "pet.mha"):
        image = sitk.GetImageFromArray(values)
        sitk.WriteImage(image, str(tmp_path / name), True)
        paths.append(str(tmp_path / name))
    ahead = ReadAhead(*paths)
    reader = next(t for t in threading.enumerate() if t.name == "petseg-read-ahead")
    assert not reader.daemon
    ahead.images()
    script = textwrap.dedent(
        f"""
        import sys
        from petseg.read_ahead import ReadAhead
        ReadAhead({paths[0]!r}, {paths[1]!r})
        sys.exit(3)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 3 and "FATAL" not in result.stderr, result.stderr[-2000:]
