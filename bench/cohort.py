"""Cohort throughput: sequential vs pipelined ``petseg predict`` over N phantom studies.

python bench/cohort.py [--n 4] [--shape 400 400 326] [--spacing 2.04 2.04 3] [--latency 4] [--workers 0 1 2]
    [--demo-workers 0 1] [--device cpu|cuda] [--resample-backend auto|sitk|torch]

The cohort is N copies (hard links under other case names) of one phantom study with the
autoPET release's PET geometry (400 x 400 x 326 voxels of 2.04 x 2.04 x 3 mm): what is
measured is throughput, and one whole-body phantom takes about 100 s to synthesise here.

Two networks: the shipped demo weights (the real stage on this machine), and a stand-in of
fixed latency per study (``--latency`` seconds of sleep, then PET > 2.5 as the
probability), which stands for a GPU that runs the ensemble in about that time and leaves
the host's cores to reading, preprocessing, restoring and writing. Each configuration runs
in its own process so that its peak RSS (and its workers') is its own. Prints one table row
per configuration: wall seconds, studies/hour, the per-study mean of each stage, the
throughput bound (sequential: 1 / the sum of the stages; pipelined: 1 / the slower of the
network and (load + finish) / workers, the workers sharing both), and the overlap
efficiency = achieved throughput / that bound (1.0: every stage hidden behind the slowest).
With the torch backend the main process also preprocesses and restores (on the device) and
the workers read and write: the bound counts those stages on that side.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class FixedLatency:
    """Network stage stand-in: sleeps ``seconds`` per study, returns PET > 2.5."""

    def __init__(self, settings, seconds: float, device) -> None:
        self.settings = settings
        self.seconds = seconds
        self.device = device  # where the torch backend preprocesses and restores

    def run_network(self, image, record, *, start=None):
        from petseg.preprocess import host_array
        from petseg.stages import EnsembleMaps

        time.sleep(self.seconds)
        return EnsembleMaps((host_array(image)[1] > 2.5).astype(np.float32), None, None), self.seconds


def one_run(args: argparse.Namespace) -> None:
    """Child process: one configuration, result as one JSON line on stdout."""
    from petseg.cohort import Job, run_cohort
    from petseg.layout import find_cases
    from petseg.outputs import CaseOutputs
    from petseg.predictor import Predictor

    cases, _ = find_cases(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [Job(name=c.name, ct=c.ct, pet=c.pet, mask=CaseOutputs.of(c.name, out, c.suffix).mask) for c in cases]
    predictor = Predictor.from_model_dir(ROOT / "weights", device=args.device, resample_backend=args.resample_backend)
    backend = predictor.backend
    if args.latency:
        predictor = FixedLatency(predictor.settings, args.latency, predictor.device)
    summary = run_cohort(jobs, predictor=predictor, workers=args.workers, progress=False)
    if args.latency:
        STAGES["network"] = args.latency * len(summary.done)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    row = {
        "seconds": summary.seconds,
        "done": len(summary.done),
        "stages": STAGES,
        "backend": backend,
        "rss_mb": rss,
        "worker_rss_mb": children,
    }
    print(json.dumps(row))


STAGES: dict[str, float] = {}  # seconds per stage, summed over the run's studies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=(400, 400, 326))
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.04, 2.04, 3.0))
    parser.add_argument("--latency", type=float, default=4.0, help="stand-in network seconds per study")
    parser.add_argument("--workers", type=int, nargs="+", default=(0, 1, 2), help="with the stand-in network")
    parser.add_argument("--demo-workers", type=int, nargs="+", default=(0, 1), help="with the demo weights")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--resample-backend", default="auto", choices=("auto", "sitk", "torch"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--one-workers", dest="one_workers", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workers = args.one_workers
        _record_stages()
        one_run(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        subprocess.run(
            [sys.executable, "-m", "petseg", "-q", "phantom", "-o", str(data), "-n", "1", "--seed", "11",
             "--shape", *map(str, args.shape), "--spacing", *map(str, args.spacing)],
            check=True,
        )  # fmt: skip
        images = data / "imagesTr"
        originals = sorted(images.iterdir())
        for i in range(1, args.n):
            for path in originals:
                (images / path.name.replace("x000", f"x{i:03d}")).hardlink_to(path)
        print(f"{args.n} phantom studies {tuple(args.shape)} at {tuple(args.spacing)} mm, CPU: {_cpus()} cores")
        header = "| network | workers | wall s | studies/h | load s | network s | finish s | bound studies/h | efficiency | peak RSS main / worker MB |"
        print(header)
        print("| --- " * 10 + "|")
        for latency in (0.0, args.latency):
            for workers in args.workers if latency else args.demo_workers:
                out = Path(tmp) / f"out-{latency}-{workers}"
                command = [sys.executable, __file__, "--child", "--data", str(data / "imagesTr"), "--out", str(out)]
                command += ["--latency", str(latency), "--one-workers", str(workers), "--device", args.device]
                command += ["--resample-backend", args.resample_backend]
                result = json.loads(
                    subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
                )
                print(_row(result, latency, workers, args.n))


def _row(result: dict, latency: float, workers: int, n: int) -> str:
    stages = {k: v / n for k, v in result["stages"].items()}
    device = result["backend"] == "torch"  # preprocess and restore beside the network, in the main process
    load = stages.get("read", 0) + (0 if device else stages.get("preprocess", 0))
    network = stages.get("network", 0) + (stages.get("preprocess", 0) + stages.get("restore", 0) if device else 0)
    finish = stages.get("write", 0) + (0 if device else stages.get("restore", 0))
    rate = result["done"] / result["seconds"] * 3600
    # workers share loading and finishing; the network is one stage in the main process
    bound = 3600 / (max(network, (load + finish) / workers) if workers else load + network + finish)
    name = f"stand-in {latency:g} s" if latency else "demo weights"
    name += f", {result['backend']}"
    return (
        f"| {name} | {workers} | {result['seconds']:.1f} | {rate:.0f} | {load:.2f} | {network:.2f} | {finish:.2f} "
        f"| {bound:.0f} | {rate / bound:.2f} | {result['rss_mb']:.0f} / {result['worker_rss_mb']:.0f} |"
    )


def _cpus() -> int:
    from petseg.frontend import available_cpus

    return available_cpus()


def _record_stages() -> None:
    """Sum every stage's seconds over the run from the petseg log (workers' records included)."""
    import logging
    import re

    pattern = re.compile(r"^(\w+)\s+([\d.]+) s$")

    class Stages(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            match = pattern.match(record.getMessage())
            if match:
                STAGES[match[1]] = STAGES.get(match[1], 0.0) + float(match[2])

    logger = logging.getLogger("petseg")
    logger.setLevel(logging.DEBUG)  # petseg logs each stage's seconds at debug level
    logger.addHandler(Stages())


if __name__ == "__main__":
    main()
