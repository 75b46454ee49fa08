"""Baseline (the seed's inference path) vs petseg on the same phantom study and weights.

    python bench/benchmark.py --shape 128 128 160 --spacing 4 4 4 --folds 5 --device cpu
    python bench/benchmark.py --model-dir weights --also-fp32        # demo weights, fast vs fp32 Dice

Prints per-stage seconds (read, preprocess, network, restore, write), total, peak host
RSS above the process's level before the run, peak GPU memory, the speed ratio and the
Dice between the masks. Both pipelines run in this one process, one after the other.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_baseline import seed_predict  # noqa: E402

from petseg.compare import dice  # noqa: E402
from petseg.inference import resolve_device, window_count  # noqa: E402
from petseg.model import ModelFolder, build_network  # noqa: E402
from petseg.phantom import make_study  # noqa: E402
from petseg.predictor import Predictor  # noqa: E402
from petseg.preprocess import preprocess  # noqa: E402
from petseg.settings import PAPER_NETWORK, Settings, resolve_backend  # noqa: E402

STAGES = ("read", "preprocess", "network", "restore", "write")


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Samples the resident set every 20 ms while a block runs."""

    def __enter__(self):
        self.start, self.peak, self._stop = rss_mb(), rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.above_start = self.peak - self.start


def random_paper_networks(folds: int) -> list[torch.nn.Module]:
    nets = []
    for fold in range(folds):
        torch.manual_seed(fold)
        net = build_network(PAPER_NETWORK)
        for m in net.modules():  # non-trivial BatchNorm statistics, as after training
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        nets.append(net.eval())
    return nets


def run(label, fn, device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        timings = fn()
        total = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {
        "label": label,
        **{s: timings.get(s, 0.0) for s in STAGES},
        "total": total,
        "peak_rss_mb": rss.above_start,
        "peak_gpu_mb": gpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 160))
    parser.add_argument("--spacing", type=float, nargs=3, default=(4.0, 4.0, 4.0))
    parser.add_argument("--tracer", default="fdg")
    parser.add_argument("--seed", type=int, default=500)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dir", type=Path, help="default: random paper-size networks")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--resample-backend", default="auto", choices=("auto", "sitk", "torch"))
    parser.add_argument(
        "--also-sitk", action="store_true", help="also run petseg with SimpleITK resampling and report their Dice"
    )
    parser.add_argument("--sw-batch-size", type=int, default=None)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--tta", action="store_true", help="petseg with test-time mirroring")
    parser.add_argument("--also-fp32", action="store_true", help="also run petseg in fp32 and report fast-vs-fp32 Dice")
    parser.add_argument("--flops", action="store_true", help="count FLOPs of one window per fold (slow on CPU)")
    parser.add_argument("--json", type=Path, help="write the numbers here too")
    args = parser.parse_args()

    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # the seed's NIfTI->MHA step warns about qto_xyz
    device = resolve_device(args.device)
    if args.model_dir:
        folder = ModelFolder.open(args.model_dir)
        networks, base = folder.load_networks()[: args.folds], folder.settings
        weights = f"{args.model_dir} ({len(networks)} folds)"
    else:
        networks, base = random_paper_networks(args.folds), Settings()
        weights = f"random paper-size UNet ({args.folds} folds)"
    settings = base.with_overrides(
        device=str(device),
        precision=args.precision,
        sw_batch_size=args.sw_batch_size,
        tta=args.tta or None,
        resample_backend=args.resample_backend,
    )
    study = make_study(tracer=args.tracer, seed=args.seed, shape=tuple(args.shape), spacing=tuple(args.spacing))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ct, pet = tmp / "ct.mha", tmp / "pet.mha"
        sitk.WriteImage(study.ct, str(ct))
        sitk.WriteImage(study.pet, str(pet))
        prep = preprocess(study.ct, study.pet, settings=settings)
        windows = window_count(prep.image.shape[1:], settings)
        rows, masks = [], {}

        if not args.skip_baseline:
            rows.append(
                run(
                    "baseline (seed path, fp32)",
                    lambda: seed_predict(
                        ct, pet, tmp / "seed.mha", networks, device=device, roi_size=settings.roi_size
                    ),
                    device,
                )
            )
            masks["baseline"] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "seed.mha")))

        def petseg_run(s, name):
            predictor = Predictor(networks, settings=s)
            predictor.predict_files(ct=ct, pet=pet, output=tmp / f"{name}.mha")
            return predictor.timings

        backend = resolve_backend(settings.resample_backend, device)
        rows.append(run(f"petseg ({settings.precision}, {backend})", lambda: petseg_run(settings, "petseg"), device))
        masks["petseg"] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "petseg.mha")))
        if args.also_fp32:
            ref = settings.with_overrides(precision="fp32")
            rows.append(run("petseg (fp32)", lambda: petseg_run(ref, "fp32"), device))
            masks["fp32"] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "fp32.mha")))
        if args.also_sitk:
            ref = settings.with_overrides(resample_backend="sitk")
            rows.append(run(f"petseg ({settings.precision}, sitk)", lambda: petseg_run(ref, "sitk"), device))
            masks["sitk"] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp / "sitk.mha")))

    print(f"machine: {device} ({torch.get_num_threads()} threads, torch {torch.__version__}); weights: {weights}")
    print(
        f"study: PET {tuple(args.shape)} at {tuple(args.spacing)} mm; network grid after body crop "
        f"{prep.record.network.size}: {windows} windows of {settings.roi_size} per fold"
    )
    header = (
        f"{'pipeline':28s}" + "".join(f"{s:>11s}" for s in (*STAGES, "total")) + f"{'peak RSS':>11s}{'peak GPU':>11s}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['label']:28s}"
            + "".join(f"{r[s]:10.2f}s" for s in (*STAGES, "total"))
            + f"{r['peak_rss_mb']:9.0f}MB{r['peak_gpu_mb']:9.0f}MB"
        )
    summary = {"rows": rows, "windows_per_fold": windows, "network_grid": prep.record.network.size}
    if "baseline" in masks:
        ratio = rows[0]["total"] / rows[1]["total"]
        summary.update(speedup=ratio, dice_baseline_petseg=dice(masks["baseline"] > 0, masks["petseg"] > 0))
        print(
            f"speed-up petseg vs baseline: {ratio:.2f}x; Dice(baseline, petseg) = {summary['dice_baseline_petseg']:.4f}"
        )
    if "fp32" in masks:
        summary["dice_fast_fp32"] = dice(masks["fp32"] > 0, masks["petseg"] > 0)
        print(
            f"Dice(petseg {settings.precision}, petseg fp32) = {summary['dice_fast_fp32']:.4f} "
            f"({int((masks['fp32'] > 0).sum())} vs {int((masks['petseg'] > 0).sum())} lesion voxels)"
        )
    if "sitk" in masks:
        summary["dice_backends"] = dice(masks["sitk"] > 0, masks["petseg"] > 0)
        print(f"Dice(petseg {backend} resampling, petseg sitk resampling) = {summary['dice_backends']:.4f}")
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        window = torch.zeros(1, 2, *settings.roi_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            networks[0].eval()(window)
        per_window = counter.get_total_flops()
        summary["flop_per_window"] = per_window
        print(
            f"FLOP per window per fold: {per_window / 1e9:.0f} G; per study ({windows} windows x "
            f"{len(networks)} folds): {per_window * windows * len(networks) / 1e12:.1f} T"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
