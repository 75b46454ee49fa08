"""The device path (torch) against the SimpleITK reference on the grids the geometry tests
use: anisotropic, flipped, permuted, oblique, cropped, CT on its own grid or the PET's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from petseg.errors import ConfigError
from petseg.geometry import Grid
from petseg.preprocess import forward_label, preprocess, probability_to_mask, restore
from petseg.preprocess_torch import preprocess_torch, restore_many_torch, restore_torch
from petseg.resample_torch import index_map
from petseg.settings import Settings, resolve_backend

from conftest import DIRECTIONS, SHARED, blob_study, make_image, rotation

SETTINGS = Settings(body_margin_mm=4.0, target_spacing=(2.0, 2.0, 2.0))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def _study(direction: str, ct_grid: str):
    """A blob study whose CT body covers a sub-box of the PET (the crop is not the identity)."""
    ct, pet = blob_study(direction=DIRECTIONS[direction], ct_grid=ct_grid)
    hu = sitk.GetArrayFromImage(ct)
    if ct_grid == "same":
        hu[:] = -1000.0
        hu[3:-4, 5:-3, 2:-6] = 40.0
    else:
        hu[:, :, : hu.shape[2] // 2] = -1000.0  # air on one side: the crop cuts the PET grid
    air = sitk.GetImageFromArray(hu)
    air.CopyInformation(ct)
    return air, pet


def _same_grid(a: Grid, b: Grid) -> bool:
    return (
        a.size == b.size
        and np.allclose(a.spacing, b.spacing, atol=1e-9)
        and np.allclose(a.origin, b.origin, atol=1e-6)
        and np.allclose(a.direction, b.direction, atol=1e-9)
    )


def _records_agree(ours, theirs) -> None:
    assert ours.ct_resampled == theirs.ct_resampled and ours.resampled == theirs.resampled
    assert ours.crop_index == theirs.crop_index
    for field in ("native", "cropped", "oriented", "network"):
        assert _same_grid(getattr(ours, field), getattr(theirs, field)), field


@pytest.mark.parametrize("ct_grid", ["same", "other"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_the_device_path_matches_the_reference(direction, ct_grid):
    ct, pet = _study(direction, ct_grid)
    reference = preprocess(ct, pet, settings=SETTINGS)
    ours = preprocess_torch(ct, pet, settings=SETTINGS, device="cpu")
    _records_agree(ours.record, reference.record)
    assert reference.record.crop_index != (0, 0, 0) or reference.record.cropped.size != reference.record.native.size
    assert isinstance(ours.image, torch.Tensor) and ours.image.dtype == torch.float32
    np.testing.assert_allclose(ours.image.numpy(), reference.image, atol=1e-4)

    # the network's probability back onto the PET grid: a smooth map with values near 0.5
    grid = reference.record.network
    xyz = np.stack(np.meshgrid(*[np.arange(n) for n in grid.size], indexing="ij"), -1).astype(np.float32)
    probability = 0.5 + 0.45 * np.sin(xyz @ np.float32([0.31, 0.23, 0.17]))
    probability *= reference.image[1] > 2.0  # zero off the spheres: lesions
    theirs = restore(probability, reference.record)
    mine = restore_torch(probability, ours.record, device="cpu")
    assert Grid.of(mine) == Grid.of(theirs) == Grid.of(pet)
    p_ref, p_ours = sitk.GetArrayFromImage(theirs), sitk.GetArrayFromImage(mine)
    np.testing.assert_allclose(p_ours, p_ref, atol=1e-3)
    m_ref = sitk.GetArrayFromImage(probability_to_mask(theirs))
    m_ours = sitk.GetArrayFromImage(probability_to_mask(mine))
    assert m_ref.sum() > 100
    if direction == "identity":
        np.testing.assert_array_equal(m_ours, m_ref)
    else:
        assert _dice(m_ours, m_ref) >= 0.999


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_labels_and_several_maps_follow_the_reference(direction):
    ct, pet = _study(direction, "other")
    label = sitk.GetImageFromArray((sitk.GetArrayFromImage(pet) > 2.0).astype(np.uint8))
    label.CopyInformation(pet)
    reference = preprocess(ct, pet, settings=SETTINGS, label=label)
    ours = preprocess_torch(ct, pet, settings=SETTINGS, device="cpu", label=label)
    assert ours.label.dtype == np.uint8
    # nearest neighbour: identical but where a network voxel lies half-way between two PET
    # voxels (either is right; on an oblique grid ITK's float rounding picks one)
    a, b = index_map(reference.record.oriented, reference.record.network)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reference.record.network.size], indexing="ij"), -1) @ a.T + b
    clear = ~(np.abs(index - np.floor(index) - 0.5) < 1e-6).any(-1)
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(ours.label[clear], reference.label[clear])
    if direction == "identity":
        np.testing.assert_array_equal(ours.label, reference.label)
    np.testing.assert_array_equal(forward_label(label, ours.record)[clear], reference.label[clear])  # the one record
    maps = np.stack([reference.image[1] / 6.0, 1.0 - reference.image[1] / 6.0])
    restored = restore_many_torch(maps, ours.record, device="cpu")
    for channel, restored_map in zip(maps, restored):
        np.testing.assert_allclose(restored_map, sitk.GetArrayFromImage(restore(channel, reference.record)), atol=1e-3)


def test_a_pet_only_model_takes_the_whole_pet():
    _, pet = _study("oblique", "other")
    settings = Settings(modalities=("PET",), target_spacing=(2.0, 2.0, 2.0))
    reference = preprocess(None, pet, settings=settings)
    ours = preprocess_torch(None, pet, settings=settings, device="cpu")
    _records_agree(ours.record, reference.record)
    assert ours.image.shape[0] == 1 and ours.record.cropped.size == Grid.of(pet).size
    np.testing.assert_allclose(ours.image.numpy(), reference.image, atol=1e-4)
    with pytest.raises(ConfigError, match="no CT was given"):
        preprocess_torch(None, pet, settings=SETTINGS, device="cpu")


def test_the_target_spacing_already_met_skips_resampling_exactly():
    ct, pet = blob_study(spacing=(2.0, 2.0, 2.0), direction=DIRECTIONS["flipped"], ct_grid="same")
    ours = preprocess_torch(ct, pet, settings=SETTINGS, device="cpu")
    reference = preprocess(ct, pet, settings=SETTINGS)
    assert not ours.record.resampled and not reference.record.resampled
    np.testing.assert_array_equal(ours.image.numpy(), reference.image)
    values = reference.image[1]
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(restore_torch(values, ours.record, device="cpu")),
        sitk.GetArrayFromImage(restore(values, reference.record)),
    )


def test_the_callers_images_are_left_unchanged():
    ct, pet = _study("identity", "same")
    before = sitk.GetArrayFromImage(ct).copy(), sitk.GetArrayFromImage(pet).copy()
    preprocess_torch(ct, pet, settings=SETTINGS, device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), before[0])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(pet), before[1])


@pytest.mark.parametrize("code", ["RAS", "LPS", "SAR", "ILA"])
def test_reorientation_is_the_one_dicomorient_makes(code):
    """Every one of the 48 axis-aligned directions, and oblique ones with ITK's ties (45°)."""
    directions = [
        np.asarray(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(a + b + c)).reshape(3, 3)
        for first, second, third in itertools.permutations(("LR", "PA", "SI"))
        for a, b, c in itertools.product(first, second, third)
    ]
    directions += [DIRECTIONS["oblique"], rotation(2, np.pi / 4), rotation(1, np.pi / 4) @ rotation(0, 0.5)]
    values = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    from petseg.resample_torch import reorient, unorient

    for direction in directions:
        image = make_image(values, spacing=(1.1, 2.2, 3.3), origin=(10.0, -20.0, 30.5), direction=direction)
        expected = sitk.DICOMOrient(image, code)
        turn = Grid.of(image).reoriented(code)
        assert _same_grid(turn.grid, Grid.of(expected))
        array = torch.from_numpy(sitk.GetArrayFromImage(image))[None]
        moved = reorient(array, turn.axes, turn.flips)
        np.testing.assert_array_equal(moved[0].numpy(), sitk.GetArrayFromImage(expected))
        np.testing.assert_array_equal(unorient(moved, turn.axes, turn.flips).numpy(), array.numpy())


