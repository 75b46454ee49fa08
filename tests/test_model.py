"""Model folder: the paper network, import of the authors' checkpoints, checksums, errors."""

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import petseg
from petseg.cli import main
from petseg.model import MODEL_JSON, ModelFolder, build_network, count_parameters
from petseg.model_write import fold_number, import_weights, write_model_folder
from petseg.settings import PAPER_NETWORK, Settings

from conftest import DIRECTIONS, TINY_NETWORK, make_image


def test_paper_network_has_19223525_trainable_parameters():
    assert count_parameters(build_network(PAPER_NETWORK)) == 19_223_525


@pytest.mark.parametrize(
    "name, fold",
    [("fold0_model_ep=0284.pth", 0), ("fold_3.pt", 3), ("FOLD-4-best.pth", 4), ("model.pth", None)],
)
def test_fold_number_from_file_names(name, fold):
    assert fold_number(name) == fold


def _seed_pipeline_probability(ct_path, pet_path, networks, roi):
    """The seed container's MONAI path: LoadImaged (nibabel) -> EnsureChannelFirstd ->
    ScaleIntensityRanged -> Orientationd RAS -> per-fold sliding window -> mean softmax."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
    )

    data = Compose(
        [
            LoadImaged(keys=["ct", "pet"]),
            EnsureChannelFirstd(keys=["ct", "pet"]),
            ScaleIntensityRanged(keys=["ct"], a_min=-1024, a_max=1024, b_min=0, b_max=1, clip=True),
            Orientationd(keys=["ct", "pet"], axcodes="RAS"),
            ConcatItemsd(keys=["ct", "pet"], name="image", dim=0),
        ]
    )({"ct": str(ct_path), "pet": str(pet_path)})
    x = torch.as_tensor(np.asarray(data["image"]))[None]
    with torch.inference_mode():
        probs = [torch.softmax(sliding_window_inference(x, roi, 1, net, overlap=0.5), 1) for net in networks]
    return torch.stack(probs).mean(0)[0, 1].numpy(), data["image"].affine


@pytest.mark.slow
def test_imported_paper_checkpoints_reproduce_the_seed_monai_pipeline(tmp_path):
    """Five paper-size state dicts -> import-weights -> segment == the seed pipeline's mask."""
    rng = np.random.default_rng(0)
    size, spacing, origin = (40, 36, 28), (2.0, 2.0, 2.0), (-40.0, 31.0, -260.0)
    direction = DIRECTIONS["flipped"]
    pet = rng.gamma(2.0, 1.0, size).astype(np.float32)
    pet[10:20, 12:22, 8:18] += 8.0
    ct = rng.normal(0.0, 300.0, size).astype(np.float32)  # body everywhere: the crop is the identity
    ct_img = make_image(ct, spacing=spacing, origin=origin, direction=direction)
    pet_img = make_image(pet, spacing=spacing, origin=origin, direction=direction)
    sitk.WriteImage(ct_img, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(pet_img, str(tmp_path / "pet.nii.gz"))

    files = []
    x = torch.rand(2, 2, 32, 32, 32)
    for fold in range(5):
        torch.manual_seed(100 + fold)
        net = build_network(PAPER_NETWORK)
        net.train()
        for m in net.modules():  # give BatchNorm non-trivial running statistics
            if isinstance(m, torch.nn.BatchNorm3d):
                m.momentum = 1.0
        with torch.no_grad():
            net(x)
        files.append(tmp_path / f"fold{fold}_model_ep=0{284 + fold}.pth")
        torch.save(net.state_dict(), files[-1])

    assert main(["import-weights", *map(str, files), "-o", str(tmp_path / "model")]) == 0
    folder = ModelFolder.open(tmp_path / "model")
    assert [f.fold for f in folder.folds] == [0, 1, 2, 3, 4]
    roi = (64, 64, 64)  # the image fits one window; keeps the paper network cheap on a CPU
    networks = folder.load_networks()
    settings = folder.settings.with_overrides(roi_size=roi, device="cpu", precision="fp32")  # the reference path

    ours = petseg.Predictor(networks, settings=settings).predict_probability(ct_img, pet_img)
    seed_prob, seed_affine = _seed_pipeline_probability(tmp_path / "ct.nii.gz", tmp_path / "pet.nii.gz", networks, roi)
    # back from RAS to the file's voxel order (flipped x and z here) and to SimpleITK's (z, y, x)
    import nibabel as nib

    native_ornt = nib.orientations.io_orientation(nib.load(str(tmp_path / "pet.nii.gz")).affine)
    to_native = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), native_ornt)
    seed_native = nib.orientations.apply_orientation(seed_prob, to_native).transpose(2, 1, 0)
    ours_arr = sitk.GetArrayFromImage(ours)
    # BatchNorm folding reorders fp32 arithmetic: ~1e-5 differences
    np.testing.assert_allclose(ours_arr, seed_native, atol=1e-4)
    fg = seed_native > 0.5
    assert 0.01 < fg.mean() < 0.99, "the random networks must give a non-trivial mask"
    ours_mask = sitk.GetArrayFromImage(petseg.Predictor(networks, settings=settings).predict(ct_img, pet_img))
    clear = np.abs(seed_native - 0.5) > 1e-4
    np.testing.assert_array_equal(ours_mask[clear], fg[clear])
    assert clear.mean() > 0.99


