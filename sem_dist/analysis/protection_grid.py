"""Figures a person can open: the paper's Figure 4 layout — clean images, the noise scaled for visibility, the
protected images — for one or more protection methods."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..perturb.algorithm4 import apply_noise


def per_class_indices(labels: np.ndarray, per_class: int) -> list[int]:
    """The first ``per_class`` samples of every class, class by class (dataset order within a class)."""
    return [int(i) for c in np.unique(labels) for i in np.flatnonzero(labels == c)[:per_class]]


def save_protection_grid(images: np.ndarray, noises: dict[str, np.ndarray], path: str | Path,
                         labels: list[str] | None = None) -> None:
    """Rows: clean, then per method its noise (amplified to the full grey range, ×gain in the row title) and
    its protected images; one column per sample. ``images`` uint8 NCHW, each noise int8 of the same shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("clean", images, 255)]
    for name, noise in noises.items():
        scale = max(1, int(np.abs(noise).max()))
        rows += [(f"{name} noise ×{127 // scale}", noise.astype(np.float32) / (2 * scale) + 0.5, 1),
                 (f"{name} protected", apply_noise(images, noise), 255)]
    n = len(images)
    fig, axes = plt.subplots(len(rows), n, figsize=(0.8 * n + 0.4, 0.95 * len(rows) + 0.3), squeeze=False)
    for r, (title, row, vmax) in enumerate(rows):
        for c in range(n):
            img = np.transpose(row[c], (1, 2, 0))
            ax = axes[r, c]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=vmax)
            ax.set_axis_off()
            if r == 0 and labels is not None:
                ax.set_title(labels[c], fontsize=7)
        axes[r, 0].text(-0.1, 0.5, title, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=1.3 / (0.8 * n + 0.4), right=0.995, top=0.93, bottom=0.01, wspace=0.05, hspace=0.08)
    fig.savefig(path, dpi=100)
    plt.close(fig)
