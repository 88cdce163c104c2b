"""Blockwise classical segmentation of large images, labels consistent across block borders.

A large field (e.g. 20,000 × 20,000 px, a NumPy, memory-mapped, Zarr or Dask array) is
cut into blocks of ``block_px`` with ``overlap_px`` of context on every side; each block
window is segmented on its own (in parallel with Dask when it is installed) and the
results are stitched so that the label image equals what
:func:`~mechanoscope.segment.classical.segment_classical` gives for the whole image.

Two things make a blockwise result differ from a whole-image one, and both are handled:

* **Image-wide statistics.** The classical pipeline normalises intensities between two
  percentiles of the image, divides its texture and gradient maps by their medians over
  the image, thresholds the foreground map with Otsu over the image and the border-line
  map with Otsu over the foreground. A block has other values. Here they are computed
  first, once for the whole image (passes over the blocks' cores, every pixel counted
  once), and every block uses them. ``stats_stride`` > 1 estimates them from every
  ``stats_stride``-th row and column instead (for images whose maps do not fit in
  memory; the labels then differ slightly from a whole-image run, which cannot be run
  on such images anyway).
* **Cells cut by a block border.** Every operation of the pipeline looks at most a
  bounded distance around a pixel (Gaussian filters, morphology, and the watershed,
  which stays inside one connected foreground object). A cell is taken from the block
  whose core holds its first pixel (raster order); that block's window reaches
  ``overlap_px`` further, so the cell and everything its pixels depend on lies inside
  the window when ``overlap_px`` ≥ the cell's extent + the operations' reach
  (:func:`default_overlap_px`). Cells touching the window's inner edge are left to
  the block that owns them. A connected clump larger than the overlap (a confluent
  sheet) is reported with a :class:`~mechanoscope.errors.MechanoscopeWarning`: raise
  ``overlap_px``.

Ids are renumbered at the end to be consecutive in raster order of each cell's first
pixel, as the whole-image pipeline numbers them.

The per-block pipeline re-states the steps of ``segment_classical`` with the
image-wide statistics passed in (the whole-image function computes them itself);
``tests/test_blockwise.py`` checks that both give identical labels, so a change to one
that is not made to the other fails there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from mechanoscope.errors import ConfigError, MechanoscopeWarning
from mechanoscope.segment import classical as _cl
from mechanoscope.segment.classical_config import ClassicalSegmentationConfig

__all__ = ["ImageStatistics", "default_overlap_px", "image_statistics", "segment_classical_blockwise"]


@dataclass(frozen=True)
class ImageStatistics:
    """The image-wide values the classical pipeline derives from the whole image.

    Attributes
    ----------
    lo, hi
        Intensities at ``normalize_percentiles`` (normalisation to [0, 1]).
    median_local_sd, median_gradient
        Medians of the texture and gradient maps (their unit of contrast).
    threshold, separation
        Otsu (or triangle/Li) threshold of the foreground map, and the class separation
        compared with ``min_foreground_separation``.
    ridge_threshold
        Otsu threshold of the border-line map over the foreground, times
        ``ridge_threshold_factor`` (``nan`` when not needed).
    """

    lo: float
    hi: float
    median_local_sd: float
    median_gradient: float
    threshold: float
    separation: float
    ridge_threshold: float


# ------------------------------------------------------------------------------ blocks
def default_overlap_px(pixel_size_um: float, config: ClassicalSegmentationConfig | None = None) -> int:
    """Context on each side of a block: 1.5 cell diameters + the reach of the filters (px)."""
    cfg = config or ClassicalSegmentationConfig()
    px = float(pixel_size_um)
    r = cfg.resolved(px)
    reach = (4 * (r["smoothing_um"] + 2 * r["texture_window_um"] + 3 * r["ridge_scale_um"])
             + 2 * (r["closing_radius_um"] + r["opening_radius_um"]) + r["boundary_shrink_um"])
    return int(math.ceil((1.5 * cfg.cell_diameter_um + reach) / px)) + 2


def _blocks(shape: tuple[int, int], block_px: int, overlap_px: int) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """(core, window) slices of every block, row-major."""
    ny, nx = shape
    for y0 in range(0, ny, block_px):
        for x0 in range(0, nx, block_px):
            core = (slice(y0, min(y0 + block_px, ny)), slice(x0, min(x0 + block_px, nx)))
            win = (slice(max(y0 - overlap_px, 0), min(y0 + block_px + overlap_px, ny)),
                   slice(max(x0 - overlap_px, 0), min(x0 + block_px + overlap_px, nx)))
            yield core, win


def _core_in_window(core: tuple[slice, slice], win: tuple[slice, slice]) -> tuple[slice, slice]:
    return tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(core, win))  # type: ignore[return-value]


def _map_blocks(fn: Callable, jobs: list, scheduler: str | None) -> list:
    """Run ``fn(*job)`` for every job; with Dask (threads) when available and asked for."""
    if scheduler in (None, "synchronous"):
        return [fn(*job) for job in jobs]
    import dask

    return list(dask.compute(*[dask.delayed(fn)(*job) for job in jobs], scheduler=scheduler))


# ------------------------------------------------------------------------------ the steps
def _normalise(win: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = (win.astype(np.float32, copy=False) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _texture_maps(img01: np.ndarray, px: float, r: dict) -> tuple[np.ndarray, np.ndarray]:
    """Local standard deviation of the band-passed image and smoothed gradient (as classical)."""
    s_noise = r["smoothing_um"] / px
    s_win = r["texture_window_um"] / px
    smooth = ndi.gaussian_filter(img01, s_noise)
    hp = smooth - ndi.gaussian_filter(smooth, s_win)
    local_sd = np.sqrt(np.maximum(ndi.gaussian_filter(hp * hp, s_win), 0.0))
    grad = ndi.gaussian_filter(ndi.gaussian_gradient_magnitude(img01, s_noise), s_win)
    return local_sd, grad


def _fmap(local_sd: np.ndarray, grad: np.ndarray, st_sd: float, st_grad: float, cfg: ClassicalSegmentationConfig) -> np.ndarray:
    eps = np.float32(1e-6)
    w = np.float32(cfg.gradient_weight)
    fmap = (1 - w) * np.log(local_sd / (st_sd + eps) + eps)
    fmap += w * np.log(grad / (st_grad + eps) + eps)
    return fmap.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------ statistics
def image_statistics(image: Any, *, pixel_size_um: float, config: ClassicalSegmentationConfig | None = None, block_px: int = 2048,
                     overlap_px: int | None = None, stats_stride: int = 1, scheduler: str | None = None) -> ImageStatistics:
    """The image-wide statistics of the classical pipeline, computed block by block.

    With ``stats_stride=1`` every pixel counts once (the values equal the whole-image
    pipeline's); a larger stride samples every ``stats_stride``-th row and column.
    """
    from skimage.filters import threshold_otsu

    cfg = config or ClassicalSegmentationConfig()
    px = float(pixel_size_um)
    r = cfg.resolved(px)
    shape = tuple(image.shape)
    ov = default_overlap_px(px, cfg) if overlap_px is None else int(overlap_px)
    step = max(1, int(stats_stride))
    sample = np.asarray(image[::step, ::step]).astype(np.float32, copy=False)
    lo, hi = np.percentile(sample, cfg.normalize_percentiles)
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    jobs = list(_blocks(shape, block_px, ov))

    def core_values(core, win, what):
        img01 = _normalise(np.asarray(image[win]), lo, hi)
        local_sd, grad = _texture_maps(img01, px, r)
        cy, cx = _core_in_window(core, win)
        # sample the core on the image-wide grid of the stride
        oy, ox = (-core[0].start) % step, (-core[1].start) % step
        sl = (slice(cy.start + oy, cy.stop, step), slice(cx.start + ox, cx.stop, step))
        if what == "maps":
            return local_sd[sl].ravel(), grad[sl].ravel()
        fmap = _fmap(local_sd, grad, med_sd, med_grad, cfg)
        if what == "fmap":
            return fmap[sl].ravel()
        comp = _cl._components(fmap, thr, px, cfg, r)
        ridge = _cl._ridge_map(img01, r["ridge_scale_um"] / px)
        return ridge[sl][comp[sl] > 0].ravel()

    maps = _map_blocks(core_values, [(c, w, "maps") for c, w in jobs], scheduler)
    med_sd = np.median(np.concatenate([m[0] for m in maps]))
    med_grad = np.median(np.concatenate([m[1] for m in maps]))
    del maps
    fvals = np.concatenate(_map_blocks(core_values, [(c, w, "fmap") for c, w in jobs], scheduler))
    thr = _cl._threshold(fvals, cfg.threshold_method)
    separation = _cl._class_separation(fvals, thr)
    del fvals
    rthr = float("nan")
    if cfg.split_touching and cfg.split_method == "ridges" and separation >= cfg.min_foreground_separation:
        rvals = np.concatenate(_map_blocks(core_values, [(c, w, "ridge") for c, w in jobs], scheduler))
        if len(rvals):
            rthr = float(threshold_otsu(rvals)) * cfg.ridge_threshold_factor
    return ImageStatistics(float(lo), float(hi), float(med_sd), float(med_grad), float(thr), float(separation), rthr)


# ------------------------------------------------------------------------------ the pipeline
def segment_classical_blockwise(
    image: Any,
    *,
    pixel_size_um: float,
    config: ClassicalSegmentationConfig | None = None,
    block_px: int = 2048,
    overlap_px: int | None = None,
    stats_stride: int = 1,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Segment a large ``(Y, X)`` image block by block; equals ``segment_classical`` on it.

    Parameters
    ----------
    image
        ``(Y, X)`` grey image: NumPy, memory-mapped, Zarr or Dask array (anything that
        slices into NumPy). Only one block window is read at a time per worker.
    pixel_size_um
        Edge length of one pixel in µm (> 0).
    config
        Classical segmentation parameters (defaults if ``None``).
    block_px
        Edge of a block's core in pixels (≥ 64).
    overlap_px
        Context read around every core; default :func:`default_overlap_px`. It must
        exceed the largest cell (clump) plus the reach of the filters.
    stats_stride
        1: image-wide statistics from every pixel (exact); k > 1: from every k-th row
        and column (see the module docstring).
    scheduler
        ``None``/``"synchronous"``: one block after another; ``"threads"`` (or any Dask
        scheduler name, or ``"distributed"`` with a running client): blocks in
        parallel through ``dask.delayed``.
    progress
        Called as ``progress(blocks_done, n_blocks)`` during the labelling pass
        (sequential runs only).

    Returns
    -------
    np.ndarray
        ``(Y, X)`` int32 labels, 0 = background, ids consecutive in raster order.

    Warns
    -----
    MechanoscopeWarning
        No distinct foreground (all-zero labels, as ``segment_classical``), or a cell
        reached the inner edge of its block's window (raise ``overlap_px``).
    """
    cfg = config or ClassicalSegmentationConfig()
    shape = tuple(image.shape)
    if len(shape) != 2:
        raise ConfigError(f"blockwise segmentation needs a single 2-D (Y, X) image, got shape {shape}; select one plane first")
    _cl._check_input(np.asarray(image[:2, :2]), pixel_size_um)  # dtype and pixel size
    if int(block_px) < 64:
        raise ConfigError(f"block_px must be at least 64 pixels, got {block_px}")
    px = float(pixel_size_um)
    r = cfg.resolved(px)
    ov = default_overlap_px(px, cfg) if overlap_px is None else int(overlap_px)
    if ov < 0:
        raise ConfigError(f"overlap_px must be ≥ 0, got {overlap_px}")
    st = image_statistics(image, pixel_size_um=px, config=cfg, block_px=block_px, overlap_px=ov, stats_stride=stats_stride, scheduler=scheduler)
    out = np.zeros(shape, dtype=np.int32)
    if st.separation < cfg.min_foreground_separation:
        warnings.warn(f"segment_classical_blockwise: no cells found: the texture map shows no distinct foreground (class separation {st.separation:.2f} < "
                      f"min_foreground_separation={cfg.min_foreground_separation})", MechanoscopeWarning, stacklevel=2)
        return out
    min_px = r["min_cell_area_um2"] / (px * px)

    def label_block(core, win):
        img01 = _normalise(np.asarray(image[win]), st.lo, st.hi)
        local_sd, grad = _texture_maps(img01, px, r)
        comp = _cl._components(_fmap(local_sd, grad, st.median_local_sd, st.median_gradient, cfg), st.threshold, px, cfg, r)
        if comp.max() == 0:
            return core, win, None, 0
        labels = _cl._split(img01, comp, px, cfg, r, ridge_threshold=st.ridge_threshold) if cfg.split_touching else comp
        labels = _cl._remove_small(labels.astype(np.int32, copy=False), min_px)
        # keep the cells whose first pixel (raster order) lies in this block's core
        ids, first = np.unique(labels.ravel(), return_index=True)
        keep_ids = ids > 0
        ids, first = ids[keep_ids], first[keep_ids]
        fy, fx = np.unravel_index(first, labels.shape)
        cy, cx = _core_in_window(core, win)
        own = (fy >= cy.start) & (fy < cy.stop) & (fx >= cx.start) & (fx < cx.stop)
        lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
        lut[ids[own]] = np.arange(1, int(own.sum()) + 1, dtype=np.int32)
        kept = lut[labels]
        # a kept cell touching an inner edge of the window may be cut off: count them
        inner = np.zeros(labels.shape, dtype=bool)
        if win[0].start > 0:
            inner[0] = True
        if win[0].stop < shape[0]:
            inner[-1] = True
        if win[1].start > 0:
            inner[:, 0] = True
        if win[1].stop < shape[1]:
            inner[:, -1] = True
        cut = int(np.count_nonzero(np.unique(kept[inner]) > 0))
        return core, win, kept, cut

    jobs = list(_blocks(shape, block_px, ov))
    if scheduler in (None, "synchronous"):
        results = []
        for i, job in enumerate(jobs):
            results.append(label_block(*job))
            if progress:
                progress(i + 1, len(jobs))
    else:
        results = _map_blocks(label_block, jobs, scheduler)
    next_id, n_cut = 0, 0
    for core, win, kept, cut in results:
        if kept is None:
            continue
        n_cut += cut
        region = out[win]
        m = kept > 0
        region[m] = kept[m] + next_id  # a cell lies in one block only; later blocks never overwrite it
        next_id += int(kept.max())
    if n_cut:
        warnings.warn(f"segment_classical_blockwise: {n_cut} cell(s) or clump(s) reach the edge of their block's window (overlap_px={ov}); "
                      "they may be cut — raise overlap_px above the largest clump", MechanoscopeWarning, stacklevel=2)
    return _cl._raster_order(out).astype(np.int32, copy=False)
