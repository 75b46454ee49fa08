"""Training smoke path on phantoms: split, cache, augment, train, validate, checkpoint, resume, assemble."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import petseg
from petseg.cli import main
from petseg.errors import ConfigError
from petseg.inference import cpu_supports_bf16, resolve_precision
from petseg.model_write import assemble
from petseg.settings import Settings
from petseg.train import (
    TrainConfig,
    load_cached,
    make_splits,
    patient_of,
    train_fold,
    train_transforms,
    validate,
    with_sampling_map,
)

from conftest import TINY_NETWORK, training_cohort


@pytest.fixture(scope="module")
def phantom_data(tmp_path_factory):
    return training_cohort(tmp_path_factory.mktemp("train_data"), n=3, seed=11)


def _config(data, out, **kw):
    return TrainConfig(
        data_dir=data,
        out_dir=out,
        n_folds=2,
        epochs=2,
        batch_size=2,
        patch_size=(32, 32, 32),
        val_every=1,
        network=dict(TINY_NETWORK),
        settings=Settings(target_spacing=(4.0, 4.0, 4.0), roi_size=(32, 32, 32), device="cpu"),
        **kw,
    )


def test_splits_keep_patients_together_and_are_seeded():
    cases = ["fdg_p1_2020", "fdg_p1_2021", "psma_p2_2020", "fdg_p3_2019", "psma_p4_2022", "fdg_p5_2020"]
    splits = make_splits(cases, n_folds=3, seed=1)
    assert splits == make_splits(cases, n_folds=3, seed=1)
    assert sorted(c for s in splits for c in s["val"]) == sorted(cases)
    for split in splits:
        assert {patient_of(c) for c in split["val"]}.isdisjoint({patient_of(c) for c in split["train"]})
    assert patient_of("fdg_p1_2021") == "fdg_p1"


def test_augmentation_keeps_labels_binary_and_lesion_volume():
    """Whole-volume 'patch' so nothing is cropped away; volume within 10 % over many draws."""
    config = TrainConfig(data_dir=".", out_dir=".", patch_size=(48, 48, 48))
    transform = train_transforms(config)
    label = np.zeros((1, 48, 48, 48), np.float32)
    zz, yy, xx = np.mgrid[:48, :48, :48]
    label[0][(xx - 24) ** 2 + (yy - 24) ** 2 + (zz - 24) ** 2 <= 8**2] = 1
    image = np.stack([label[0] * 0.5, label[0] * 8.0 + 1.0]).astype(np.float32)
    ratios = []
    for seed in range(12):
        transform.set_random_state(seed)
        out = transform(with_sampling_map({"image": image.copy(), "label": label.copy()}, hot_suv=config.hot_suv))
        out = out[0] if isinstance(out, list) else out
        values = torch.unique(torch.as_tensor(out["label"]))
        assert set(values.tolist()) <= {0.0, 1.0}
        ratios.append(float(torch.as_tensor(out["label"]).sum()) / label.sum())
    # scaling +-10 % per axis changes volume by up to ~30 % per draw; the mean stays put
    assert abs(np.mean(ratios) - 1.0) < 0.1
    assert min(ratios) > 0.6


def _two_blob_case(tmp_path):
    """A lesion (SUV 6) in one corner and a hot organ (SUV 12, not labelled) in the other."""
    zz, yy, xx = np.mgrid[:64, :64, :64]
    lesion = (xx - 12) ** 2 + (yy - 12) ** 2 + (zz - 12) ** 2 <= 5**2
    organ = (xx - 50) ** 2 + (yy - 50) ** 2 + (zz - 50) ** 2 <= 6**2
    pet = np.full((64, 64, 64), 0.5, np.float32)
    pet[lesion], pet[organ] = 6.0, 12.0
    ct = np.full((64, 64, 64), 0.52, np.float32)
    path = tmp_path / "case.npz"
    np.savez(path, image=np.stack([ct, pet]), label=lesion.astype(np.uint8))
    return path


@pytest.mark.parametrize(
    "ratios, allowed",
    [((0.0, 0.0, 1.0), {"organ"}), ((1.0, 0.0, 1.0), {"organ", "lesion"}), ((1.0, 0.0, 0.0), {"lesion"})],
)
def test_patch_centres_follow_lesion_background_and_hot_ratios(tmp_path, ratios, allowed):
    """(pos, neg, hard) ratios: hot-background patches hold the unlabelled organ and no lesion."""
    pos, neg, hard = ratios
    config = TrainConfig(
        data_dir=".",
        out_dir=".",
        patch_size=(16, 16, 16),
        augment=False,
        pos_neg=(pos, neg),
        hard_negatives=hard,
        hot_suv=3.0,
    )
    case = load_cached(_two_blob_case(tmp_path), hot_suv=config.hot_suv)
    assert set(np.unique(case["sampling"]).tolist()) == {0, 1, 2}
    transform = train_transforms(config)
    seen = set()
    for seed in range(10):
        transform.set_random_state(seed)
        out = transform(dict(case))
        out = out[0] if isinstance(out, list) else out
        assert set(out) == {"image", "label"} and tuple(out["image"].shape) == (2, 16, 16, 16)
        pet_max, lesion_voxels = float(out["image"][1].max()), float(out["label"].sum())
        kind = "lesion" if lesion_voxels > 0 else "organ" if pet_max == 12.0 else "background"
        if kind == "lesion":
            assert pet_max == 6.0  # the two blobs are too far apart to share a patch
        seen.add(kind)
    assert seen == allowed  # never a background-centred patch when its ratio is 0


def test_gamma_is_drawn_per_channel_and_keeps_the_ct_range():
    """CT in [0, 1] beside PET up to SUV 20: a gamma over both channels' joint range would
    push soft tissue (0.5) to ~1.5; per channel the CT stays near [0, 1]."""
    config = TrainConfig(data_dir=".", out_dir=".", patch_size=(24, 24, 24), network=dict(TINY_NETWORK))
    transform = train_transforms(config)
    ct = np.full((24, 24, 24), 0.5, np.float32)
    ct[:, :, :4] = 0.0
    ct[:, :, -4:] = 1.0
    pet = np.linspace(0.0, 20.0, 24**3, dtype=np.float32).reshape(24, 24, 24)
    changed = 0
    for seed in range(20):
        transform.set_random_state(seed)
        case = {"image": np.stack([ct, pet]), "label": np.zeros((1, 24, 24, 24), np.float32)}
        out = transform(with_sampling_map(case, hot_suv=config.hot_suv))
        out = out[0] if isinstance(out, list) else out
        soft = torch.as_tensor(out["image"][0])[4:-4, 4:-4, 8:-8]
        assert float(soft.median()) < 0.8, f"seed {seed}: soft tissue moved to {float(soft.median()):.2f}"
        changed += abs(float(soft.median()) - 0.5) > 0.02
    assert changed > 0  # the CT was augmented at all


def test_one_precision_resolver_for_training_and_inference(monkeypatch):
    """auto: bf16 where native (CPU with AVX512-BF16/AMX, CUDA Ampere+), fp16 on older GPUs (the
    trainer then scales the loss), else fp32; explicit names are taken as they are."""
    assert resolve_precision("fp32", "cpu") is None and resolve_precision("fp16", "cpu") == torch.float16
    assert resolve_precision("auto", "cpu") == (torch.bfloat16 if cpu_supports_bf16() else None)
    for native, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda native=native: native)
        assert resolve_precision("auto", "cuda") == expected


def test_validation_runs_at_the_runs_precision(monkeypatch):
    """validate() uses the training Settings' precision, not a default autocast."""
    import petseg.inference

    seen = []
    real = petseg.inference.resolve_precision

    def spy(name, device_type):
        seen.append(name)
        return real(name, device_type)

    monkeypatch.setattr(petseg.inference, "resolve_precision", spy)
    from petseg.model import build_network

    net = build_network(TINY_NETWORK)
    case = {"image": np.zeros((2, 16, 16, 16), np.float32), "label": np.zeros((1, 16, 16, 16), np.float32)}
    settings = Settings(roi_size=(16, 16, 16), target_spacing=(4.0, 4.0, 4.0), precision="fp32")
    validate(net, [case], settings=settings, device=torch.device("cpu"))
    assert seen and set(seen) == {"fp32"}


