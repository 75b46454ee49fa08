"""The output comparison that test.sh runs after the container."""

import json
import shutil

import numpy as np
import SimpleITK as sitk

from petseg.cli import main
from petseg.compare import compare_outputs


def _output(root, mask):
    (root / "images" / "seg").mkdir(parents=True)
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((2.0, 3.0, 4.0))
    sitk.WriteImage(image, str(root / "images" / "seg" / "case.mha"), True)
    (root / "data-centric-model.json").write_text(json.dumps(False))
    return root


def _mask():
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:8, 3:9, 4:10] = 1
    return mask


def test_identical_outputs_pass(tmp_path):
    a = _output(tmp_path / "a", _mask())
    b = _output(tmp_path / "b", _mask())
    result = compare_outputs(a, b)
    assert result.ok and len(result.checked) == 2
    assert main(["compare", str(a), str(b)]) == 0


def test_every_kind_of_mismatch_is_reported(tmp_path):
    a = _output(tmp_path / "a", _mask())
    changed = _mask()
    changed[2:8, 3:9, 4:7] = 0
    b = _output(tmp_path / "b", changed)
    (b / "data-centric-model.json").write_text("true")
    (b / "scratch.nii.gz").write_bytes(b"x")
    result = compare_outputs(a, b)
    text = "\n".join(result.problems)
    assert "Dice 0.6667" in text and "JSON differs" in text and "unexpected file" in text
    assert main(["compare", str(a), str(b)]) == 1


def test_missing_file_and_wrong_grid(tmp_path):
    a = _output(tmp_path / "a", _mask())
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "data-centric-model.json").unlink()
    image = sitk.ReadImage(str(b / "images/seg/case.mha"))
    image.SetOrigin((1.0, 0.0, 0.0))
    sitk.WriteImage(image, str(b / "images/seg/case.mha"))
    text = "\n".join(compare_outputs(a, b).problems)
    assert "data-centric-model.json: missing" in text and "grid differs" in text
