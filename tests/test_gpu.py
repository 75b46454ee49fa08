"""GPU behaviour (skipped without CUDA; bench/gpu_check.sh runs these on a GPU machine)."""

import numpy as np
import pytest
import torch

from petseg.inference import FoldAverage, foreground_probability, resolve_precision
from petseg.model import build_network
from petseg.predictor import Predictor
from petseg.settings import PAPER_NETWORK, Settings

from conftest import SMALL, Oracle, blob_study, dice

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_oracle_on_the_gpu_matches_the_cpu():
    import SimpleITK as sitk

    ct, pet = blob_study()
    gpu = Predictor([Oracle()], settings=SMALL.with_overrides(device="cuda")).predict(ct, pet)
    cpu = Predictor([Oracle()], settings=SMALL.with_overrides(device="cpu")).predict(ct, pet)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(gpu), sitk.GetArrayFromImage(cpu))


def test_paper_network_fast_path_agrees_with_fp32_on_the_gpu():
    torch.manual_seed(0)
    net = build_network(PAPER_NETWORK).eval()
    image = np.random.default_rng(0).normal(size=(2, 96, 96, 96)).astype(np.float32)
    ref_s = Settings(roi_size=(96, 96, 96), precision="fp32", fold_batchnorm=False, channels_last=False)
    fast_s = Settings(roi_size=(96, 96, 96))
    cuda = torch.device("cuda")
    ref = foreground_probability(image, FoldAverage([net], settings=ref_s).to(cuda), device=cuda)
    fast = foreground_probability(image, FoldAverage([net], settings=fast_s).to(cuda), device=cuda)
    assert resolve_precision("auto", "cuda") in (torch.bfloat16, torch.float16)
    assert np.abs(fast - ref).max() < 0.05
    assert dice(fast > 0.5, ref > 0.5) > 0.98


@pytest.mark.parametrize("direction", ["identity", "oblique"])
def test_the_device_path_on_the_gpu_matches_the_reference(direction):
    """--resample-backend torch on CUDA (the default there) against SimpleITK on the CPU."""
    import SimpleITK as sitk

    from conftest import DIRECTIONS

    ct, pet = blob_study(direction=DIRECTIONS[direction], radius=15.0)
    gpu = Predictor([Oracle()], settings=SMALL.with_overrides(device="cuda"))
    assert gpu.backend == "torch"
    cpu = Predictor([Oracle()], settings=SMALL.with_overrides(device="cpu"))
    assert cpu.backend == "sitk"
    ours, theirs = gpu.predict_images(ct, pet), cpu.predict_images(ct, pet)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(ours.probability), sitk.GetArrayFromImage(theirs.probability), atol=1e-3
    )
    masks = [sitk.GetArrayFromImage(p.mask) for p in (ours, theirs)]
    if direction == "identity":
        np.testing.assert_array_equal(*masks)
    else:
        assert dice(*masks) >= 0.999
