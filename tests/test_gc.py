"""Grand Challenge entry point (process.py) and every bad input of the spec."""

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from petseg.predictor import Predictor

from conftest import ROOT

sys.path.insert(0, str(ROOT))
import process  # noqa: E402

OUT_SLUG = "images/automated-petct-lesion-segmentation"


def run_process(input_dir, output_dir, model_dir, *extra):
    return process.main(
        [
            "--input",
            str(input_dir),
            "--output",
            str(output_dir),
            "--model-dir",
            str(model_dir),
            "--device",
            "cpu",
            *extra,
        ]
    )


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def make_read_only(root):
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_process_writes_exactly_the_mask_and_the_json(gc_input, tiny_model_dir, tmp_path):
    make_read_only(gc_input)
    out = tmp_path / "out"
    assert run_process(gc_input, out, tiny_model_dir) == 0
    assert files_under(out) == ["data-centric-model.json", f"{OUT_SLUG}/3f1c0a6e-case.mha"]
    assert json.loads((out / "data-centric-model.json").read_text()) is False
    mask = sitk.ReadImage(str(out / OUT_SLUG / "3f1c0a6e-case.mha"))
    pet = sitk.ReadImage(str(gc_input / "images/pet/3f1c0a6e-case.mha"))
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert mask.GetSize() == pet.GetSize()
    assert np.allclose(mask.GetOrigin(), pet.GetOrigin()) and np.allclose(mask.GetSpacing(), pet.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}


def test_mask_is_written_compressed(gc_input, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert run_process(gc_input, out, tiny_model_dir) == 0
    header = (out / OUT_SLUG / "3f1c0a6e-case.mha").read_bytes()[:600].decode("latin-1")
    assert "CompressedData = True" in header


@pytest.mark.parametrize("content", ['{"points": [{"point": [1, 2, 3], "name": "tumor"}]}', "{not json"])
def test_a_ct_pet_model_never_reads_the_clicks_file_and_says_so_on_stdout_only(
    gc_input, tiny_model_dir, tmp_path, caplog, content
):
    (gc_input / "lesion-clicks.json").write_text(content)
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert run_process(gc_input, out, tiny_model_dir, "--interface", "autopet4") == 0
    assert files_under(out) == ["images/tumor-lesion-segmentation/3f1c0a6e-case.mha"]
    # every autoPET IV job has the file: a warning (stderr) would flag every job on Grand Challenge
    note = f"this model takes no clicks: {gc_input / 'lesion-clicks.json'} not read"
    assert ("INFO", note) in [(r.levelname, r.getMessage()) for r in caplog.records]
    assert not [r for r in caplog.records if "click" in r.getMessage() and r.levelname != "INFO"]


def test_process_runs_as_a_script_with_a_real_exit_code(gc_input, tiny_model_dir, tmp_path):
    shutil.rmtree(gc_input / "images" / "pet")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "process.py"),
            "--input",
            str(gc_input),
            "--output",
            str(tmp_path / "o"),
            "--model-dir",
            str(tiny_model_dir),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [f"process.py: error: {gc_input / 'images' / 'pet'}: no PET image found"]
    assert not (tmp_path / "o").exists() or files_under(tmp_path / "o") == []


# --- bad inputs: one line naming the file and the problem, non-zero exit, no output -------------


def _pet_path(root):
    return next((root / "images" / "pet").iterdir())


def _ct_path(root):
    return next((root / "images" / "ct").iterdir())


def _rewrite(path, array, like):
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(like)
    sitk.WriteImage(image, str(path))


def _pet_values(root, fn):
    path = _pet_path(root)
    pet = sitk.ReadImage(str(path))
    _rewrite(path, fn(sitk.GetArrayFromImage(pet)), pet)
    return path


def missing_ct(root):
    shutil.rmtree(root / "images" / "ct")
    return root / "images" / "ct", "no CT image found"


def empty_pet_folder(root):
    _pet_path(root).unlink()
    return root / "images" / "pet", "no PET image found"


def two_pets(root):
    shutil.copy(_pet_path(root), root / "images" / "pet" / "second.mha")
    return root / "images" / "pet", "expected exactly one PET image, found 2"


def image_2d(root):
    path = _ct_path(root)
    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkInt16), str(path))
    return path, "expected a 3D image, got a 2D image"


def image_4d(root):
    path = _pet_path(root)
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkFloat32), str(path))
    return path, "expected a 3D image, got a 4D image"


def not_an_image(root):
    path = _ct_path(root)
    path.write_text("this is not an image\n")
    return path, "cannot be read as an image"


def truncated(root):
    path = _pet_path(root)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "cannot be read as an image"


def nan_pet(root):
    return _pet_values(root, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a)), "NaN or infinite"


def inf_pet(root):
    return _pet_values(root, lambda a: np.where(a > a.max() * 0.9, np.inf, a)), "NaN or infinite"


def zero_pet(root):
    return _pet_values(root, np.zeros_like), "PET is all zero"


def far_away_ct(root):
    path = _ct_path(root)
    ct = sitk.ReadImage(str(path))
    ct.SetOrigin(tuple(o + 5000.0 for o in ct.GetOrigin()))
    sitk.WriteImage(ct, str(path))
    return path, "CT and PET"


