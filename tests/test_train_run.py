"""A training run folder: cache keyed by its settings, folds never silently replaced, resume
that refuses a changed recipe, readable progress, every file written atomically."""

import csv
import dataclasses
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch

from petseg.errors import ConfigError, ModelError
from petseg.model_write import assemble
from petseg.settings import Settings
from petseg.train import TrainConfig, train_fold
from petseg.train.trainer import loader_workers

from conftest import ROOT, TINY_NETWORK, training_cohort


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return training_cohort(tmp_path_factory.mktemp("run_data"), n=2, seed=21)


def config(data, out, **kw):
    settings = kw.pop("settings", Settings(target_spacing=(8.0, 8.0, 8.0), roi_size=(32, 32, 32), device="cpu"))
    values = dict(
        data_dir=data,
        out_dir=out,
        n_folds=2,
        epochs=2,
        batch_size=2,
        patch_size=(16, 16, 16),
        val_every=1,
        network=dict(TINY_NETWORK),
        settings=settings,
    )
    return TrainConfig(**{**values, **kw})


def weights(path):
    state = torch.load(path, weights_only=True)
    return state.get("model", state)


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)


def rows(fold_dir):
    with open(fold_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# --- the cache and --overwrite -------------------------------------------------------------------


def test_overwrite_at_another_spacing_trains_exactly_a_fresh_run_at_that_spacing(data, tmp_path):
    coarse = config(data, tmp_path / "run")
    train_fold(coarse)
    fine = dataclasses.replace(
        coarse, settings=dataclasses.replace(coarse.settings, target_spacing=(4.0, 4.0, 4.0)), patch_size=(24,) * 3
    )
    with pytest.raises(ConfigError, match="holds a trained fold .*--resume continues it, --overwrite starts it anew"):
        train_fold(fine)
    train_fold(fine, overwrite=True)
    train_fold(dataclasses.replace(fine, out_dir=tmp_path / "fresh"))
    for name in ("best.pt", "last.pt"):
        assert_same_weights(tmp_path / "run" / "fold_0" / name, tmp_path / "fresh" / "fold_0" / name)
    caches = sorted(p.name for p in (tmp_path / "run" / "cache").iterdir())
    assert len(caches) == 2  # one per set of settings; the 8 mm arrays are never taken for 4 mm
    for key in caches:
        fingerprint = json.loads((tmp_path / "run" / "cache" / key / "fingerprint.json").read_text())
        assert fingerprint["preprocessing"]["target_spacing"] in ([8.0] * 3, [4.0] * 3)
    described = json.loads((tmp_path / "run" / "train.json").read_text())
    assert described["preprocessing"]["target_spacing"] == [4.0] * 3 and described["training"]["patch_size"] == [24] * 3


def test_a_changed_input_is_preprocessed_again(data, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    run = config(copy, tmp_path / "run", epochs=1)
    train_fold(run)
    cache = next((tmp_path / "run" / "cache").iterdir())
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz")}
    pet = sorted((copy / "imagesTr").glob("*_0001.nii.gz"))[0]
    other = sorted((copy / "imagesTr").glob("*_0001.nii.gz"))[1]
    shutil.copyfile(other, pet)  # another study's PET under this case's name
    train_fold(run, overwrite=True)
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npz")}
    changed = sorted(name for name in before if after[name] != before[name])
    assert changed == [pet.name.replace("_0001.nii.gz", ".npz")]


# --- the run's recipe ---------------------------------------------------------------------------


def test_a_fold_of_another_recipe_is_refused_in_a_run_folder_and_by_assemble(data, tmp_path):
    run = config(data, tmp_path / "run", epochs=1)
    train_fold(run)
    with pytest.raises(
        ConfigError, match=r"train.json: the run was made with another recipe \(training.lr: 0.001 -> 0.01\)"
    ):
        train_fold(dataclasses.replace(run, fold=1, lr=0.01))
    train_fold(dataclasses.replace(run, fold=1, lr=0.01), overwrite=True)  # the run anew, for fold 1
    with pytest.raises(
        ModelError, match=r"fold_0: was trained with another recipe than .*train.json \(lr: 0.001 -> 0.01"
    ):
        assemble(tmp_path / "run", tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_another_split_is_refused(data, tmp_path):
    run = config(data, tmp_path / "run", epochs=1)
    train_fold(run)
    splits = json.loads((tmp_path / "run" / "splits_final.json").read_text())
    swapped = [{"train": s["val"], "val": s["train"]} for s in splits]
    (tmp_path / "mine.json").write_text(json.dumps(swapped))
    with pytest.raises(ConfigError, match="splits_final.json: the run's split differs from this one"):
        train_fold(dataclasses.replace(run, fold=1, splits_file=tmp_path / "mine.json"))


# --- resume --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(lr=0.5), "lr: 0.001 -> 0.5"),
        (dict(seed=99), "seed: 0 -> 99"),
        (dict(batch_size=1), "batch_size: 2 -> 1"),
        (dict(network={**TINY_NETWORK, "channels": [4, 16]}), "network.channels: [4, 8] -> [4, 16]"),
        (dict(augment=False), "augment: true -> false"),
        (dict(patch_size=(24, 24, 24)), "patch_size: [16, 16, 16] -> [24, 24, 24]"),
    ],
)
def test_resume_with_another_recipe_is_refused_naming_the_fields(data, tmp_path, change, named):
    run = config(data, tmp_path / "run", epochs=2)
    train_fold(run, stop_after=1)
    with pytest.raises(ConfigError) as err:
        train_fold(dataclasses.replace(run, **change), resume=True)
    message = str(err.value)
    assert named in message and "\n" not in message and ("train.json" in message or "last.pt" in message)


def test_resume_refusals_name_the_file(data, tmp_path):
    run = config(data, tmp_path / "run", epochs=3)
    with pytest.raises(ConfigError, match="last.pt: not found: nothing to resume"):
        train_fold(run, resume=True)  # a typo in -o must not train from scratch
    train_fold(run, stop_after=2)
    with pytest.raises(ConfigError, match="--epochs: 2 is below the 3 epochs"):
        train_fold(dataclasses.replace(run, epochs=2), resume=True)
    last = tmp_path / "run" / "fold_0" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ModelError, match="last.pt: cannot be loaded as a training state"):
        train_fold(run, resume=True)
    with pytest.raises(ConfigError, match="give one"):
        train_fold(run, resume=True, overwrite=True)


