"""A faithful re-implementation of the seed container's inference path (the baseline).

MHA -> NIfTI on disk -> MONAI LoadImaged -> EnsureChannelFirstd -> ScaleIntensityRanged ->
CropForegroundd -> Orientationd(RAS) -> Spacingd(2 mm) -> ConcatItemsd; per fold
SlidingWindowInferer(192^3, sw_batch_size=1, overlap=0.5) in fp32, all five full-volume
logit maps kept on the device; mean of logits, sigmoid; Invertd; argmax; NIfTI written,
then converted to MHA. Used only by bench/benchmark.py.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch


def seed_predict(
    ct_path: Path,
    pet_path: Path,
    out_path: Path,
    networks: Sequence[torch.nn.Module],
    *,
    device: torch.device,
    roi_size=(192, 192, 192),
) -> dict[str, float]:
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        AsDiscreted,
        Compose,
        ConcatItemsd,
        CropForegroundd,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        t = time.perf_counter()
        for src, name in ((ct_path, "CTres.nii.gz"), (pet_path, "SUV.nii.gz")):
            sitk.WriteImage(sitk.ReadImage(str(src)), str(scratch / name))
        timings["read"] = time.perf_counter() - t

        t = time.perf_counter()
        keys = ["ct", "pet"]
        pre = Compose(
            [
                LoadImaged(keys=keys),
                EnsureChannelFirstd(keys=keys),
                ScaleIntensityRanged(keys=["ct"], a_min=-1024, a_max=1024, b_min=0, b_max=1, clip=True),
                CropForegroundd(keys=keys, source_key="ct"),
                Orientationd(keys=keys, axcodes="RAS"),
                Spacingd(keys=keys, pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "bilinear")),
                ConcatItemsd(keys=keys, name="image", dim=0),
            ]
        )
        data = pre({"ct": str(scratch / "CTres.nii.gz"), "pet": str(scratch / "SUV.nii.gz")})
        timings["preprocess"] = time.perf_counter() - t

        t = time.perf_counter()
        inferer = SlidingWindowInferer(roi_size=roi_size, sw_batch_size=1, overlap=0.5)
        image = data["image"].unsqueeze(0).to(device)
        with torch.no_grad():
            logits = [inferer(image, net.to(device).eval()) for net in networks]  # five volumes kept
            prob = torch.sigmoid(torch.stack(logits).mean(0))[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings["network"] = time.perf_counter() - t

        t = time.perf_counter()
        data["pred"] = MetaTensor(prob.cpu(), meta=data["pet"].meta, applied_operations=data["pet"].applied_operations)
        post = Compose(
            [
                Invertd(keys="pred", transform=pre, orig_keys="pet", nearest_interp=False, to_tensor=True),
                AsDiscreted(keys="pred", argmax=True),
            ]
        )
        mask = np.asarray(post(data)["pred"][0]).astype(np.uint8)
        timings["restore"] = time.perf_counter() - t

        t = time.perf_counter()
        import nibabel as nib

        affine = np.asarray(data["pet"].meta["original_affine"])
        nib.save(nib.Nifti1Image(mask, affine), str(scratch / "PRED.nii.gz"))
        sitk.WriteImage(sitk.ReadImage(str(scratch / "PRED.nii.gz")), str(out_path), True)
        timings["write"] = time.perf_counter() - t
    return timings
