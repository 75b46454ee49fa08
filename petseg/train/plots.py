"""Loss and validation-DSC curves from a fold's CSV log."""

from __future__ import annotations

import csv
from pathlib import Path

from petseg.io import atomic_path


def plot_curves(log_path: Path, out_path: Path) -> None:
    """Loss (log scale) and validation DSC against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [float(r["loss"]) for r in rows], label="training loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    val = [(int(r["epoch"]), float(r["val_dsc"])) for r in rows if r["val_dsc"] not in ("", "nan")]
    twin = ax.twinx()
    if val:
        twin.plot(*zip(*val), "o-", color="tab:red", label="validation DSC")
    twin.set_ylabel("validation DSC")
    twin.set_ylim(0, 1)
    fig.legend(loc="upper center", ncol=2, frameon=False)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
