"""Mean Dice and DMM over autoPET V's protocol steps for one or more models, from the
``autopet5.csv`` files ``petseg evaluate-interactive --protocol autopet5`` writes.

    python bench/plot_autopet5.py weights-scribbles=ap5/autopet5.csv weights-clicks=ap5c/autopet5.csv -o curves.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def means(path: Path, measure: str) -> np.ndarray:
    rows = list(csv.DictReader(path.open()))
    steps = sorted({int(r["step"]) for r in rows})
    return np.array([np.nanmean([float(r[measure]) for r in rows if int(r["step"]) == k]) for k in steps])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="NAME=path/to/autopet5.csv")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for run in args.runs:
        name, _, path = run.partition("=")
        for ax, measure in zip(axes, ("dice", "dmm")):
            values = means(Path(path), measure)
            ax.plot(np.arange(len(values)), values, "o-", label=name)
    for ax, title in zip(axes, ("mean Dice", "mean DMM (lesion F1, IoU >= 0.1)")):
        ax.set_xlabel("scribble steps")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
