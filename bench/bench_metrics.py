"""Time the challenge metrics + lesion measures on a whole-body mask pair with 100+ lesions.

python bench/bench_metrics.py [--shape 400 400 326] [--lesions 150]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from petseg.metrics import Labelled, labelled_metrics, lesion_table, totals


def sphere_masks(shape, n, rng):
    gt = np.zeros(shape[::-1], np.uint8)  # (z, y, x)
    pred = np.zeros_like(gt)
    zz, yy, xx = (np.arange(s) for s in gt.shape)
    for i in range(n):
        c = [rng.integers(10, s - 10) for s in gt.shape]
        r = rng.uniform(1.5, 6.0)
        sl = tuple(slice(max(0, ci - 7), ci + 8) for ci in c)
        z, y, x = np.meshgrid(zz[sl[0]], yy[sl[1]], xx[sl[2]], indexing="ij")
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
        gt[sl] |= ball
        if i % 5:  # 80 % detected, slightly shifted
            shifted = (z - c[0] - 1) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r
            pred[sl] |= shifted
    for _ in range(n // 4):  # false positives
        c = [rng.integers(10, s - 10) for s in gt.shape]
        pred[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] = 1
    return gt, pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", type=int, nargs=3, default=(400, 400, 326))
    parser.add_argument("--lesions", type=int, default=150)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gt, pred = sphere_masks(tuple(args.shape), args.lesions, rng)
    pet = rng.gamma(2.0, 0.5, gt.shape).astype(np.float32)
    ml = 2.0364 * 2.0364 * 3.0 / 1000
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        g, p = Labelled.of(gt), Labelled.of(pred)  # one labelling pass per mask
        m = labelled_metrics(g, p, voxel_volume_ml=ml)
        for labelled in (g, p):
            totals(lesion_table(labelled, pet, voxel_volume_ml=ml))
        times.append(time.perf_counter() - t0)
    print(f"grid {tuple(args.shape)}, {m.gt_lesions} GT lesions, {m.pred_lesions} predicted")
    print(f"DSC {m.dsc:.4f}  FPV {m.fpv_ml:.2f} ml  FNV {m.fnv_ml:.2f} ml")
    print(
        f"metrics + lesion measures of both masks: best {min(times):.2f} s, mean {np.mean(times):.2f} s "
        f"over {args.repeat} runs"
    )


if __name__ == "__main__":
    main()