def _tiny_folder(tmp_path):
    torch.manual_seed(0)
    state = build_network(TINY_NETWORK).state_dict()
    return write_model_folder(tmp_path / "m", state_dicts={0: state}, network=TINY_NETWORK, settings=Settings())


def test_model_json_describes_the_folder(tmp_path):
    folder = _tiny_folder(tmp_path)
    meta = json.loads((folder.path / MODEL_JSON).read_text())
    assert meta["network"]["kwargs"] == TINY_NETWORK
    assert meta["inference"]["roi_size"] == [192, 192, 192] and meta["inference"]["overlap"] == 0.5
    assert meta["preprocessing"]["target_spacing"] == [2.0, 2.0, 2.0]
    assert meta["preprocessing"]["channels"] == ["CT", "PET"]
    assert len(meta["folds"][0]["sha256"]) == 64
    assert len(folder.load_networks()) == 1


def test_model_json_states_every_key_of_both_sections(tmp_path):
    """Each field's section is declared on the field: model.json gets every one of them."""
    settings = Settings(threshold=0.3, click_removal=False, time_budget_s=90.0, body_margin_mm=4.0)
    folder = write_model_folder(
        tmp_path / "m",
        state_dicts={0: build_network(TINY_NETWORK).state_dict()},
        network=TINY_NETWORK,
        settings=settings,
    )
    meta = json.loads((folder.path / MODEL_JSON).read_text())
    assert meta["format"] == "petseg-model/3"
    declared = {
        section: {f.name for f in dataclasses.fields(Settings) if f.metadata["section"] == section}
        for section in ("preprocessing", "inference")
    }
    assert set(meta["preprocessing"]) == declared["preprocessing"] | {"channels"}
    assert set(meta["inference"]) == declared["inference"]
    assert ModelFolder.open(folder.path).settings == settings


