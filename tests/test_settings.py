import dataclasses

import pytest

from petseg.settings import Settings


def test_defaults_are_the_paper_method():
    s = Settings()
    assert s.target_spacing == (2.0, 2.0, 2.0)
    assert s.roi_size == (192, 192, 192)
    assert s.overlap == 0.5
    assert s.ct_window == (-1024.0, 1024.0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("target_spacing", (2.0, 0.0, 2.0)),
        ("ct_window", (10.0, -10.0)),
        ("roi_size", (0, 8, 8)),
        ("overlap", 1.0),
        ("sw_batch_size", 0),
        ("body_margin_mm", -1.0),
        ("click_removal", "false"),
    ],
)
def test_invalid_values_name_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(Settings(), **{field: value})


def test_with_overrides_ignores_none_and_coerces_lists():
    s = Settings().with_overrides(roi_size=[64, 64, 32], device=None)
    assert s.roi_size == (64, 64, 32) and s.device == "auto"
    with pytest.raises(ValueError, match="settings: unknown"):
        Settings().with_overrides(nonsense=1)


def test_model_sections_round_trip():
    s = Settings(roi_size=(96, 96, 96), target_spacing=(3.0, 3.0, 3.0))
    sections = s.model_sections()
    assert Settings.from_model_sections(sections) == s


def test_the_run_key_follows_click_removal_only_for_a_click_aware_model():
    from petseg.cohort import run_key

    model = {"folds": [{"sha256": "ab"}]}
    assert run_key(model, Settings()) == run_key(model, Settings(click_removal=False))
    clicks = Settings(click_sigma_mm=5.0)
    assert run_key(model, clicks) != run_key(model, dataclasses.replace(clicks, click_removal=False))
