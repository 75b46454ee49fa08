"""Resampling a whole-body PET onto the 2 mm network grid: SimpleITK against the torch
resampler (petseg/resample_torch.py) on the CPU here, and on CUDA when there is one.

    python bench/bench_resample.py [--size 400 400 326] [--spacing 2.04 2.04 3.0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import SimpleITK as sitk
import torch

from petseg.geometry import Grid
from petseg.resample_torch import resample


def seconds(fn, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(400, 400, 326))
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.04, 2.04, 3.0))
    args = parser.parse_args()
    values = np.random.default_rng(0).random(tuple(args.size[::-1]), dtype=np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(args.spacing)
    source = Grid.of(image)
    target = source.with_spacing((2.0, 2.0, 2.0))
    print(
        f"{source.size} at {args.spacing} mm -> {target.size} at 2 mm, linear, {torch.get_num_threads()} torch threads"
    )
    print(f"SimpleITK: {seconds(lambda: target.resample(image, interpolator=sitk.sitkLinear)):.2f} s")
    tensor = torch.from_numpy(values)
    print(f"torch cpu: {seconds(lambda: resample(tensor, source, target)):.2f} s")
    if torch.cuda.is_available():
        on_gpu = tensor.cuda()

        def gpu():
            resample(on_gpu, source, target)
            torch.cuda.synchronize()

        gpu()
        print(f"torch cuda: {seconds(gpu, repeat=5):.3f} s")


if __name__ == "__main__":
    main()
