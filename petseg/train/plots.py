"""Loss and validation-DSC curves from a fold's CSV log."""

from __future__ import annotations

import csv
from pathlib import Path

from petseg.atomic import atomic_path


def plot_curves(log_path: Path, out_path: Path) -> None:
    """Training loss (log scale) and validation DSC against the epoch (counted from 1, whole
    numbers), the legend below the axes where it hides no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    with open(log_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.4))
    (loss,) = ax.plot(epochs, [float(r["loss"]) for r in rows], color="tab:blue", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:.3g}")  # 0.5, not 5x10^-1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max(epochs, default=1) + 0.5)
    handles = [loss]
    val = [(int(r["epoch"]) + 1, float(r["val_dsc"])) for r in rows if r["val_dsc"] not in ("", "nan")]
    twin = ax.twinx()
    if val:
        (dsc,) = twin.plot(*zip(*val), "o-", color="tab:red", markersize=3, label="validation DSC")
        handles.append(dsc)
    twin.set_ylabel("validation DSC")
    twin.set_ylim(0, 1)
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room below the axes for the legend
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