def test_auto_is_torch_on_cuda_only():
    assert resolve_backend("auto", torch.device("cuda", 0)) == "torch"
    assert resolve_backend("auto", "cuda:1") == "torch"
    assert resolve_backend("auto", torch.device("cpu")) == "sitk"
    assert resolve_backend("auto", None) == "sitk"
    assert resolve_backend("torch", "cpu") == "torch" and resolve_backend("sitk", "cuda") == "sitk"
    with pytest.raises(ConfigError, match="resample_backend"):
        Settings(resample_backend="itk")


IBSI = SHARED / "ibsi-sts-pet-ct"


@pytest.mark.skipif(not IBSI.is_dir(), reason="needs ../shared/reference (real PET/CT)")
@pytest.mark.parametrize("patient", ["STS_001", "STS_002", "STS_003"])
def test_real_pet_and_ct_on_their_own_grids_give_the_reference_input_and_mask(patient):
    """Real FDG PET (4.7-5.5 mm) and CT (0.98 mm in-plane) of the IBSI sarcoma set: the
    network input, and the tumour mask taken to the network grid and back as a probability."""
    from petseg.io import read_image

    ct = read_image(IBSI / patient / "CT_image.nii.gz", role="CT")
    pet = read_image(IBSI / patient / "PET_image.nii.gz", role="PET")
    reference = preprocess(ct, pet, settings=Settings())
    ours = preprocess_torch(ct, pet, settings=Settings(), device="cpu")
    assert reference.record.ct_resampled and reference.record.resampled
    _records_agree(ours.record, reference.record)
    np.testing.assert_allclose(ours.image.numpy(), reference.image, atol=1e-4)
    tumour = read_image(IBSI / patient / "PET_mask.nii.gz", role="mask")
    on_network = forward_label(tumour, reference.record).astype(np.float32)
    theirs = sitk.GetArrayFromImage(probability_to_mask(restore(on_network, reference.record)))
    mine = sitk.GetArrayFromImage(probability_to_mask(restore_torch(on_network, ours.record, device="cpu")))
    assert theirs.sum() > 50
    np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize(
    "size, spacing, target",
    [
        ((40, 40, 41), (2.0, 2.0, 2.0), (4.0, 4.0, 4.0)),  # (n - 1) * 2 mm a multiple of 4 mm: a plane on the edge
        ((33, 29, 21), (3.0, 2.0, 4.0), (6.0, 4.0, 8.0)),
        ((64, 56, 213), (5.0, 5.0, 2.0), (4.0, 4.0, 4.0)),
    ],
)
@pytest.mark.parametrize("direction", ["identity", "flipped", "permuted"])
def test_a_grid_edge_on_the_buffer_edge_is_outside_as_in_itk(size, spacing, target, direction):
    """ITK takes [-0.5, n - 0.5) as inside: the PET's last plane can map exactly onto the
    network grid's outer edge, and then gets 0 on restore in both backends."""
    values = np.random.default_rng(1).random(size).astype(np.float32) * 5
    pet = make_image(values, spacing=spacing, origin=(-20.5, 31.0, 7.25), direction=DIRECTIONS[direction])
    settings = Settings(target_spacing=target, modalities=("PET",))
    reference = preprocess(None, pet, settings=settings)
    ours = preprocess_torch(None, pet, settings=settings, device="cpu")
    _records_agree(ours.record, reference.record)
    np.testing.assert_allclose(ours.image.numpy(), reference.image, atol=1e-6)
    ones = np.ones(reference.record.network.size, np.float32)
    theirs = sitk.GetArrayFromImage(restore(ones, reference.record))
    mine = restore_many_torch(ones[None], ours.record, device="cpu")[0]
    np.testing.assert_array_equal(mine, theirs)
    probability = reference.image[0] / 5.0
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(probability_to_mask(restore_torch(probability, ours.record, device="cpu"))),
        sitk.GetArrayFromImage(probability_to_mask(restore(probability, reference.record))),
    )


def test_a_ct_value_exactly_on_the_body_threshold_stays_on_its_side():
    """CT air -1024 and body 548 HU on a 3 mm grid, the PET on 1 mm: interpolated in double
    (as ITK), some PET voxels get exactly -500 HU, not body (> -500); in float32 they would
    get -499.99997 and widen the crop."""
    pet = make_image(
        np.ones((64, 64, 40), np.float32), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3)
    )
    hu = np.full((22, 22, 14), -1024.0, np.float32)
    hu[5:16, 2:20, :] = 548.0
    ct = make_image(hu, spacing=(3.0, 3.0, 3.0), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    settings = Settings(target_spacing=(4.0, 4.0, 4.0), body_margin_mm=10.0)
    reference = preprocess(ct, pet, settings=settings, validate=False)
    ours = preprocess_torch(ct, pet, settings=settings, device="cpu", validate=False)
    _records_agree(ours.record, reference.record)
    np.testing.assert_allclose(ours.image.numpy(), reference.image, atol=1e-6)
