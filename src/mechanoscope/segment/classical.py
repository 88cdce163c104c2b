"""Classical label-free segmentation of bright-field and phase-contrast images.

Cells in label-free images are phase objects: their interior is textured (organelles,
nucleus, stress fibres, the edge of the lamella) while the substrate around them is
flat. Depending on modality and focus a cell looks brighter *or* darker than the
background and is surrounded by a bright halo (Zernike phase contrast) or a light/dark
rim (defocused bright-field). This pipeline therefore never uses the sign of the
contrast, only its local amount. Every length is given in µm and converted with the
pixel size, so one configuration works at any magnification.

Pipeline
--------
1. Robust normalisation to [0, 1] between two intensity percentiles (clipping
   saturated halos and dust).
2. Foreground map: weighted geometric mean of the local standard deviation of a
   band-passed image (removes uneven illumination) and the smoothed gradient
   magnitude, each divided by its median over the image; log-transformed.
3. Threshold of the map (Otsu, triangle or Li), scaled by ``threshold_factor``.
4. Morphology in µm: closing, hole filling, opening, erosion by
   ``boundary_shrink_um`` (the texture window and the halo spread the raw mask beyond
   the cell edge), removal of small objects.
5. Split touching cells with a marker-controlled watershed of the (smoothed)
   distance transform. Seeds are its maxima at least ``min_separation_um`` apart with
   a dynamic of at least ``h_maxima_um`` (h-maxima); every object keeps one seed.
   With ``split_method="ridges"`` (default) the distance transform is first lowered
   where bright *or* dark border lines (cell borders, junction halos; Hessian line
   detector) are dense, which separates confluent cells that show no concave neck.
6. Objects smaller than ``min_cell_area_um2`` are removed; ids are made consecutive
   in raster order.

Limits: a classical pipeline cannot tell a textured piece of debris or a dense
clump of unlabelled material from a cell, and splits confluent cells only where a
border line is visible. On debris-rich real images raise ``threshold_factor``
(e.g. to 2–2.5); for dense monolayers use the learned network.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from mechanoscope.errors import AxesError, ConfigError, MechanoscopeWarning
from mechanoscope.io.images import check_image_values
from mechanoscope.segment.classical_config import ClassicalSegmentationConfig

__all__ = ["ClassicalSegmentationConfig", "segment_classical", "foreground_map"]


# --------------------------------------------------------------------------------------
# input checks and helpers


def _check_input(image: Any, pixel_size_um: Any) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 2:
        squeezed = np.squeeze(arr)
        if arr.ndim == 3 and arr.shape[-1] in (3, 4):
            hint = "; it looks like a colour (RGB) image: convert it to grey first"
        elif squeezed.ndim == 2:
            hint = "; its extra axes have length 1: pass image.squeeze()"
        else:
            hint = (
                "; select one plane first, e.g. Image.plane(T=0) or Image.as_2d() "
                "(CLI: --frame/--channel)"
            )
        raise AxesError(
            f"segment_classical needs a single 2-D (Y, X) image, got an array of shape "
            f"{arr.shape} with {arr.ndim} dimensions{hint}"
        )
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ConfigError(
            f"segment_classical needs a numeric grey image, got dtype {arr.dtype}"
        )
    if isinstance(pixel_size_um, bool) or not isinstance(
        pixel_size_um, (int, float, np.integer, np.floating)
    ):
        raise ConfigError(
            f"pixel_size_um must be a number of µm per pixel, got {pixel_size_um!r}"
        )
    if not (math.isfinite(float(pixel_size_um)) and float(pixel_size_um) > 0):
        raise ConfigError(
            f"pixel_size_um must be a positive number of µm per pixel (e.g. 0.65), got "
            f"{pixel_size_um}; take it from the image metadata or your microscope's "
            "calibration"
        )
    check_image_values(arr, "segment_classical input")
    return arr


def _disk(radius_px: float) -> np.ndarray:
    r = int(math.floor(radius_px))
    if r < 1:
        return np.ones((1, 1), dtype=bool)
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= radius_px * radius_px + 1e-9


def _normalise(image: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    img = image.astype(np.float32, copy=False)
    lo, hi = np.percentile(img, percentiles)
    if hi <= lo:  # nearly constant image with a few outliers: use the full range
        lo, hi = float(img.min()), float(img.max())
    out = (img - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _foreground_map(
    img01: np.ndarray, px: float, cfg: ClassicalSegmentationConfig, r: dict[str, float]
) -> np.ndarray:
    s_noise = r["smoothing_um"] / px
    s_win = r["texture_window_um"] / px
    smooth = ndi.gaussian_filter(img01, s_noise)
    # band pass: drops uneven illumination and the mean level, keeps cell texture
    hp = smooth - ndi.gaussian_filter(smooth, s_win)
    local_sd = np.sqrt(np.maximum(ndi.gaussian_filter(hp * hp, s_win), 0.0))
    grad = ndi.gaussian_filter(ndi.gaussian_gradient_magnitude(img01, s_noise), s_win)
    eps = np.float32(1e-6)
    w = np.float32(cfg.gradient_weight)
    fmap = (1 - w) * np.log(local_sd / (np.median(local_sd) + eps) + eps)
    fmap += w * np.log(grad / (np.median(grad) + eps) + eps)
    return fmap.astype(np.float32, copy=False)


def _ridge_map(img01: np.ndarray, scale_px: float) -> np.ndarray:
    """Scale-normalised largest-magnitude Hessian eigenvalue: bright and dark lines."""
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    h = hessian_matrix(img01, sigma=scale_px, order="rc", use_gaussian_derivatives=True)
    ev = hessian_matrix_eigvals(h)
    return (np.max(np.abs(ev), axis=0) * scale_px**2).astype(np.float32)


def _threshold(values: np.ndarray, method: str) -> float:
    from skimage import filters

    if method == "otsu":
        return float(filters.threshold_otsu(values))
    if method == "triangle":
        return float(filters.threshold_triangle(values))
    return float(filters.threshold_li(values))


def _class_separation(values: np.ndarray, thr: float) -> float:
    """(mean above − mean below) / pooled standard deviation of the two classes."""
    above = values > thr
    n_above = int(np.count_nonzero(above))
    if n_above == 0 or n_above == values.size:
        return 0.0
    a = values[above].astype(np.float64)
    b = values[~above].astype(np.float64)
    pooled = math.sqrt(0.5 * (a.var() + b.var()))
    return float((a.mean() - b.mean()) / pooled) if pooled > 0 else math.inf


def _remove_small(labels: np.ndarray, min_px: float) -> np.ndarray:
    if labels.max() == 0:
        return labels
    small = np.bincount(labels.ravel()) < min_px
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels).astype(labels.dtype, copy=False)
    return labels


def _fill_holes(fg: np.ndarray, max_hole_px: float) -> np.ndarray:
    hole_lab, _ = ndi.label(~fg)
    sizes = np.bincount(hole_lab.ravel())
    fillable = sizes <= max_hole_px
    fillable[0] = False
    # holes touching the image border are background, never filled
    border = np.concatenate([hole_lab[0], hole_lab[-1], hole_lab[:, 0], hole_lab[:, -1]])
    fillable[border] = False
    return fg | fillable[hole_lab]


def _raster_order(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids ordered by the raster position of each object's first pixel."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    keep = ids > 0
    ids, first = ids[keep], first[keep]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[ids[np.argsort(first, kind="stable")]] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


# --------------------------------------------------------------------------------------
# public API


def foreground_map(
    image: np.ndarray,
    *,
    pixel_size_um: float,
    config: ClassicalSegmentationConfig | None = None,
) -> np.ndarray:
    """Texture/gradient foreground map whose high values mark cells.

    Parameters
    ----------
    image
        ``(Y, X)`` grey image, any numeric dtype.
    pixel_size_um
        Edge length of one pixel in µm (> 0).
    config
        Segmentation parameters; defaults if ``None``.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` float32: log of the texture/gradient contrast relative to its
        median over the image (unitless; about 0 on flat background, larger in cells).
        :func:`segment_classical` thresholds this map.
    """
    cfg = config or ClassicalSegmentationConfig()
    arr = _check_input(image, pixel_size_um)
    return _foreground_map(
        _normalise(arr, cfg.normalize_percentiles),
        float(pixel_size_um),
        cfg,
        cfg.resolved(float(pixel_size_um)),
    )


def segment_classical(
    image: np.ndarray,
    *,
    pixel_size_um: float,
    config: ClassicalSegmentationConfig | None = None,
) -> np.ndarray:
    """Segment cells in a label-free (bright-field or phase-contrast) image.

    Parameters
    ----------
    image
        ``(Y, X)`` grey image, any numeric dtype. Cells may appear brighter or darker
        than the background, with or without a halo; only the amount of local
        contrast is used.
    pixel_size_um
        Edge length of one pixel in µm (> 0). Every length of ``config`` is
        converted to pixels with it.
    config
        Segmentation parameters; :class:`ClassicalSegmentationConfig` defaults if
        ``None``. Set at least ``cell_diameter_um`` for your cells.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` int32 label image: 0 = background, ``1..N`` one id per cell,
        consecutive and ordered by the raster position of each cell's first pixel.
        Deterministic: the same input gives the same labels.

    Raises
    ------
    AxesError
        ``image`` is not 2-D (a stack, a time-lapse or a colour image).
    ImageReadError
        ``image`` is empty, constant or holds NaN/inf values.
    ConfigError
        ``pixel_size_um`` is not a positive number, or ``image`` is not numeric.

    Warns
    -----
    MechanoscopeWarning
        The image shows no distinct textured foreground (see
        ``min_foreground_separation``); an all-zero label image is returned.

    Examples
    --------
    >>> from mechanoscope.io import read_image
    >>> img = read_image("field.tif")                       # doctest: +SKIP
    >>> cfg = ClassicalSegmentationConfig(cell_diameter_um=40)
    >>> labels = segment_classical(img.as_2d(), pixel_size_um=img.pixel_size_um,
    ...                            config=cfg)              # doctest: +SKIP
    """
    cfg = config or ClassicalSegmentationConfig()
    arr = _check_input(image, pixel_size_um)
    px = float(pixel_size_um)
    r = cfg.resolved(px)
    px_area = px * px
    img01 = _normalise(arr, cfg.normalize_percentiles)

    # 2-3: foreground map and threshold
    fmap = _foreground_map(img01, px, cfg, r)
    thr = _threshold(fmap, cfg.threshold_method)
    separation = _class_separation(fmap, thr)
    if separation < cfg.min_foreground_separation:
        warnings.warn(
            f"segment_classical: no cells found: the texture map shows no distinct "
            f"foreground (class separation {separation:.2f} < "
            f"min_foreground_separation={cfg.min_foreground_separation}); the image "
            "looks like flat background. Lower min_foreground_separation if it does "
            "hold cells.",
            MechanoscopeWarning,
            stacklevel=2,
        )
        return np.zeros(arr.shape, dtype=np.int32)
    # 3-4: threshold and morphology in µm
    min_px = r["min_cell_area_um2"] / px_area
    comp = _components(fmap, thr, px, cfg, r)
    if comp.max() == 0:
        return np.zeros(arr.shape, dtype=np.int32)

    # 5: split touching cells
    labels = _split(img01, comp, px, cfg, r) if cfg.split_touching else comp

    # 6: final size filter, consecutive ids in raster order
    labels = _remove_small(labels.astype(np.int32, copy=False), min_px)
    return _raster_order(labels).astype(np.int32, copy=False)


def _components(fmap: np.ndarray, thr: float, px: float, cfg: ClassicalSegmentationConfig, r: dict[str, float]) -> np.ndarray:
    """Steps 3-4: threshold the foreground map, morphology in µm, connected components above the minimum area."""
    fg = fmap > thr + math.log(cfg.threshold_factor)
    rc = r["closing_radius_um"] / px
    if rc >= 1:
        pad = int(rc) + 1  # pad so that closing does not glue cells to the border
        fg = ndi.binary_closing(np.pad(fg, pad), _disk(rc))[pad:-pad, pad:-pad]
    max_hole_px = r["max_hole_area_um2"] / (px * px)
    if max_hole_px > 0:
        fg = _fill_holes(fg, max_hole_px)
    ro = r["opening_radius_um"] / px
    if ro >= 1:
        fg = ndi.binary_opening(fg, _disk(ro))
    rs = r["boundary_shrink_um"] / px
    if rs > 0:  # exact erosion by a disk of radius rs (image border counts as inside)
        fg = ndi.distance_transform_edt(np.pad(fg, 1, mode="edge"))[1:-1, 1:-1] > rs
    comp, _ = ndi.label(fg)
    return _remove_small(comp, r["min_cell_area_um2"] / (px * px))


def _split(
    img01: np.ndarray,
    comp: np.ndarray,
    px: float,
    cfg: ClassicalSegmentationConfig,
    r: dict[str, float],
    ridge_threshold: float | None = None,
) -> np.ndarray:
    """Marker-controlled watershed of the connected components ``comp``.

    ``ridge_threshold``: the border-line threshold (Otsu of the ridge map over the
    foreground × ``ridge_threshold_factor``); default: computed from ``comp`` itself
    (blockwise segmentation passes the image-wide value).
    """
    from skimage import morphology, segmentation
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu

    mask = comp > 0
    smooth_px = max(1.0, 0.05 * cfg.cell_diameter_um / px)
    raw_edt = ndi.distance_transform_edt(mask).astype(np.float32)
    edt = ndi.gaussian_filter(raw_edt, smooth_px)
    edt[~mask] = 0
    if cfg.split_method == "ridges":
        scale = r["ridge_scale_um"] / px
        ridge = _ridge_map(img01, scale)
        rthr = float(threshold_otsu(ridge[mask])) * cfg.ridge_threshold_factor if ridge_threshold is None else ridge_threshold
        # fraction of border-line pixels around each pixel, subtracted (times half the
        # minimum separation) from the distance map: a long line through a cluster
        # cuts a valley, fine texture inside a cell lowers the map about evenly and
        # keeps one maximum per cell
        line_frac = ndi.gaussian_filter((ridge > rthr).astype(np.float32), 2.0 * scale)
        depth_px = 0.5 * r["min_separation_um"] / px
        dist = ndi.gaussian_filter(np.maximum(raw_edt - depth_px * line_frac, 0), smooth_px)
        dist[~mask] = 0
    else:
        dist = edt

    min_sep_px = max(1, int(round(r["min_separation_um"] / px)))
    peaks = peak_local_max(dist, min_distance=min_sep_px, labels=comp, exclude_border=False)
    h_px = r["h_maxima_um"] / px
    if h_px > 0 and len(peaks):
        # dynamic of each maximum: dist minus its reconstruction by dilation from
        # dist - h; maxima with a dynamic >= h survive the h-maxima transform
        dyn = dist - morphology.reconstruction(dist - np.float32(h_px), dist)
        peaks = peaks[dyn[peaks[:, 0], peaks[:, 1]] >= 0.999 * h_px]
    markers = np.zeros(comp.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # every component keeps at least one seed: its distance maximum
    has_seed = np.zeros(int(comp.max()) + 1, dtype=bool)
    has_seed[comp[peaks[:, 0], peaks[:, 1]]] = True
    present = np.zeros_like(has_seed)
    present[comp.ravel()] = True
    missing = np.flatnonzero(present & ~has_seed)
    missing = missing[missing > 0]
    if len(missing):
        pos = np.asarray(ndi.maximum_position(dist, comp, missing), dtype=np.intp).reshape(-1, 2)
        markers[pos[:, 0], pos[:, 1]] = np.arange(
            len(peaks) + 1, len(peaks) + 1 + len(missing), dtype=np.int32
        )
    # flood the plain distance transform from the seeds: watershed lines run along
    # the necks between seeds and do not follow the texture inside the cells
    return segmentation.watershed(-edt, markers, mask=mask)
