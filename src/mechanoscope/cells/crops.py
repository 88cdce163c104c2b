"""Single-cell crops of a fixed physical size, resampled to a fixed number of pixels.

A crop covers ``crop_size_um × crop_size_um`` µm centred on the cell centroid and is
sampled on a ``crop_pixels × crop_pixels`` grid, so its pixel size is
``crop_size_um / crop_pixels`` µm whatever the pixel size of the source image. A
network trained on crops from one microscope therefore sees cells at the same
physical scale when applied to images taken at another pixel size.

Resampling (:func:`scipy.ndimage.map_coordinates`, all cells of a batch in one call):

* intensity: bilinear; when the crop pixel is larger than the image pixel the image
  is first smoothed with a Gaussian of σ = (scale − 1) / 2 image pixels
  (``scale`` = crop pixel / image pixel, as :func:`skimage.transform.resize` does for
  anti-aliasing);
* mask: nearest neighbour on the label image, then ``== cell_id``: 1 inside this
  cell, 0 elsewhere, including inside neighbouring cells;
* outside the image (beyond the outer edge of the border pixels) the intensity is a
  constant ``pad_value`` (by default the image median, i.e. the background level of
  bright-field/phase-contrast images) and the mask is 0. The fraction of each crop
  that lies outside the image is returned by :func:`crop_outside_fraction`.

No intensity normalisation is applied: channel 0 holds raw image values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage as ndi

from mechanoscope.cells._validate import check_same_shape
from mechanoscope.errors import MechanoscopeError

__all__ = ["CropConfig", "crop_cells", "crop_outside_fraction", "crop_grid_px"]

_BATCH_CELLS = 256


class CropConfig(BaseModel):
    """Geometry and channels of single-cell crops."""

    model_config = ConfigDict(extra="forbid")

    crop_size_um: float = Field(
        64.0, gt=0, description="Edge length of the square crop in µm (physical field of view)."
    )
    crop_pixels: int = Field(
        64, ge=2, le=2048, description="Edge length of the crop in pixels after resampling."
    )
    mask_channel: bool = Field(
        True,
        description=(
            "Add channel 1 = the cell's own mask (1 inside the cell, 0 elsewhere, "
            "neighbouring cells included)."
        ),
    )
    pad_value: float | None = Field(
        None,
        description=(
            "Intensity written where a crop extends beyond the image; None = the image's "
            "median intensity (its background level)."
        ),
    )
    anti_aliasing: bool = Field(
        True,
        description="Gaussian-smooth the image before sampling when the crop pixel is larger than the image pixel.",
    )

    @property
    def pixel_size_um_of_crop(self) -> float:
        """Pixel size of the crops in µm (``crop_size_um / crop_pixels``)."""
        return self.crop_size_um / self.crop_pixels

    @property
    def channels(self) -> list[str]:
        """Channel names, in order."""
        return ["intensity", "mask"] if self.mask_channel else ["intensity"]


def crop_grid_px(
    centroids_px: np.ndarray, *, pixel_size_um: float, config: CropConfig
) -> np.ndarray:
    """Sample positions of the crops in image pixel coordinates.

    Parameters
    ----------
    centroids_px
        ``(N, 2)`` centroids ``(y, x)`` in pixels.
    pixel_size_um
        Pixel size of the image in µm.
    config
        Crop geometry.

    Returns
    -------
    numpy.ndarray
        ``(2, N, P, P)`` float64 ``(y, x)`` coordinates, ``P = crop_pixels``; crop pixel
        ``(i, j)`` sits at ``centroid + ((i, j) - (P - 1) / 2) * crop pixel / image pixel``,
        so the centroid falls on the crop centre ``((P - 1) / 2, (P - 1) / 2)``.
    """
    if not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise MechanoscopeError(f"pixel_size_um must be a positive number of µm, got {pixel_size_um}")
    c = np.asarray(centroids_px, dtype=np.float64).reshape(-1, 2)
    p = config.crop_pixels
    step = config.pixel_size_um_of_crop / float(pixel_size_um)
    offs = (np.arange(p, dtype=np.float64) - (p - 1) / 2.0) * step
    yy = c[:, 0, None, None] + offs[None, :, None] + np.zeros((1, 1, p))
    xx = c[:, 1, None, None] + offs[None, None, :] + np.zeros((1, p, 1))
    return np.stack([yy, xx])


def _outside(coords: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    y, x = coords
    return (y < -0.5) | (y > h - 0.5) | (x < -0.5) | (x > w - 0.5)


def _centroids(table: pd.DataFrame) -> np.ndarray:
    return table[["centroid_y_px", "centroid_x_px"]].to_numpy(dtype=np.float64)


def crop_outside_fraction(
    table: pd.DataFrame, image_shape: tuple[int, int], *, pixel_size_um: float, config: CropConfig
) -> np.ndarray:
    """Fraction of each cell's crop that lies outside the image (padded), ``(N,)`` float64."""
    out = np.zeros(len(table))
    cents = _centroids(table)
    for s in range(0, len(table), _BATCH_CELLS):
        coords = crop_grid_px(cents[s : s + _BATCH_CELLS], pixel_size_um=pixel_size_um, config=config)
        out[s : s + _BATCH_CELLS] = _outside(coords, image_shape).mean(axis=(1, 2))
    return out


