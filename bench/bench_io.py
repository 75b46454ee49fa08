"""Non-network time of one whole-body study, per stage and resampling backend, and the
time to the first network window of a fresh process.

    python bench/bench_io.py [--shape 400 400 326] [--spacing 2.036 2.036 3.0]
        [--backend sitk torch] [--device cpu|cuda] [--repeat 2] [--startup]

Writes a synthetic PET (SUV) and CT (HU; on the PET grid as the autoPET CTres, or with
--ct-grid own on a 512² grid of its own) as compressed .mha, then runs the predictor with a
zero-cost network, so the 'network' stage is only the sliding-window bookkeeping; prints each
stage's seconds for each backend (the best of --repeat runs, after one warm-up on CUDA).
--startup runs ``process.py`` (Grand Challenge layout) and ``petseg predict`` on the study in
a fresh process per backend and prints when each stage began, from the launch: torch and
MONAI imported, read (``process.py``: waiting for the read begun at start-up), preprocess,
the first window, restore, write.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
CT, PET = "study_0000.mha", "study_0001.mha"  # nnU-Net names: `petseg predict -i` finds the pair


def synthetic_study(shape, spacing, rng, *, ct_grid: str = "pet"):
    """CT (HU) and PET (SUV) of an elliptic-cylinder body with one hot cube."""
    x, y, z = shape
    zz, yy, xx = np.ogrid[:z, :y, :x]
    body = ((xx - x / 2) / (0.4 * x)) ** 2 + ((yy - y / 2) / (0.28 * y)) ** 2 <= 1  # elliptic cylinder
    body = np.broadcast_to(body, (z, y, x))
    ct = np.where(body, 40.0, -1000.0).astype(np.float32) + rng.normal(0, 10, (z, y, x)).astype(np.float32)
    pet = np.where(body, 1.0, 0.05).astype(np.float32) * rng.gamma(8.0, 1 / 8.0, (z, y, x)).astype(np.float32)
    pet[z // 2 - 5 : z // 2 + 5, y // 2 - 5 : y // 2 + 5, x // 2 - 5 : x // 2 + 5] = 8.0
    origin = (-x * spacing[0] / 2, -y * spacing[1] / 2, -900.0)
    images = []
    for array in (ct, pet):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        images.append(image)
    if ct_grid == "own":  # a CT as scanned: 512 x 512 at its own spacing, 3 mm slices
        ct_spacing = (x * spacing[0] / 512, y * spacing[1] / 512, 3.0)
        ct_size = (512, 512, int(z * spacing[2] / 3.0))
        grid = sitk.Image(ct_size, sitk.sitkFloat32)
        grid.SetSpacing(ct_spacing)
        grid.SetOrigin(origin)
        images[0] = sitk.Resample(images[0], grid, sitk.Transform(), sitk.sitkLinear, -1000.0)
    return images


class PetThreshold(torch.nn.Module):
    """A zero-cost 'network': logits (2.5 - PET, PET - 2.5)."""

    def forward(self, x):
        return torch.cat([2.5 - x[:, 1:2], x[:, 1:2] - 2.5], dim=1)


def stage_seconds(folder: Path, backend: str, device: str, repeat: int) -> tuple[dict[str, float], float]:
    """The best run's seconds per stage and in all, of ``repeat`` runs."""
    from petseg.predictor import Predictor
    from petseg.settings import Settings

    settings = Settings(device=device, sw_batch_size=4, resample_backend=backend, precision="fp32")
    predictor = Predictor([PetThreshold()], settings=settings)
    best: tuple[dict[str, float], float] | None = None
    for run in range(repeat + (1 if device.startswith("cuda") else 0)):
        start = time.perf_counter()
        predictor.predict_files(ct=folder / CT, pet=folder / PET, output=folder / f"mask_{backend}.mha")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        if device.startswith("cuda") and run == 0:
            continue  # the warm-up: CUDA context, kernels
        if best is None or total < best[1]:
            best = (dict(predictor.timings), total)
    return best