def test_train_two_folds_resume_and_assemble(phantom_data, tmp_path):
    run = tmp_path / "run"
    for fold in range(2):
        fold_dir = train_fold(_config(phantom_data, run, fold=fold))
        rows = (fold_dir / "log.csv").read_text().splitlines()
        assert rows[0].startswith("epoch,loss") and len(rows) == 3
        assert (fold_dir / "best.pt").is_file() and (fold_dir / "last.pt").is_file()
    splits = json.loads((run / "splits_final.json").read_text())
    assert len(splits) == 2 and len(list((run / "cache").glob("*/*.npz"))) == 6  # one folder: one set of settings

    model = assemble(run, tmp_path / "model")
    assert [f.fold for f in model.folds] == [0, 1]
    for name in ("splits_final.json", "fold0_log.csv", "fold1_log.csv", "fold0_curves.png", "fold1_curves.png"):
        assert (tmp_path / "model" / name).is_file(), name
    assert (tmp_path / "model" / "fold1_log.csv").read_text() == (run / "fold_1" / "log.csv").read_text()
    assert model.settings.target_spacing == (4.0, 4.0, 4.0)
    ct = next((phantom_data / "imagesTr").glob("*_0000.nii.gz"))
    pet = ct.with_name(ct.name.replace("_0000", "_0001"))
    mask = petseg.segment(ct, pet, model_dir=tmp_path / "model", device="cpu")
    assert mask.GetSize() == sitk.ReadImage(str(pet)).GetSize()


