"""`gres eval --plots DIR`: PNG figures of one evaluation (matplotlib, imported lazily)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gres_cli.errors import GresError


def write_plots(
    out_dir: Path,
    title: str,
    histogram: list[int],
    confusion: dict[str, int],
    margin_sweep: dict[str, dict[str, float]] | None = None,
    cosod_curves: dict[str, list[float]] | None = None,
) -> list[Path]:
    """Write the figures into `out_dir` and return their paths:
    iou_histogram.png, precision_curve.png, confusion.png, and margin_sweep.png /
    cosod_curves.png when there is a sweep / co-SOD curves."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GresError("--plots needs matplotlib: pip install 'gres[plots]'") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp.png"
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(tmp, dpi=120)
        plt.close(fig)
        os.replace(tmp, path)  # a figure is either whole or absent
        written.append(path)

    bins = len(histogram)
    edges = [k / bins for k in range(bins)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(edges, histogram, width=1 / bins, align="edge", color="#4c72b0")
    ax.set(xlabel="IoU per (expression, image) pair", ylabel="pairs", xlim=(0, 1))
    save(fig, "iou_histogram.png")

    total = max(sum(histogram), 1)
    above = [sum(histogram[k:]) / total for k in range(bins)]  # share with IoU >= k/bins
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(edges, above, color="#dd8452")
    ax.set(xlabel="IoU threshold t", ylabel="share of pairs with IoU >= t", xlim=(0, 1))
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    save(fig, "precision_curve.png")

    cells = [[confusion["tp"], confusion["fn"]], [confusion["fp"], confusion["tn"]]]
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(cells, cmap="Blues")
    darkest = max(max(row) for row in cells)
    for i in range(2):
        for j in range(2):
            colour = "white" if cells[i][j] > darkest / 2 else "black"
            ax.text(j, i, str(cells[i][j]), ha="center", va="center", fontsize=12, color=colour)
    ax.set_xticks([0, 1], ["predicted present", "predicted absent"])
    ax.set_yticks([0, 1], ["present", "absent"])
    ax.set_ylabel("ground truth")
    save(fig, "confusion.png")

    if margin_sweep:
        margins = sorted(margin_sweep, key=float)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key in ("acc", "f1", "mIoU", "N-acc", "T-acc"):
            ax.plot([float(m) for m in margins], [margin_sweep[m][key] for m in margins], label=key)
        ax.set(xlabel="margin m (present when d_pos + m < d_neg)", ylabel="metric")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "margin_sweep.png")

    if cosod_curves:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for key, values in cosod_curves.items():
            ax.plot([k / max(len(values) - 1, 1) for k in range(len(values))], values, label=key)
        ax.set(xlabel="threshold on the normalised map", ylabel="score", xlim=(0, 1))
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "cosod_curves.png")
    return written