STARTUP_SCRIPT = r"""
import importlib.abc, importlib.util, json, sys, time
from contextlib import contextmanager
marks = {"python": time.monotonic()}

def after(name, module):  # marks patched in as the modules load, nothing imported early
    if name == "petseg.stages":
        timed = module.timed
        @contextmanager
        def marked(stage, timings):
            marks.setdefault(stage, time.monotonic())
            with timed(stage, timings):
                yield
        module.timed = marked  # the predictor and cohort jobs import it by name, later
    else:  # petseg.inference: torch and MONAI are in
        marks["torch + MONAI imported"] = time.monotonic()
        forward = module.FoldAverage.forward
        def first_window(self, window):
            marks.setdefault("first window", time.monotonic())
            return forward(self, window)
        module.FoldAverage.forward = first_window

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in ("petseg.stages", "petseg.inference"):
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            after(name, module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Hook())
entry, argv = sys.argv[1], sys.argv[2:]
if entry == "process.py":
    sys.path.insert(0, argv.pop(0))
    from process import main
else:
    from petseg.cli import main
code = main(argv)
marks["done"] = time.monotonic()
print("MARKS " + json.dumps(marks))
sys.exit(code)
"""


def startup(folder: Path, backend: str, device: str, model_dir: str, *, entry: str) -> dict[str, float]:
    """Seconds from the launch of ``petseg predict`` or ``process.py`` to each mark."""
    out = folder / f"{entry}-{backend}"
    options = ["--model-dir", model_dir, "--device", device, "--resample-backend", backend]
    if entry == "process.py":  # the Grand Challenge layout, one study
        gc_input = folder / "gc"
        for role, name in (("ct", CT), ("pet", PET)):
            (gc_input / "images" / role).mkdir(parents=True, exist_ok=True)
            target = gc_input / "images" / role / "study.mha"
            if not target.exists():
                os.link(folder / name, target)
        command = [entry, str(ROOT), "--input", str(gc_input), "--output", str(out), *options]
    else:
        command = ["petseg", "-q", "predict", "-i", str(folder), "-o", str(out), *options]
    launched = time.monotonic()  # CLOCK_MONOTONIC: the same clock in the child
    result = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, *command], capture_output=True, text=True)
    line = next((s for s in result.stdout.splitlines() if s.startswith("MARKS ")), None)
    if line is None:
        raise SystemExit(f"{entry} failed:\n{result.stderr[-2000:]}")
    return {k: v - launched for k, v in json.loads(line[6:]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(400, 400, 326))
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.036, 2.036, 3.0))
    parser.add_argument("--ct-grid", choices=("pet", "own"), default="pet")
    parser.add_argument("--backend", nargs="+", default=["sitk", "torch"], choices=("sitk", "torch"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--startup", action="store_true", help="also time a fresh `petseg predict` process")
    parser.add_argument("--model-dir", default=str(ROOT / "weights"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    ct, pet = synthetic_study(tuple(args.shape), tuple(args.spacing), np.random.default_rng(0), ct_grid=args.ct_grid)
    figures: dict = {"shape": list(args.shape), "spacing": list(args.spacing), "ct_grid": args.ct_grid}
    print(
        f"PET {tuple(args.shape)} at {tuple(args.spacing)} mm, CT {ct.GetSize()}, {args.device}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sitk.WriteImage(ct, str(folder / CT), True)
        sitk.WriteImage(pet, str(folder / PET), True)
        print("| backend | read | preprocess | network (bookkeeping) | restore | write | non-network |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for backend in args.backend:
            timings, total = stage_seconds(folder, backend, args.device, args.repeat)
            non_network = total - timings["network"]
            stages = [timings.get(k, 0.0) for k in ("read", "preprocess", "network", "restore", "write")]
            print(f"| {backend} | " + " | ".join(f"{v:.2f} s" for v in stages) + f" | **{non_network:.2f} s** |")
            figures[backend] = {**timings, "non_network": non_network, "total": total}
        if args.startup:
            print(
                "\nseconds from a fresh process's launch (demo weights; process.py reads the study while it imports):"
            )
            for entry in ("process.py", "petseg"):
                for backend in args.backend:
                    marks = startup(folder, backend, args.device, args.model_dir, entry=entry)
                    figures[f"startup_{entry}_{backend}"] = marks
                    print(f"  {entry}, {backend}: " + ", ".join(f"{k} {v:.2f}" for k, v in marks.items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
