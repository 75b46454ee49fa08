"""Can the training loader keep the network busy? Batches/s of the loader (cached cases,
random patches, the paper's augmentations) against batches/s of the training step
(forward + backward + Adam) of the paper-size network.

    python bench/train_throughput.py [--workers 0 1 2] [--device cpu|cuda] [--batches 8]
        [--patch-size 128 128 128] [--batch-size 4] [--shape 200 200 200]

Cases are synthetic whole-body-like arrays at the network grid (2 mm: 200 x 200 x 200 by
default, the size of an autoPET study after the body crop), kept in memory as the cache's
arrays are. Prints one row per worker count and the step's own rate; the loader keeps up
when its rate is at least the step's.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def synthetic_cases(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> list[dict]:
    from petseg.train.data import with_sampling_map

    cases = []
    x, y, z = shape
    xx, yy = np.ogrid[:x, :y]
    body = (((xx - x / 2) / (0.4 * x)) ** 2 + ((yy - y / 2) / (0.3 * y)) ** 2 <= 1)[..., None]
    for _ in range(n):
        ct = np.where(body, 0.52, 0.0).astype(np.float32) + rng.normal(0, 0.01, shape).astype(np.float32)
        pet = np.where(body, 1.0, 0.05).astype(np.float32) * rng.gamma(8.0, 1 / 8.0, shape).astype(np.float32)
        label = np.zeros(shape, np.float32)
        for _ in range(5):
            c = rng.integers(20, np.asarray(shape) - 20)
            label[c[0] - 6 : c[0] + 6, c[1] - 6 : c[1] + 6, c[2] - 6 : c[2] + 6] = 1.0
        pet[label > 0] = 8.0
        cases.append(with_sampling_map({"image": np.stack([ct, pet]), "label": label[None]}, hot_suv=3.0))
    return cases


def loader_rate(config, cases, workers: int, batches: int) -> float:
    from monai.data import DataLoader, Dataset

    from petseg.train.transforms import train_transforms

    transform = train_transforms(config)
    loader = DataLoader(
        Dataset(cases * 64, transform=transform), batch_size=config.batch_size, shuffle=True, num_workers=workers
    )
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not the steady rate
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches / (time.perf_counter() - start)


def step_rate(config, device: torch.device, batches: int) -> float:
    from monai.losses import GeneralizedDiceFocalLoss

    from petseg.inference import resolve_precision
    from petseg.model import build_network

    network = build_network(config.network).to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_fn = GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True, weight=[1.0, 100.0])
    autocast = resolve_precision("auto", device.type)
    x = torch.rand(config.batch_size, 2, *config.patch_size, device=device)
    y = (torch.rand(config.batch_size, 1, *config.patch_size, device=device) > 0.99).float()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            loss = loss_fn(network(x), y)
        loss.backward()
        optimizer.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--step-batches", type=int, default=3, help="training steps timed")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(128, 128, 128))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=(200, 200, 200))
    parser.add_argument("--cases", type=int, default=4)
    args = parser.parse_args()

    from petseg.frontend import available_cpus
    from petseg.settings import Settings
    from petseg.train.config import TrainConfig

    device = torch.device(args.device)
    config = TrainConfig(
        data_dir=".",
        out_dir=".",
        patch_size=tuple(args.patch_size),
        batch_size=args.batch_size,
        settings=Settings(device=args.device),
    )
    cases = synthetic_cases(args.cases, tuple(args.shape), np.random.default_rng(0))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({available_cpus()} cores)"
    print(f"paper network, batch {args.batch_size} x {args.patch_size} patches, cases {args.shape}, on {name}")
    step = step_rate(config, device, args.step_batches)
    print(
        f"| source | batches/s | samples/s |\n| --- | --- | --- |\n| training step ({args.device}) | {step:.3f} | "
        f"{step * args.batch_size:.2f} |"
    )
    for workers in args.workers:
        rate = loader_rate(config, cases, workers, args.batches)
        keeps = "keeps up" if rate >= step else f"{rate / step:.0%} of the step"
        print(f"| loader, {workers} worker(s) | {rate:.3f} | {rate * args.batch_size:.2f} |  <- {keeps}")


if __name__ == "__main__":
    main()
