"""What the autoPET V study cache saves per step: reading and preprocessing a whole-body-size
phantom (step 0) against reading the cached network input (steps 1-5), and the scribble
encoding of many points.

    python bench/study_cache.py [--shape 200 200 326] [--points 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from petseg.clicks import Clicks, click_maps
from petseg.model import ModelFolder
from petseg.phantom import make_study
from petseg.stages import load_study
from petseg.study_cache import load_entry, save_entry, study_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=(200, 200, 326))
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--model-dir", type=Path, default=Path(__file__).resolve().parents[1] / "weights-clicks")
    args = parser.parse_args()
    settings = ModelFolder.open(args.model_dir).settings
    study = make_study(
        tracer="fdg", seed=1, shape=tuple(args.shape), spacing=(4.07, 4.07, 3.0), ct_spacing=(0.98, 0.98, 3.0)
    )
    with tempfile.TemporaryDirectory() as tmp:
        ct, pet, cache = Path(tmp) / "ct.mha", Path(tmp) / "pet.mha", Path(tmp) / "cache"
        sitk.WriteImage(study.ct, str(ct), True)
        sitk.WriteImage(study.pet, str(pet), True)
        start = time.perf_counter()
        timings: dict[str, float] = {}
        prep = load_study(ct=ct, pet=pet, settings=settings, timings=timings)
        first = time.perf_counter() - start
        start = time.perf_counter()
        key = study_key(ct, pet, settings)
        save_entry(cache, key, prep, channels=len(settings.modalities))
        saving = time.perf_counter() - start
        start = time.perf_counter()
        cached = load_entry(cache, study_key(ct, pet, settings))
        later = time.perf_counter() - start
        assert cached is not None and np.array_equal(cached.image, prep.image[: len(settings.modalities)])
        size = sum(p.stat().st_size for p in cache.iterdir()) / 1e6
        print(f"PET {tuple(args.shape)}, network grid {prep.record.network.size}, model {args.model_dir.name}")
        print(
            f"step 0: read {timings['read']:.2f} s + preprocess {timings['preprocess']:.2f} s = {first:.2f} s; "
            f"keeping it {saving:.2f} s ({size:.0f} MB in the cache)"
        )
        print(f"steps 1-5: key (SHA-256 of CT and PET) + cached input {later:.2f} s")
        grid = prep.record.network
        rng = np.random.default_rng(0)
        centre = np.asarray(grid.size) // 2
        index = centre + np.cumsum(rng.integers(-1, 2, size=(args.points, 3)), axis=0)
        points = tuple(map(tuple, grid.to_physical(np.clip(index, 0, np.asarray(grid.size) - 1).astype(float))))
        sigma = settings.click_sigma_mm or 5.0
        start = time.perf_counter()
        click_maps(Clicks(tumor=points), grid, sigma_mm=sigma)
        print(f"encoding {args.points} scribble points (sigma {sigma:g} mm): {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
