"""Geometry of the forward and backward paths, on grids that are not the identity."""

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.errors import InputError
from petseg.geometry import Grid
from petseg.preprocess import body_box, forward_label, preprocess, restore, scale_ct
from petseg.settings import Settings

from conftest import DIRECTIONS, blob_study, make_image, physical_points

ISO2 = Settings(body_margin_mm=4.0)


def ramp_study(direction, *, spacing=(2.0, 2.0, 2.0), size=(26, 26, 9), origin=(-31.0, 17.5, 240.0)):
    """PET whose value encodes the voxel index (unique per voxel, in an SUV range) and a CT with body everywhere."""
    values = (np.arange(np.prod(size), dtype=np.float32).reshape(size) + 1.0) * np.float32(0.01)  # SUV-like range
    pet = make_image(values, spacing=spacing, origin=origin, direction=direction)
    ct = make_image(np.full(size, 50.0, np.float32), spacing=spacing, origin=origin, direction=direction)
    return ct, pet, values


@pytest.mark.parametrize("name", DIRECTIONS)
def test_network_array_matches_monai_loadimage_orientation(name, tmp_path):
    """(C, X, Y, Z) in RAS exactly as MONAI LoadImage(nibabel) + Orientation('RAS') present it."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation

    ct, pet, _ = ramp_study(DIRECTIONS[name])
    sitk.WriteImage(pet, str(tmp_path / "pet.nii.gz"))
    monai_pet = Compose([LoadImage(image_only=True), EnsureChannelFirst(), Orientation(axcodes="RAS")])(
        str(tmp_path / "pet.nii.gz")
    )
    prep = preprocess(ct, pet, settings=ISO2)
    assert not prep.record.resampled and prep.record.cropped.size == pet.GetSize()
    np.testing.assert_array_equal(prep.image[1], np.asarray(monai_pet[0]))
    # the network grid's first axis points to the patient's right (RAS)
    assert np.asarray(prep.record.network.direction).reshape(3, 3)[0, 0] < 0 or name == "permuted"


@pytest.mark.parametrize("name", DIRECTIONS)
def test_restore_undoes_orientation_and_crop_exactly(name):
    ct, pet, values = ramp_study(DIRECTIONS[name], size=(28, 26, 12))
    hu = np.full((28, 26, 12), -1000.0, np.float32)
    hu[5:13, 4:11, 2:9] = 40.0  # body in a sub-box: the crop is not the identity
    ct = make_image(hu, spacing=ct.GetSpacing(), origin=ct.GetOrigin(), direction=ct.GetDirection())
    prep = preprocess(ct, pet, settings=ISO2)
    assert prep.record.cropped.size == (12, 11, 11)  # 8x7x7 body + 2 voxels (4 mm) each side
    restored = restore(prep.image[1], prep.record)
    assert Grid.of(restored) == Grid.of(pet)
    got = sitk.GetArrayFromImage(restored).transpose(2, 1, 0)
    (x0, y0, z0), (nx, ny, nz) = prep.record.crop_index, prep.record.cropped.size
    inside = np.zeros_like(got, bool)
    inside[x0 : x0 + nx, y0 : y0 + ny, z0 : z0 + nz] = True
    np.testing.assert_array_equal(got[inside], values[inside])
    assert not got[~inside].any()


@pytest.mark.parametrize("name", DIRECTIONS)
@pytest.mark.parametrize("spacing", [(3.1, 2.4, 4.3), (1.5, 1.5, 1.5)])
def test_resampling_round_trip_of_a_smooth_field(name, spacing):
    """A linear field in physical space survives 2 mm resampling and back (interior voxels)."""
    size = (36, 34, 16)  # a transaxial field of view above 5 cm, as a human study has
    direction = DIRECTIONS[name]
    template = make_image(np.zeros(size, np.float32), spacing=spacing, origin=(10.0, -20.0, 30.0), direction=direction)
    pts = physical_points(template)
    field = (5.0 + 0.01 * pts[..., 0] - 0.02 * pts[..., 1] + 0.015 * pts[..., 2]).astype(np.float32)
    pet = make_image(field, spacing=spacing, origin=template.GetOrigin(), direction=direction)
    ct = make_image(np.zeros(size, np.float32), spacing=spacing, origin=template.GetOrigin(), direction=direction)
    prep = preprocess(ct, pet, settings=ISO2)
    assert prep.record.resampled
    assert prep.record.network.spacing == (2.0, 2.0, 2.0)
    back = sitk.GetArrayFromImage(restore(prep.image[1], prep.record)).transpose(2, 1, 0)
    core = (slice(3, -3),) * 3
    np.testing.assert_allclose(back[core], field[core], atol=2e-3)


def test_with_spacing_keeps_the_field_of_view_centre():
    grid = Grid((10, 20, 7), (3.0, 1.0, 5.0), (4.0, -2.0, 9.0), tuple(DIRECTIONS["oblique"].reshape(-1)))
    out = grid.with_spacing((2.0, 2.0, 2.0))
    assert out.size == (15, 10, 18)

    def centre(g):
        rot = np.asarray(g.direction).reshape(3, 3)
        return np.asarray(g.origin) + rot @ ((np.asarray(g.size) - 1) * np.asarray(g.spacing) / 2)

    np.testing.assert_allclose(centre(out), centre(grid), atol=1e-9)


def test_ct_scaling_clips_and_maps_to_unit_range():
    hu = np.array([-3000, -1024, 0, 1024, 3000], np.float32)
    np.testing.assert_allclose(scale_ct(hu, settings=Settings()), [0, 0, 0.5, 1, 1])


def test_body_box_margin_and_empty_body():
    hu = np.full((10, 12, 14), -1000.0)  # (z, y, x)
    hu[4:6, 3:8, 2:5] = 0.0
    index, size = body_box(hu, (2.0, 1.0, 4.0), settings=Settings(body_margin_mm=4.0))
    # margins in voxels: x 2 (2 mm), y 4 (1 mm), z 1 (4 mm); clipped at the image border
    assert index == (0, 0, 3) and size == (7, 12, 4)
    index, size = body_box(np.full((4, 5, 6), -1000.0), (1.0, 1.0, 1.0), settings=Settings())
    assert index == (0, 0, 0) and size == (6, 5, 4)


def test_ct_is_resampled_onto_the_pet_grid_with_air_outside():
    ct, pet = blob_study(ct_grid="other")
    small_ct = ct[: ct.GetSize()[0] * 2 // 3, :, :]  # covers only part of the PET
    tight = preprocess(small_ct, pet, settings=Settings(body_margin_mm=0.0))
    assert tight.record.ct_resampled
    assert tight.record.cropped.size[0] < pet.GetSize()[0]  # the crop follows the CT's body
    loose = preprocess(small_ct, pet, settings=Settings(body_margin_mm=1000.0))
    assert loose.record.cropped.size == pet.GetSize()
    assert loose.image[0].min() == 0.0  # -1024 HU fill -> 0 after scaling
    assert np.isclose(loose.image[0].max(), (40 + 1024) / 2048, atol=1e-4)


def test_labels_stay_binary_and_keep_their_volume():
    ct, pet = blob_study(direction=DIRECTIONS["oblique"])
    label = sitk.Cast(pet > 2.5, sitk.sitkUInt8)
    prep = preprocess(ct, pet, settings=Settings(), label=label)
    assert set(np.unique(prep.label)) <= {0, 1}
    native_ml = sitk.GetArrayViewFromImage(label).sum() * np.prod(pet.GetSpacing())
    network_ml = prep.label.sum() * 8.0
    assert abs(network_ml - native_ml) / native_ml < 0.1
    assert prep.label.shape == prep.image.shape[1:]


def test_label_of_the_wrong_size_is_refused():
    ct, pet = blob_study()
    prep = preprocess(ct, pet, settings=Settings())
    with pytest.raises(InputError, match="differs"):
        forward_label(sitk.Image([5, 5, 5], sitk.sitkUInt8), prep.record)