def crop_cells(
    image: np.ndarray,
    labels: np.ndarray | None,
    table: pd.DataFrame,
    *,
    pixel_size_um: float,
    config: CropConfig | None = None,
    pad_value: float | None = None,
) -> np.ndarray:
    """Cut fixed-physical-size crops around each cell centroid.

    Parameters
    ----------
    image
        ``(H, W)`` intensity image (raw values).
    labels
        ``(H, W)`` label image; needed when ``config.mask_channel`` is true.
    table
        Cell table of this image with ``cell_id``, ``centroid_y_px``, ``centroid_x_px``
        (e.g. from :func:`~mechanoscope.cells.morphology.measure_cells`); one crop per row,
        in row order.
    pixel_size_um
        Pixel size of ``image`` in µm.
    config
        Crop geometry and channels; defaults to :class:`CropConfig()`.
    pad_value
        Intensity outside the image; overrides ``config.pad_value``; if both are None
        the median of ``image`` is used.

    Returns
    -------
    numpy.ndarray
        ``(N, C, P, P)`` float32 crops, ``P = crop_pixels``; channel 0 = intensity,
        channel 1 (if ``mask_channel``) = 1.0 inside the row's own cell, else 0.0.
    """
    cfg = config or CropConfig()
    img = np.asarray(image)
    if img.ndim != 2:
        raise MechanoscopeError(f"crop_cells needs a 2-D (H, W) image, got shape {img.shape}")
    if cfg.mask_channel:
        if labels is None:
            raise MechanoscopeError("crop_cells: mask_channel=True needs the label image")
        labels = np.asarray(labels)
        check_same_shape(img.shape, labels.shape, "image", "labels")
    if pad_value is None:
        pad_value = cfg.pad_value
    if pad_value is None:
        pad_value = float(np.median(img))
    img = img.astype(np.float64, copy=False)
    scale = cfg.pixel_size_um_of_crop / float(pixel_size_um)
    if cfg.anti_aliasing and scale > 1.0:
        img = ndi.gaussian_filter(img, sigma=(scale - 1.0) / 2.0, mode="nearest")
    n = len(table)
    p = cfg.crop_pixels
    out = np.empty((n, len(cfg.channels), p, p), dtype=np.float32)
    cents = _centroids(table)
    ids = table["cell_id"].to_numpy()
    for s in range(0, n, _BATCH_CELLS):
        sl = slice(s, min(s + _BATCH_CELLS, n))
        coords = crop_grid_px(cents[sl], pixel_size_um=pixel_size_um, config=cfg)
        outside = _outside(coords, img.shape)
        vals = ndi.map_coordinates(img, coords, order=1, mode="nearest", prefilter=False)
        vals[outside] = pad_value
        out[sl, 0] = vals
        if cfg.mask_channel:
            near = ndi.map_coordinates(labels, coords, order=0, mode="nearest", prefilter=False)
            mask = (near == ids[sl, None, None]) & ~outside
            out[sl, 1] = mask
    return out
