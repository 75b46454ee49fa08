"""Non-network time of one whole-body study: read, preprocess, restore, write.

    python bench/bench_io.py [--shape 400 400 326] [--spacing 2.036 2.036 3.0]

Writes a synthetic PET (SUV) and CT (HU, on the PET grid, as the autoPET CTres) as .mha,
then runs the predictor with a zero-cost network so the 'network' stage is only the
sliding-window bookkeeping; prints each stage's seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from petseg.predictor import Predictor
from petseg.settings import Settings


class PetThreshold(torch.nn.Module):
    def forward(self, x):
        return torch.cat([2.5 - x[:, 1:2], x[:, 1:2] - 2.5], dim=1)


def synthetic_study(shape, spacing, rng):
    x, y, z = shape
    zz, yy, xx = np.ogrid[:z, :y, :x]
    body = ((xx - x / 2) / (0.4 * x)) ** 2 + ((yy - y / 2) / (0.28 * y)) ** 2 <= 1  # elliptic cylinder
    body = np.broadcast_to(body, (z, y, x))
    ct = np.where(body, 40.0, -1000.0).astype(np.float32) + rng.normal(0, 10, (z, y, x)).astype(np.float32)
    pet = np.where(body, 1.0, 0.05).astype(np.float32) * rng.gamma(8.0, 1 / 8.0, (z, y, x)).astype(np.float32)
    pet[z // 2 - 5 : z // 2 + 5, y // 2 - 5 : y // 2 + 5, x // 2 - 5 : x // 2 + 5] = 8.0
    images = []
    for array in (ct, pet):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin((-x * spacing[0] / 2, -y * spacing[1] / 2, -900.0))
        images.append(image)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(400, 400, 326))
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.036, 2.036, 3.0))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    ct, pet = synthetic_study(tuple(args.shape), tuple(args.spacing), np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sitk.WriteImage(ct, str(tmp / "ct.mha"), True)
        sitk.WriteImage(pet, str(tmp / "pet.mha"), True)
        predictor = Predictor([PetThreshold()], settings=Settings(device="cpu", sw_batch_size=4))
        t0 = time.perf_counter()
        predictor.predict_files(ct=tmp / "ct.mha", pet=tmp / "pet.mha", output=tmp / "mask.mha")
        total = time.perf_counter() - t0
    t = predictor.timings
    non_network = total - t["network"]
    print(f"PET {tuple(args.shape)} at {tuple(args.spacing)} mm, {torch.get_num_threads()} threads")
    print("  ".join(f"{k} {v:.2f} s" for k, v in t.items()))
    print(f"non-network time (read + preprocess + restore + write): {non_network:.2f} s; total {total:.2f} s")


if __name__ == "__main__":
    main()