def test_more_epochs_on_resume_follow_the_cosine_of_the_longer_run(data, tmp_path):
    run = config(data, tmp_path / "run", epochs=2, val_every=5)
    train_fold(run)  # all 2 epochs: the learning rate has reached 0
    train_fold(dataclasses.replace(run, epochs=4), resume=True)
    lrs = [float(r["lr"]) for r in rows(tmp_path / "run" / "fold_0")]
    assert [int(r["epoch"]) for r in rows(tmp_path / "run" / "fold_0")] == [0, 1, 2, 3]
    planned = [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (2, 3)]
    assert lrs[:2] == pytest.approx([1e-3, 5e-4], rel=1e-5) and lrs[2:] == pytest.approx(
        planned, rel=1e-5
    )  # log: 6 digits
    again = train_fold(dataclasses.replace(run, epochs=4), resume=True)  # nothing left: says so, changes nothing
    assert len(rows(again)) == 4


def test_a_resumed_log_has_each_epoch_once(data, tmp_path):
    run = config(data, tmp_path / "run", epochs=3)
    train_fold(run, stop_after=1)
    with open(tmp_path / "run" / "fold_0" / "log.csv", "a") as fh:
        fh.write("1,0.5,0.001,,,,,1.0\n")  # a row written after the last.pt a crash kept
    train_fold(run, resume=True)
    assert [int(r["epoch"]) for r in rows(tmp_path / "run" / "fold_0")] == [0, 1, 2]


