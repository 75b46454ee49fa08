"""Synthetic studies: deterministic, geometry as asked, tracer-typical uptake."""

import numpy as np
import pytest
import SimpleITK as sitk

from petseg.geometry import Grid
from petseg.phantom import BRAIN, KIDNEY, SALIVARY, Anatomy, case_uuid, make_study, write_study

from conftest import DIRECTIONS

SMALL = dict(shape=(40, 32, 80), spacing=(10.0, 10.0, 9.0))


def test_same_seed_same_study_and_other_seed_differs():
    a = make_study(seed=5, index=1, **SMALL)
    b = make_study(seed=5, index=1, **SMALL)
    c = make_study(seed=6, index=1, **SMALL)
    for x, y in ((a.ct, b.ct), (a.pet, b.pet), (a.label, b.label)):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(x), sitk.GetArrayViewFromImage(y))
    assert not np.array_equal(sitk.GetArrayViewFromImage(a.pet), sitk.GetArrayViewFromImage(c.pet))


@pytest.mark.parametrize("name", ["identity", "flipped", "oblique"])
def test_grid_is_as_requested_and_lesions_are_labelled(name):
    direction = DIRECTIONS[name]
    study = make_study(seed=1, n_lesions=3, origin=(12.0, -40.0, 700.0), direction=direction.reshape(-1), **SMALL)
    grid = Grid.of(study.pet)
    assert grid.size == (40, 32, 80) and grid.spacing == (10.0, 10.0, 9.0)
    np.testing.assert_allclose(grid.origin, (12.0, -40.0, 700.0))
    np.testing.assert_allclose(grid.direction, direction.reshape(-1))
    assert Grid.of(study.label) == grid == Grid.of(study.ct)
    label = sitk.GetArrayFromImage(study.label)
    pet = sitk.GetArrayFromImage(study.pet)
    assert label.dtype == np.uint8 and label.any()
    assert len(study.lesions) == 3
    assert all(3.0 <= les.radius <= 30.0 and 2.0 <= les.suv <= 40.0 for les in study.lesions)
    assert pet[label > 0].mean() > 2 * np.median(pet[pet > 0.1])


def test_ct_on_its_own_finer_grid_covers_the_same_field_of_view():
    study = make_study(seed=2, ct_spacing=(5.0, 5.0, 4.5), **SMALL)
    assert study.ct.GetSpacing() == (5.0, 5.0, 4.5)
    assert study.ct.GetSize() == (80, 64, 160)

    def centre(image):
        return np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))

    np.testing.assert_allclose(centre(study.ct), centre(study.pet), atol=1e-3)


def _organ_suv(study, organ):
    """Mean noiseless SUV over an organ, found from the analytic anatomy."""
    pet = sitk.GetArrayFromImage(study.pet)
    size, sp = study.pet.GetSize(), study.pet.GetSpacing()
    anatomy = Anatomy(
        np.asarray(study.pet.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])),
        np.asarray(size) * np.asarray(sp),
    )
    from petseg.geometry import Grid
    from petseg.phantom import _grid_points

    tissue = anatomy.tissues(_grid_points(Grid.of(study.pet), slice(None))).reshape(pet.shape)
    return pet[tissue == organ].mean()


def test_tracer_patterns_psma_salivary_and_kidneys_hot_brain_cold():
    kw = dict(seed=0, n_lesions=0, noise=False, shape=(64, 48, 128), spacing=(6.0, 6.0, 5.5))
    fdg, psma = make_study(tracer="fdg", **kw), make_study(tracer="psma", **kw)
    assert _organ_suv(fdg, BRAIN) > 4 * _organ_suv(psma, BRAIN)
    assert _organ_suv(psma, SALIVARY) > 3 * _organ_suv(fdg, SALIVARY)
    assert _organ_suv(psma, KIDNEY) > 3 * _organ_suv(fdg, KIDNEY)


def test_layouts(tmp_path):
    study = make_study(seed=0, **SMALL)
    nn = write_study(study, tmp_path / "nn", layout="nnunet")
    assert [p.relative_to(tmp_path / "nn").as_posix() for p in nn] == [
        f"imagesTr/{study.case_id}_0000.nii.gz",
        f"imagesTr/{study.case_id}_0001.nii.gz",
        f"labelsTr/{study.case_id}.nii.gz",
    ]
    gc = write_study(study, tmp_path / "gc", layout="gc")
    uid = case_uuid(study.case_id)
    assert gc[0] == tmp_path / "gc" / study.case_id / "images" / "ct" / f"{uid}.mha"
    assert all(p.is_file() for p in nn + gc)
    with pytest.raises(ValueError, match="layout"):
        write_study(study, tmp_path, layout="bids")