@pytest.mark.parametrize(
    "section, key",
    [
        ("inference", "threshold"),
        ("inference", "click_removal"),
        ("preprocessing", "click_sigma_mm"),
        ("preprocessing", "channels"),
    ],
)
def test_a_current_model_json_missing_a_key_is_refused(tmp_path, section, key):
    folder = _tiny_folder(tmp_path)
    meta = json.loads((folder.path / MODEL_JSON).read_text())
    del meta[section][key]
    (folder.path / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(petseg.ModelError, match=f"{section}: missing key '{key}'"):
        ModelFolder.open(folder.path)


def test_a_format_1_model_json_reads_with_defaults_for_the_keys_it_lacks(tmp_path):
    folder = _tiny_folder(tmp_path)
    meta = json.loads((folder.path / MODEL_JSON).read_text())
    meta["format"] = "petseg-model/1"
    for key in ("threshold", "click_removal", "time_budget_s"):
        del meta["inference"][key]
    del meta["preprocessing"]["click_sigma_mm"], meta["preprocessing"]["channels"]
    meta["inference"]["overlap"] = 0.25
    (folder.path / MODEL_JSON).write_text(json.dumps(meta))
    settings = ModelFolder.open(folder.path).settings
    assert settings == Settings(overlap=0.25)
    del meta["inference"]["roi_size"]  # a key every format must state
    (folder.path / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(petseg.ModelError, match="inference: missing key 'roi_size'"):
        ModelFolder.open(folder.path)


def test_model_json_with_other_input_channels_is_refused(tmp_path):
    folder = _tiny_folder(tmp_path)
    meta = json.loads((folder.path / MODEL_JSON).read_text())
    meta["preprocessing"]["channels"] = ["PET", "CT"]
    (folder.path / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(
        petseg.ModelError,
        match=r"preprocessing.channels: must be \['CT', 'PET'\] or \['PET'\] \(then any click channels\), got \['PET', 'CT'\]",
    ):
        ModelFolder.open(folder.path)
    meta["preprocessing"]["channels"] = ["CT", "PET", "tumor_clicks", "background_clicks"]  # clicks without a sigma
    (folder.path / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(
        petseg.ModelError,
        match=r"preprocessing.channels: input channels .* do not match \['CT', 'PET'\] \(click channels need",
    ):
        ModelFolder.open(folder.path)
    meta["preprocessing"]["channels"] = ["PET"]  # a PET-only model needs a one-channel network
    (folder.path / MODEL_JSON).write_text(json.dumps(meta))
    with pytest.raises(petseg.ModelError, match=r"network in_channels 2 != input channels \['PET'\]"):
        ModelFolder.open(folder.path)


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    folder = _tiny_folder(tmp_path)
    ckpt = folder.path / "fold0.pt"
    state = torch.load(ckpt, weights_only=True)
    next(iter(state.values())).add_(1.0)
    torch.save(state, ckpt)
    with pytest.raises(petseg.ModelError, match="fold0.pt: sha256 mismatch"):
        ModelFolder.open(folder.path).load_networks()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: (p / MODEL_JSON).unlink(), "missing: not a petseg model folder"),
        (lambda p: (p / MODEL_JSON).write_text("{not json"), "cannot be parsed as JSON"),
        (lambda p: (p / "fold0.pt").unlink(), "checkpoint of fold 0 is missing"),
        (lambda p: (p / MODEL_JSON).write_text(json.dumps({"format": "petseg-model/1"})), "invalid model description"),
    ],
)
def test_unreadable_model_folders_are_clear_errors(tmp_path, damage, message):
    folder = _tiny_folder(tmp_path)
    damage(folder.path)
    with pytest.raises(petseg.ModelError, match=message):
        ModelFolder.open(folder.path).load_networks()


def test_corrupt_checkpoint_and_wrong_architecture(tmp_path):
    folder = _tiny_folder(tmp_path)
    (folder.path / "fold0.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(petseg.ModelError, match="cannot be loaded as a PyTorch checkpoint"):
        ModelFolder.open(folder.path).load_networks(verify=False)
    torch.save(build_network(TINY_NETWORK).state_dict(), tmp_path / "fold0_x.pth")
    with pytest.raises(petseg.ModelError, match="does not fit the network"):
        import_weights([tmp_path / "fold0_x.pth"], tmp_path / "out")  # paper network expected
    assert not (tmp_path / "out" / MODEL_JSON).exists()


def test_import_accepts_ddp_prefix_and_wrapped_state_dicts(tmp_path):
    state = build_network(TINY_NETWORK).state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "fold1.pth")
    torch.save({"state_dict": state}, tmp_path / "fold2.pth")
    folder = import_weights([tmp_path / "fold1.pth", tmp_path / "fold2.pth"], tmp_path / "out", network=TINY_NETWORK)
    assert [f.fold for f in folder.folds] == [1, 2]
    assert len(folder.load_networks()) == 2
    with pytest.raises(petseg.ModelError, match="given twice"):
        import_weights([tmp_path / "fold1.pth", tmp_path / "fold1.pth"], tmp_path / "dup", network=TINY_NETWORK)
