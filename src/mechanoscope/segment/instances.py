"""From per-pixel class probabilities (background / interior / boundary) to an instance label image."""

from __future__ import annotations

import numpy as np

from mechanoscope.errors import (
    MechanoscopeError,
)
from mechanoscope.segment.network_config import CLASSES

__all__ = ["probabilities_to_labels"]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=0, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=0, keepdims=True)
    return z


# --------------------------------------------------------------------------- instances
def probabilities_to_labels(
    prob: np.ndarray,
    *,
    pixel_size_um: float,
    foreground_threshold: float = 0.5,
    interior_threshold: float = 0.5,
    min_cell_area_um2: float = 20.0,
) -> np.ndarray:
    """Instance labels from per-pixel class probabilities.

    Parameters
    ----------
    prob
        ``(3, Y, X)`` probabilities of background, interior, boundary (see
        :data:`CLASSES`).
    pixel_size_um
        Pixel size of ``prob`` in µm (for the minimum area).
    foreground_threshold
        Cell pixels: ``p(interior) + p(boundary) > foreground_threshold``.
    interior_threshold
        Marker pixels: ``p(interior) > interior_threshold``; each connected
        component is one cell.
    min_cell_area_um2
        Cells (and markers smaller than a quarter of it) below this area are dropped.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` int32 labels, 0 = background, consecutive ids ``1..N``.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential, watershed

    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 3 or prob.shape[0] != len(CLASSES):
        raise MechanoscopeError(
            f"probabilities must have shape (3, Y, X) for {CLASSES}, got {prob.shape}"
        )
    min_px = float(min_cell_area_um2) / float(pixel_size_um) ** 2
    fg = (prob[1] + prob[2]) > foreground_threshold
    interior = (prob[1] > interior_threshold) & fg
    markers, n = ndi.label(interior)
    if n:
        sizes = np.bincount(markers.ravel(), minlength=n + 1)
        small = sizes < max(1.0, 0.25 * min_px)
        small[0] = False
        markers[small[markers]] = 0
    labels = watershed(1.0 - prob[1], markers, mask=fg)
    # foreground parts that no marker reached (tiny cells that are all boundary)
    rest, n_rest = ndi.label(fg & (labels == 0))
    if n_rest:
        offset = int(labels.max())
        labels = np.where(rest > 0, rest + offset, labels)
    if labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_px
        small[0] = False
        labels[small[labels]] = 0
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32)


