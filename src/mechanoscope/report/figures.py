"""Figures shared by reports and demos (matplotlib, Agg backend, no screen needed)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["field_gallery", "figure_to_png_bytes"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_to_png_bytes(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def field_gallery(images: Sequence[np.ndarray], titles: Sequence[str], pixel_size_um: float, path: str | os.PathLike[str] | None = None, labels: Sequence[np.ndarray] | None = None) -> bytes:
    """A row of fields of view (percentile contrast, scale bar in µm), optional outlines.

    Returns the PNG bytes; also writes them to ``path`` if given.
    """
    plt = _plt()
    from skimage.segmentation import find_boundaries

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), squeeze=False)
    for k, (ax, img, title) in enumerate(zip(axes[0], images, titles)):
        arr = np.asarray(img, dtype=float)
        lo, hi = np.percentile(arr, [0.5, 99.5])
        ax.imshow(arr, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if labels is not None:
            edge = find_boundaries(labels[k], mode="inner")
            overlay = np.zeros(arr.shape + (4,))
            overlay[edge] = (1.0, 0.8, 0.0, 0.9)
            ax.imshow(overlay, interpolation="nearest")
        bar_um = 50.0
        bar_px = bar_um / pixel_size_um
        y = arr.shape[0] * 0.95
        ax.plot([arr.shape[1] * 0.05, arr.shape[1] * 0.05 + bar_px], [y, y], color="white", lw=3)
        ax.text(arr.shape[1] * 0.05, y - arr.shape[0] * 0.03, f"{bar_um:.0f} µm", color="white", fontsize=9)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    png = figure_to_png_bytes(fig)
    if path is not None:
        from mechanoscope.io.atomic import atomic_path

        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(png)
    return png
