"""Image preparation for the segmentation network: 2-D float images, pixel-size checks, resampling, percentile normalisation, per-pixel training targets."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mechanoscope.errors import (
    AxesError,
    ConfigError,
)
from mechanoscope.io.images import Image, check_image_values

__all__ = ["resample_image", "resample_labels", "normalize_percentile", "segmentation_targets"]


# --------------------------------------------------------------------------- image prep
def _as_2d_float(image: np.ndarray | Image, where: str) -> np.ndarray:
    arr = image.as_2d() if isinstance(image, Image) else np.asarray(image)
    if arr.ndim != 2:
        raise AxesError(
            f"{where}: expected a 2-D (Y, X) image, got shape {arr.shape}; select one "
            "plane/channel first"
        )
    check_image_values(arr, where)
    return arr.astype(np.float32, copy=False)


def _check_pixel_size(pixel_size_um: Any, where: str) -> float:
    try:
        px = float(pixel_size_um)
    except (TypeError, ValueError):
        px = float("nan")
    if not (math.isfinite(px) and px > 0):
        raise ConfigError(
            f"{where}: pixel_size_um must be a positive number of µm, got {pixel_size_um!r}; "
            "pass the image's pixel size (CLI: --pixel-size-um)"
        )
    return px


def _target_shape(shape: tuple[int, int], pixel_size_um: float, target_um: float) -> tuple[int, int]:
    f = pixel_size_um / target_um
    return (max(1, int(round(shape[0] * f))), max(1, int(round(shape[1] * f))))


def resample_image(image: np.ndarray, pixel_size_um: float, target_pixel_size_um: float) -> np.ndarray:
    """Resample a ``(Y, X)`` image from ``pixel_size_um`` to ``target_pixel_size_um``.

    Linear interpolation, with Gaussian anti-aliasing when down-sampling. Returns a
    float32 array of shape ``round(shape * pixel_size_um / target_pixel_size_um)``
    (the input itself, as float32, when the sizes agree within 0.1 %).
    """
    from skimage.transform import resize

    image = np.asarray(image, dtype=np.float32)
    if abs(pixel_size_um / target_pixel_size_um - 1.0) < 1e-3:
        return image
    shape = _target_shape(image.shape, pixel_size_um, target_pixel_size_um)
    down = pixel_size_um < target_pixel_size_um
    return resize(
        image, shape, order=1, mode="reflect", anti_aliasing=down, preserve_range=True
    ).astype(np.float32)


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a label image to ``shape`` (ids kept)."""
    from skimage.transform import resize

    labels = np.asarray(labels)
    if labels.shape == tuple(shape):
        return labels
    out = resize(labels, shape, order=0, mode="edge", anti_aliasing=False, preserve_range=True)
    return np.rint(out).astype(labels.dtype)


def normalize_percentile(
    image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)
) -> tuple[np.ndarray, float, float]:
    """Map the two intensity percentiles of ``image`` to 0 and 1 (no clipping).

    Returns the float32 image and the two percentile values. Falls back to min/max
    when the percentiles coincide.
    """
    lo, hi = (float(v) for v in np.percentile(image, percentiles))
    if hi - lo <= 0:
        lo, hi = float(image.min()), float(image.max())
    if hi - lo <= 0:
        hi = lo + 1.0
    return ((image - lo) / (hi - lo)).astype(np.float32), lo, hi


def segmentation_targets(labels: np.ndarray, boundary_width_px: int = 2) -> np.ndarray:
    """Per-pixel classes from a label image: 0 background, 1 interior, 2 boundary.

    The boundary is the outer ``boundary_width_px`` pixels inside every cell's
    outline, on both sides of every contact between touching cells.

    Parameters
    ----------
    labels
        ``(Y, X)`` integer label image, 0 = background.
    boundary_width_px
        Width of the boundary band in pixels (>= 1).

    Returns
    -------
    np.ndarray
        ``(Y, X)`` uint8 class map.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    fg = labels > 0
    edge = find_boundaries(labels, mode="inner") & fg
    if boundary_width_px > 1:
        edge = ndi.binary_dilation(edge, iterations=boundary_width_px - 1) & fg
    out = fg.astype(np.uint8)
    out[edge] = 2
    return out




def structure_to_noise_ratio(image: np.ndarray, smoothing_px: float = 2.0) -> float:
    """How much more an image varies over a few pixels than its camera noise explains.

    The pixel noise σ is estimated from neighbouring-pixel differences (median absolute
    deviation, robust to edges and cells); white noise smoothed with a Gaussian of
    ``smoothing_px`` keeps a variance of σ² / (4π·smoothing_px²). The ratio of the
    smoothed image's variance to that is ~1 for a field of pure noise (measured 0.99
    for Gaussian, 1.03 for Poisson noise) and grows with any structure: cells,
    illumination (simulated bright field at 300 / 1,000 / 5,000 photons per pixel:
    14 / 38 / 176; real Usiigaci phase contrast 2,700–5,100). ``inf`` when the noise
    estimate is 0 (e.g. a strongly quantised image), so such images are not taken for
    empty.
    """
    from scipy import ndimage as ndi

    a = np.asarray(image, dtype=np.float64)
    d = np.diff(a, axis=1).ravel()
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
    if sigma <= 0:
        return float("inf")
    smooth_var = float(np.var(ndi.gaussian_filter(a, smoothing_px)))
    return smooth_var / (sigma * sigma / (4.0 * math.pi * smoothing_px * smoothing_px))