def test_resume_equals_an_uninterrupted_run(phantom_data, tmp_path):
    """Stopped after epoch 0 and resumed == trained straight through: same epoch, same
    optimizer moments, same weights (every random state is restored)."""
    config = dataclasses.replace(_config(phantom_data, tmp_path / "straight", fold=0), epochs=2, val_every=5)
    train_fold(config)
    interrupted = dataclasses.replace(config, out_dir=tmp_path / "interrupted")
    train_fold(interrupted, stop_after=1)
    assert torch.load(tmp_path / "interrupted" / "fold_0" / "last.pt", weights_only=False)["epoch"] == 0
    train_fold(interrupted, resume=True)
    a = torch.load(tmp_path / "straight" / "fold_0" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "interrupted" / "fold_0" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 2
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
    lines = (tmp_path / "interrupted" / "fold_0" / "log.csv").read_text().splitlines()
    assert [ln.split(",")[0] for ln in lines[1:]] == ["0", "1"]


def tiny_train_argv(data, run, *, fold: str, epochs: int = 1, batch_size: int = 2) -> list[str]:
    """``petseg train`` of a tiny network (4-8 wide, one residual unit) on a 4 mm grid, 32^3 patches, 2 folds."""
    argv = ["train", "-d", str(data), "-o", str(run), "--folds", "2", "--fold", fold, "--epochs", str(epochs)]
    argv += ["--batch-size", str(batch_size), "--patch-size", "32", "32", "32", "--channels", "4", "8"]
    return argv + ["--num-res-units", "1", "--target-spacing", "4", "4", "4", "--roi-size", "32", "32", "32"]


def test_train_and_assemble_cli(phantom_data, tmp_path):
    args = tiny_train_argv(phantom_data, tmp_path / "run", fold="-1")
    args += ["--hard-negatives", "1", "--hot-suv", "2.5", "--device", "cpu"]
    assert main(args) == 0
    assert main(["assemble", str(tmp_path / "run"), "-o", str(tmp_path / "model")]) == 0
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["network"]["kwargs"]["channels"] == [4, 8] and len(meta["folds"]) == 2


@pytest.mark.slow
def test_torchrun_two_processes_gather_validation_and_only_rank0_writes(phantom_data, tmp_path):
    """DDP on the CPU (gloo): both ranks train and validate their half; rank 0 writes alone."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "petseg"]
    cmd += tiny_train_argv(phantom_data, run, fold="0", epochs=2, batch_size=1) + [
        "--val-every",
        "1",
        "--device",
        "cpu",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # one voice: rank 0 logs the run (stdout), rank 1 only warnings
    assert "rank 0 of 2" in result.stdout and "rank 1 of 2" not in result.stdout
    with open(run / "fold_0" / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["0", "1"]  # one writer: no duplicated rows
    n_val = len(json.loads((run / "splits_final.json").read_text())[0]["val"])
    assert all(int(r["val_cases"]) == n_val for r in rows)  # gathered from both ranks
    assert sorted(p.name for p in (run / "fold_0").iterdir()) == ["best.pt", "curves.png", "last.pt", "log.csv"]


def test_fine_tuning_starts_from_a_model_folders_fold(phantom_data, tmp_path, tiny_model_dir):
    config = _config(phantom_data, tmp_path / "ft", fold=1, init_from=tiny_model_dir)
    train_fold(config, stop_after=0)  # no epoch: the saved weights are the starting weights
    start = torch.load(tmp_path / "ft" / "fold_1" / "best.pt", weights_only=True)
    given = torch.load(tiny_model_dir / "fold1.pt", weights_only=True)
    for key in given:
        torch.testing.assert_close(start[key], given[key], rtol=0, atol=0)
    with pytest.raises(petseg.InputError, match="initial weights not found"):
        train_fold(dataclasses.replace(config, init_from=tmp_path / "nope.pt"), overwrite=True)


def test_simulated_clicks_sit_on_lesion_centres_and_hot_background():
    from petseg.train.clicks import SimulateClicksd, lesion_centres

    label = np.zeros((1, 30, 30, 30), np.float32)
    label[0, 3:10, 3:10, 3:10] = 1  # 7^3 cube: centre (6, 6, 6)
    label[0, 20:23, 20:23, 20:23] = 1  # 3^3 cube: centre (21, 21, 21)
    image = np.zeros((2, 30, 30, 30), np.float32)
    image[1, 25:28, 2:5, 2:5] = 9.0  # hot background
    centres = lesion_centres(label[0], spacing=(2.0, 2.0, 2.0))
    np.testing.assert_array_equal(centres, [[6, 6, 6], [21, 21, 21]])
    transform = SimulateClicksd(spacing=(2.0, 2.0, 2.0), sigma_mm=3.0, hot_suv=3.0)
    seen = set()
    for seed in range(200):
        transform.set_random_state(seed)
        out = transform({"image": image, "label": label})["image"]
        assert out.shape == (4, 30, 30, 30)
        np.testing.assert_array_equal(out[:2], image)
        tumour, background = out[2], out[3]
        peaks = {tuple(int(v) for v in p) for p in np.argwhere(tumour > 0.999)}
        assert peaks <= {(6, 6, 6), (21, 21, 21)}
        assert all(image[1][tuple(p)] >= 3.0 for p in np.argwhere(background > 0.999))
        seen.add((len(peaks), bool(background.any())))
    assert {n for n, _ in seen} == {0, 1, 2} and {b for _, b in seen} == {False, True}  # 0..n lesions, 0..10


def test_simulated_clicks_leave_lesions_unclicked_and_some_patches_click_free():
    from petseg.train.clicks import SimulateClicksd

    label = np.zeros((1, 24, 24, 24), np.float32)
    label[0, 8:14, 8:14, 8:14] = 1  # one lesion
    image = np.zeros((2, 24, 24, 24), np.float32)
    image[1, 18:21, 2:5, 2:5] = 9.0

    def draws(click_free: float) -> list[tuple[bool, bool]]:
        transform = SimulateClicksd(spacing=(2.0, 3.0, 1.5), sigma_mm=3.0, hot_suv=3.0, click_free=click_free)
        out = []
        for seed in range(400):
            transform.set_random_state(seed)
            maps = transform({"image": image, "label": label})["image"][2:]
            out.append((bool(maps[0].any()), bool(maps[1].any())))
        return out

    # the single lesion is clicked in about half of the patches (0..1 clicks), not 10 in 11
    clicked = np.mean([t for t, _ in draws(0.0)])
    assert 0.4 < clicked < 0.6
    assert not any(t or b for t, b in draws(1.0))  # click-free: no map at all
    free = np.mean([not (t or b) for t, b in draws(0.5)])
    none_otherwise = 0.5 * (1 / 11)  # clicked patches with 0 tumour and 0 background clicks
    assert abs(free - (0.5 + none_otherwise)) < 0.08


def test_simulated_scribbles_lie_on_lesions_and_hot_spots_one_slice_each():
    from petseg.train.clicks import SimulateClicksd

    label = np.zeros((1, 30, 30, 30), np.float32)
    label[0, 3:12, 3:10, 3:10] = 1
    label[0, 20:26, 20:24, 18:24] = 1
    image = np.zeros((2, 30, 30, 30), np.float32)
    image[1, 24:29, 2:8, 2:6] = 9.0  # hot background
    transform = SimulateClicksd(spacing=(2.0, 2.0, 2.0), sigma_mm=2.0, hot_suv=3.0, scribbles=True)
    seen = set()
    for seed in range(60):
        transform.set_random_state(seed)
        maps = transform({"image": image, "label": label})["image"][2:]
        tumour = np.argwhere(maps[0] > 0.999)  # the scribbles' points (x, y, z)
        background = np.argwhere(maps[1] > 0.999)
        assert all(label[0][tuple(p)] for p in tumour) and all(image[1][tuple(p)] >= 3.0 for p in background)
        lesions_hit = {int(p[0] >= 20) for p in tumour}
        seen.add((len(lesions_hit), bool(len(background))))
        if len(tumour):
            assert len({z for x, y, z in tumour if x < 20}) <= 1 and len({z for x, y, z in tumour if x >= 20}) <= 1
    assert {n for n, _ in seen} == {0, 1, 2} and {b for _, b in seen} == {False, True}


def test_scribble_training_needs_a_click_aware_model_and_enters_the_recipe_only_when_on(tmp_path):
    with pytest.raises(ConfigError, match="scribbles: needs a click-aware model"):
        _config(tmp_path, tmp_path, scribbles=True)
    network = {**TINY_NETWORK, "in_channels": 4}
    clicks = Settings(target_spacing=(4.0, 4.0, 4.0), roi_size=(32, 32, 32), device="cpu", click_sigma_mm=5.0)
    plain = dataclasses.replace(_config(tmp_path, tmp_path), network=network, settings=clicks)
    assert "scribbles" not in plain.recipe()  # the recipes of earlier click runs stay the same
    assert dataclasses.replace(plain, scribbles=True).recipe()["scribbles"] is True


def test_error_scribbles_go_along_the_largest_error_on_one_slice():
    from petseg.train.clicks import ErrorClicks

    spacing, y, predicted, x = _error_click_batch()
    out = ErrorClicks(
        _FixedPrediction(predicted), spacing=spacing, sigma_mm=0.5, probability=1.0, max_rounds=1, scribbles=True
    )(x, y)
    points = np.argwhere(out[0, 2].numpy() > 0.999)  # (x, y, z) of the patch
    assert len(points) > 1 and len({int(z) for *_, z in points}) == 1
    assert all(y[0, 0][tuple(p)] and not predicted[tuple(p)] for p in points)  # on the missed lesion A
    torch.testing.assert_close(out[1], x[1])  # a click-free patch stays click-free


class _FixedPrediction(torch.nn.Module):
    """Predicts ``mask`` (X, Y, Z) for every sample; records the mode of each call."""

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.mask = torch.from_numpy(mask)
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        logits = torch.stack([~self.mask, self.mask]).float()
        return logits.expand(x.shape[0], *logits.shape)


def _error_click_batch():
    spacing = (3.0, 1.0, 1.0)  # lesion A below is 9 mm along each axis: one farthest voxel, (10, 12, 12)
    label = np.zeros((2, 1, 20, 30, 30), np.float32)
    label[:, 0, 9:12, 8:17, 8:17] = 1  # A, missed by the prediction
    label[:, 0, 2:4, 2:5, 2:5] = 1  # B, found
    predicted = np.zeros((20, 30, 30), bool)
    predicted[2:4, 2:5, 2:5] = True
    x = torch.zeros(2, 4, 20, 30, 30)
    x[0, 3, 18, 25, 25] = 1.0  # patch 0 already has a background click, patch 1 none
    return spacing, torch.from_numpy(label), predicted, x


def test_error_clicks_go_to_the_largest_error_of_the_networks_prediction():
    from petseg.train.clicks import ErrorClicks

    spacing, y, predicted, x = _error_click_batch()
    network = _FixedPrediction(predicted).train()
    out = ErrorClicks(network, spacing=spacing, sigma_mm=2.0, probability=1.0, max_rounds=1)(x, y)
    tumour = out[0, 2].numpy()
    assert np.unravel_index(np.argmax(tumour), tumour.shape) == (10, 12, 12) and tumour.max() == pytest.approx(1.0)
    torch.testing.assert_close(out[0, 3], x[0, 3])  # the earlier click stays
    torch.testing.assert_close(out[1], x[1])  # a click-free patch stays click-free
    torch.testing.assert_close(out[:, :2], x[:, :2])
    assert network.modes == [False] and network.training  # predicted in eval mode, then back to training

    # a false region larger than every missed one gets a background click at its centre
    false = predicted.copy()
    false[14:19, 20:29, 20:29] = True
    label = y.clone()
    label[:, 0, 9:12, 8:17, 8:17] = 0
    label[:, 0, 9:10, 8:10, 8:10] = 1  # a small missed lesion
    out = ErrorClicks(_FixedPrediction(false), spacing=spacing, sigma_mm=2.0, probability=1.0, max_rounds=1)(x, label)
    background = out[0, 3].numpy() - x[0, 3].numpy()
    peak = np.unravel_index(np.argmax(background), background.shape)
    assert false[peak] and not label[0, 0][peak] and not out[0, 2].any()


def test_error_clicks_are_drawn_for_a_share_of_the_batches():
    from petseg.train.clicks import ErrorClicks

    spacing, y, predicted, x = _error_click_batch()
    network = _FixedPrediction(predicted)
    never = ErrorClicks(network, spacing=spacing, sigma_mm=2.0, probability=0.0)
    assert never(x, y) is x and network.modes == []
    sometimes = ErrorClicks(network, spacing=spacing, sigma_mm=2.0, probability=0.5, max_rounds=3)
    changed = [not torch.equal(sometimes(x, y), x) for _ in range(200)]
    assert 0.35 < np.mean(changed) < 0.65
    assert 1 < len(network.modes) / sum(changed) < 3  # 1..3 rounds each


def test_click_training_writes_a_four_channel_model_that_takes_clicks(phantom_data, tmp_path, caplog, capsys):
    import SimpleITK as sitk

    from petseg.model import ModelFolder
    from petseg.predictor import Predictor

    args = tiny_train_argv(phantom_data, tmp_path / "run", fold="0")
    assert main([*args, "--device", "cpu", "--error-clicks", "0.5"]) == 1  # error-driven clicks need --clicks
    assert "error_clicks" in capsys.readouterr().err
    assert main([*args, "--device", "cpu", "--clicks", "--click-sigma-mm", "6", "--error-clicks", "1"]) == 0
    assert main(["assemble", str(tmp_path / "run"), "-o", str(tmp_path / "model")]) == 0
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["network"]["kwargs"]["in_channels"] == 4
    assert meta["preprocessing"]["channels"] == ["CT", "PET", "tumor_clicks", "background_clicks"]
    assert meta["preprocessing"]["click_sigma_mm"] == 6.0
    folder = ModelFolder.open(tmp_path / "model")
    predictor = Predictor(folder.load_networks(), settings=folder.settings.with_overrides(device="cpu"))
    case = sorted((phantom_data / "imagesTr").glob("*_0000.nii.gz"))[0]
    pet = case.with_name(case.name.replace("_0000", "_0001"))
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"points": [{"point": [10, 10, 20], "name": "tumor"}]}))
    with_clicks = predictor.predict_paths(ct=case, pet=pet, clicks=clicks)
    without = predictor.predict_paths(ct=case, pet=pet)
    p1, p0 = (sitk.GetArrayFromImage(p.probability) for p in (with_clicks, without))
    assert p1.shape == p0.shape and not np.array_equal(p1, p0)  # the click channel reaches the network


def test_a_ct_pet_model_widened_for_clicks_starts_as_the_same_model():
    import torch

    from petseg.model import build_network, load_state_dict
    from petseg.train.trainer import widened

    torch.manual_seed(0)
    two = build_network(dict(TINY_NETWORK)).eval()
    four = build_network({**TINY_NETWORK, "in_channels": 4}).eval()
    load_state_dict(four, widened(two.state_dict(), four), source="test")
    x = torch.randn(1, 2, 16, 16, 16)
    clicks = torch.zeros(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(four(torch.cat([x, clicks], dim=1)), two(x))
        torch.testing.assert_close(four(torch.cat([x, clicks + 1], dim=1)), two(x))  # zero weights: clicks unused
    assert four.state_dict()["model.0.conv.unit0.conv.weight"][:, 2:].abs().sum() == 0