# --- progress ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_progress_in_a_log_file_is_lines_not_bars(data, tmp_path):
    argv = [sys.executable, "-m", "petseg", "train", "-d", str(data), "-o", str(tmp_path / "run"), "--fold", "0"]
    argv += ["--folds", "2", "--epochs", "2", "--val-every", "1", "--batch-size", "2", "--patch-size", "16", "16", "16"]
    argv += ["--channels", "4", "8", "--num-res-units", "1", "--target-spacing", "8", "8", "8"]
    argv += ["--roi-size", "32", "32", "32", "--device", "cpu"]
    done = subprocess.run(argv, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr + done.stdout  # no progress bar redraws in a file
    out = done.stdout
    assert "fold 0 epoch 1/2: loss " in out and "validation DSC " in out and " FNV " in out
    assert "fold 0: new best DSC" in out and "saved best.pt" in out
    assert "fold 0: 2 epoch(s) in " in out and "now 2 of 2; best DSC" in out
    assert "{'epoch'" not in out  # no raw dicts


def test_loader_workers_follow_the_cpus_per_gpu():
    cfg = TrainConfig(data_dir=".", out_dir=".")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert loader_workers(cfg, cpu) == 0
    assert loader_workers(dataclasses.replace(cfg, num_workers=3), cpu) == 3
    from petseg.frontend import available_cpus

    cpus = available_cpus()
    assert loader_workers(cfg, cuda, {}) == max(0, min(cpus - 1, 12))
    torchrun = {"RANK": "0", "WORLD_SIZE": str(cpus), "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": str(cpus)}
    assert loader_workers(cfg, cuda, torchrun) == 0


# --- the third hostile round of the run folder ---------------------------------------------------


def test_a_fold_being_trained_is_refused_to_a_second_process(data, tmp_path):
    from petseg.train.claims import fold_lock

    run = config(data, tmp_path / "run", epochs=1)
    with fold_lock(tmp_path / "run" / "fold_0"):
        with pytest.raises(ConfigError, match=r"fold_0: is being trained by pid \d+: wait for it"):
            train_fold(run)
    train_fold(run)  # released: trains, and leaves no lock file behind
    assert not (tmp_path / "run" / "fold_0" / ".lock").exists()


def test_an_overwrite_that_replaces_the_recipe_names_the_folds_left_behind(data, tmp_path, caplog):
    run = config(data, tmp_path / "run", epochs=1)
    train_fold(run)
    with caplog.at_level("WARNING"):
        train_fold(dataclasses.replace(run, fold=1, lr=0.01), overwrite=True)
    assert any("fold_0, trained with the old one, will not assemble" in r.getMessage() for r in caplog.records)


def test_a_resume_keeps_its_best_weights_or_says_they_are_lost(data, tmp_path):
    run = config(data, tmp_path / "run", epochs=3)
    train_fold(run, stop_after=2)
    (tmp_path / "run" / "fold_0" / "best.pt").unlink()
    with pytest.raises(ConfigError, match=r"best.pt: the best weights \(epoch \d, DSC .*\) are missing"):
        train_fold(run, resume=True)


def test_fold_minus_one_resumes_the_started_folds_and_starts_the_others(data, tmp_path):
    from petseg.train.loop import train_folds

    run = config(data, tmp_path / "run", epochs=2)
    train_fold(run, stop_after=1)
    train_folds(run, [0, 1], resume=True)
    for fold in (0, 1):
        assert [int(r["epoch"]) for r in rows(tmp_path / "run" / f"fold_{fold}")] == [0, 1]
    with pytest.raises(ConfigError, match="fold_0: holds a trained fold"):
        train_folds(run, [0, 1])  # refused before any fold trains


def test_a_hand_edited_run_description_is_compared_too(data, tmp_path):
    run = config(data, tmp_path / "run", epochs=1)
    train_fold(run)
    path = tmp_path / "run" / "train.json"
    described = json.loads(path.read_text())
    described["preprocessing"]["target_spacing"] = [2.0, 2.0, 2.0]
    path.write_text(json.dumps(described))
    with pytest.raises(ConfigError, match=r"preprocessing.target_spacing: \[2.0, 2.0, 2.0\] -> \[8.0, 8.0, 8.0\]"):
        train_fold(dataclasses.replace(run, fold=1))
    described["training"] = None  # an older run's description: not checked, said so
    path.write_text(json.dumps(described))
    train_fold(dataclasses.replace(run, fold=1))


def test_a_damaged_cached_case_is_preprocessed_again(data, tmp_path, caplog):
    run = config(data, tmp_path / "run", epochs=1)
    train_fold(run)
    cached = sorted((tmp_path / "run" / "cache").glob("*/*.npz"))[0]
    cached.write_bytes(cached.read_bytes()[:100])
    with caplog.at_level("WARNING"):
        train_fold(run, overwrite=True)
    assert any("cached case is damaged" in r.getMessage() for r in caplog.records)


def test_resume_tolerates_what_does_not_change_the_weights(data, tmp_path, caplog):
    """--hot-suv without hard negatives, other loader workers (warned: the random streams differ)."""
    run = config(data, tmp_path / "run", epochs=2)
    train_fold(run, stop_after=1)
    with caplog.at_level("WARNING"):
        train_fold(dataclasses.replace(run, hot_suv=5.0, num_workers=1), resume=True)
    assert any("the augmentations' random streams differ" in r.getMessage() for r in caplog.records)


def test_training_refuses_a_device_it_cannot_use(data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    run = config(data, tmp_path / "run", epochs=1)
    cuda = dataclasses.replace(run, settings=dataclasses.replace(run.settings, device="cuda"))
    with pytest.raises(ConfigError, match="--device: cuda: no CUDA device here"):
        train_fold(cuda)
    with pytest.raises(ConfigError, match="--sync-batchnorm: needs GPUs"):
        train_fold(dataclasses.replace(run, sync_batchnorm=True))


def test_a_splits_file_must_match_the_fold_count_but_not_the_order(data, tmp_path):
    run = config(data, tmp_path / "run", epochs=1)
    train_fold(run)
    splits = json.loads((tmp_path / "run" / "splits_final.json").read_text())
    shuffled = [{"train": s["train"][::-1], "val": s["val"][::-1]} for s in splits]
    (tmp_path / "same.json").write_text(json.dumps(shuffled))
    train_fold(dataclasses.replace(run, fold=1, splits_file=tmp_path / "same.json"))
    (tmp_path / "three.json").write_text(json.dumps(splits + splits[:1]))
    with pytest.raises(ConfigError, match="--folds: 2 folds asked for, the split has 3"):
        train_fold(dataclasses.replace(run, splits_file=tmp_path / "three.json"), overwrite=True)


def test_a_fresh_loss_scale_when_resuming_a_bf16_fold_in_fp16(tmp_path):
    from petseg.train.trainer import build_trainer

    settings = Settings(target_spacing=(8.0, 8.0, 8.0), roi_size=(32, 32, 32), device="cpu", precision="fp16")
    cfg = TrainConfig(data_dir=".", out_dir=".", network=dict(TINY_NETWORK), patch_size=(16, 16, 16), settings=settings)
    from petseg.train.distributed import Dist

    trainer = build_trainer(cfg, device=torch.device("cpu"), dist=Dist())
    state = trainer.state(epoch=0, recipe={})
    state["scaler"] = {}  # what a bf16 run (a disabled scaler) saved
    trainer.load(state, source=tmp_path / "last.pt")
    assert trainer.start_epoch == 1


def test_assemble_names_an_unfinished_fold_and_records_each_folds_epochs(data, tmp_path, caplog):
    run = config(data, tmp_path / "run", epochs=3)
    train_fold(run)
    train_fold(dataclasses.replace(run, fold=1), stop_after=1)
    for other in ("fold_0_old", "fold_01", "fold_x"):  # a user's copies: never taken as fold 0
        shutil.copytree(tmp_path / "run" / "fold_0", tmp_path / "run" / other)
        state = torch.load(tmp_path / "run" / other / "best.pt", weights_only=True)  # a plain state dict
        torch.save({k: v + 1 for k, v in state.items()}, tmp_path / "run" / other / "best.pt")
    with caplog.at_level("WARNING"):
        assemble(tmp_path / "run", tmp_path / "model")
    assert any("fold_1: has trained 1 of its 3 epochs" in r.getMessage() for r in caplog.records)
    assert any("not assembled: fold_01, fold_0_old, fold_x" in r.getMessage() for r in caplog.records)
    best = torch.load(tmp_path / "run" / "fold_0" / "best.pt", weights_only=True)
    taken = torch.load(tmp_path / "model" / "fold0.pt", weights_only=True)
    assert all(torch.equal(taken[k], v) for k, v in best.items())
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["training"]["folds"]["0"]["epochs"] == 3 and meta["training"]["folds"]["1"]["epochs"] == 1