BAD_INPUTS = [
    missing_ct,
    empty_pet_folder,
    two_pets,
    image_2d,
    image_4d,
    not_an_image,
    truncated,
    nan_pet,
    inf_pet,
    zero_pet,
    far_away_ct,
]


@pytest.mark.parametrize("damage", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_is_one_clear_line_and_no_output(damage, gc_input, tiny_model_dir, tmp_path, capsys):
    source, problem = damage(gc_input)
    out = tmp_path / "out"
    assert run_process(gc_input, out, tiny_model_dir) != 0
    err = capsys.readouterr().err.strip().splitlines()
    message = [ln for ln in err if ln.startswith("process.py: error:")]
    assert len(message) == 1, err
    assert str(source) in message[0] and problem in message[0]
    assert files_under(out) == []


@pytest.mark.parametrize("problem", ["missing folder", "wrong checksum"])
def test_bad_model_folder_is_one_clear_line_and_no_output(problem, gc_input, tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    if problem == "wrong checksum":
        shutil.copytree(tiny_model_dir, model)
        state = torch.load(model / "fold1.pt", weights_only=True)
        torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, model / "fold1.pt")
        expected = f"{model / 'fold1.pt'}: sha256 mismatch"
    else:
        expected = f"{model}: model folder not found"
    out = tmp_path / "out"
    assert run_process(gc_input, out, model) != 0
    assert expected in capsys.readouterr().err
    assert files_under(out) == []


def test_failed_write_leaves_no_partial_file(gc_input, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import petseg.io

    def broken(image, path, useCompression=True):
        with open(path, "wb") as fh:
            fh.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(petseg.io.sitk, "WriteImage", broken)
    out = tmp_path / "out"
    assert run_process(gc_input, out, tiny_model_dir) == 1
    mask = out / OUT_SLUG / "3f1c0a6e-case.mha"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"process.py: error: {mask}: write failed, is the disk full? (disk full)"
    ]
    assert files_under(out) == []  # neither the mask nor data-centric-model.json


def test_outputs_get_the_usual_file_mode(gc_input, tiny_model_dir, tmp_path):
    old = os.umask(0o022)
    try:
        assert run_process(gc_input, tmp_path / "out", tiny_model_dir) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_autopet4_feeds_the_clicks_to_a_click_aware_model_and_writes_one_mask(
    gc_input, click_model_dir, tmp_path, caplog
):
    pet = sitk.ReadImage(str(_pet_path(gc_input)))
    centre = [s // 2 for s in pet.GetSize()]
    with caplog.at_level("INFO"):
        assert run_process(gc_input, tmp_path / "none", click_model_dir, "--interface", "autopet4") == 0
    assert "no clicks: this click-aware model runs with empty click maps" in caplog.text
    clicks = {"points": [{"point": centre, "name": "tumor"}, {"point": [1, 1, 1], "name": "background"}]}
    (gc_input / "lesion-clicks.json").write_text(json.dumps(clicks))
    out = tmp_path / "out"
    with caplog.at_level("INFO"):
        assert run_process(gc_input, out, click_model_dir, "--interface", "autopet4") == 0
    assert f"clicks from {gc_input / 'lesion-clicks.json'}: 1 tumour, 1 background" in caplog.text
    assert files_under(out) == ["images/tumor-lesion-segmentation/3f1c0a6e-case.mha"]
    name = "images/tumor-lesion-segmentation/3f1c0a6e-case.mha"
    with_clicks, without = (
        sitk.GetArrayFromImage(sitk.ReadImage(str(root / name))) for root in (out, tmp_path / "none")
    )
    assert not np.array_equal(with_clicks, without)  # the clicks reached the network


def test_a_bad_clicks_file_fails_a_click_aware_job_with_one_line_before_the_folds_load(
    gc_input, click_model_dir, tmp_path, capsys, monkeypatch
):
    loaded = []
    monkeypatch.setattr(Predictor, "from_model_dir", lambda *a, **k: loaded.append(a))
    (gc_input / "lesion-clicks.json").write_text(json.dumps({"points": [{"point": [1, 2], "name": "tumor"}]}))
    assert run_process(gc_input, tmp_path / "out", click_model_dir, "--interface", "autopet4") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lesion-clicks.json: points[0].point: expected array of length 3" in err[0]
    assert loaded == []
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize(("interface", "budget"), [("autopet3", 270.0), ("autopet4", 870.0)])
def test_each_interface_has_its_challenges_time_budget(
    gc_input, tiny_model_dir, tmp_path, monkeypatch, interface, budget
):
    seen = {}
    monkeypatch.setattr(
        process.gc, "run", lambda *, predictor, **kw: seen.setdefault("budget", predictor.settings.time_budget_s)
    )
    assert run_process(gc_input, tmp_path / "out", tiny_model_dir, "--interface", interface) == 0
    assert seen["budget"] == budget
    seen.clear()
    assert run_process(gc_input, tmp_path / "out", tiny_model_dir, "--interface", interface, "--time-budget", "60") == 0
    assert seen["budget"] == 60.0


def test_a_ct_pet_model_logs_that_it_ignores_clicks(tiny_model_dir, caplog):
    from petseg.clicks import Clicks
    from petseg.predictor import Predictor

    from conftest import blob_study

    ct, pet = blob_study()
    predictor = Predictor.from_model_dir(tiny_model_dir, device="cpu")
    with caplog.at_level("INFO"):
        mask = predictor.predict_images(ct, pet, clicks=Clicks(tumor=((0.0, 0.0, 0.0),))).mask
    assert ("WARNING", "this model takes no clicks: 1 click(s) ignored") in [
        (r.levelname, r.getMessage()) for r in caplog.records
    ]
    assert np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(predictor.predict(ct, pet)))


def test_settings_without_the_models_click_channels_are_refused_before_any_work(click_model_dir):
    from petseg.errors import ConfigError
    from petseg.model import ModelFolder
    from petseg.predictor import Predictor
    from petseg.settings import Settings

    # a user's own Settings replace model.json's: without click_sigma_mm they would feed 2 channels to a 4-channel net
    with pytest.raises(ConfigError, match=r"takes \['CT', 'PET', 'tumor_clicks', 'background_clicks'\]"):
        Predictor.from_model_dir(click_model_dir, settings=Settings(device="cpu"))
    networks = ModelFolder.open(click_model_dir).load_networks()
    with pytest.raises(ConfigError, match=r"network 0 takes 4 input channels, the settings make 2"):
        Predictor(networks, settings=Settings(device="cpu"))
    model_sigma = ModelFolder.open(click_model_dir).settings.click_sigma_mm
    assert Predictor.from_model_dir(click_model_dir, settings=Settings(device="cpu", click_sigma_mm=model_sigma))


def test_the_images_interface_comes_from_its_build_argument(gc_input, tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PETSEG_GC_INTERFACE", "autopet4")  # the Dockerfile's ARG INTERFACE
    assert run_process(gc_input, tmp_path / "out", tiny_model_dir) == 0
    assert files_under(tmp_path / "out") == ["images/tumor-lesion-segmentation/3f1c0a6e-case.mha"]
    monkeypatch.setenv("PETSEG_GC_INTERFACE", "autopet9")
    with pytest.raises(SystemExit) as exit_info:
        run_process(gc_input, tmp_path / "bad", tiny_model_dir)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PETSEG_GC_INTERFACE='autopet9'" in err[0]


def test_autopet5_runs_six_steps_from_one_preprocessing_with_every_scribble_point(click_model_dir, tmp_path, caplog):
    from petseg.phantom import make_study
    from petseg.scribbles import simulate_scribble

    study = make_study(tracer="fdg", seed=3, shape=(24, 20, 40), spacing=(8.0, 9.0, 10.0), n_lesions=2)
    root = tmp_path / "input"
    for role, image in (("ct", study.ct), ("pet", study.pet)):
        (root / "images" / role).mkdir(parents=True)
        sitk.WriteImage(image, str(root / "images" / role / "3f1c0a6e-case.mha"))
    truth = sitk.GetArrayFromImage(study.label) > 0
    name = "images/tumor-lesion-segmentation/3f1c0a6e-case.mha"
    cache, points, rng = tmp_path / "cache", [], np.random.default_rng(0)
    masks = []
    for step in range(6):
        out = tmp_path / f"out{step}"
        caplog.clear()
        with caplog.at_level("INFO"):
            assert run_process(root, out, click_model_dir, "--interface", "autopet5", "--cache", str(cache)) == 0
        assert files_under(out) == [name]
        assert ("kept in" if step == 0 else "the preprocessed study from") in caplog.text
        assert "step done in" in caplog.text
        if step:
            tumour = sum(p["name"] == "tumor" for p in points)
            assert f"{tumour} tumour, {len(points) - tumour} background" in caplog.text  # every point read
        masks.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))) > 0)
        scribble = simulate_scribble(truth, masks[-1], style="mixed", rng=rng)
        if scribble is None:
            scribble = simulate_scribble(truth, ~truth, style="random", rng=rng)
        points += scribble.as_clicks() * 3  # a long run of points, as scribbles accumulate
        (root / "lesion-clicks.json").write_text(json.dumps({"type": "Multiple points", "points": points}))
    kinds = [p["name"] for p in points]
    assert max(kinds.count("tumor"), kinds.count("background")) > 10  # beyond autoPET IV's 10 per kind
    assert len(list(cache.iterdir())) == 2  # one study: its arrays and record
    # the cached study gives the mask a fresh preprocessing gives, and a damaged entry is redone
    (root / "lesion-clicks.json").write_text(json.dumps({"points": points[: -3 * len(scribble.points)]}))
    for path in cache.glob("*.npz"):
        path.write_bytes(b"damaged")
    caplog.clear()
    with caplog.at_level("INFO"):
        assert (
            run_process(root, tmp_path / "again", click_model_dir, "--interface", "autopet5", "--cache", str(cache))
            == 0
        )
    assert "cached study is damaged" in caplog.text
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "again" / name))) > 0, masks[-1])
