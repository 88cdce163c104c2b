"""Image-level applicability domain: evidence that resampling to the model's pixel size hides.

Crops are resampled to the model's pixel size before the network sees them, so a
change of microscope pixel size, and much of a change of noise or focus, is invisible
in crop space. This module judges each **image** on two kinds of evidence measured on
the native image, before resampling:

* **pixel size**: the image's ``pixel_size_um`` against the range of the training
  images' pixel sizes; an image whose pixel size lies outside
  ``[min / factor, max × factor]`` (``pixel_size_factor``, default 1.1) is out of domain;
* **native image statistics** (:data:`IMAGE_STAT_NAMES`), one value per image from
  the cell table that ``extract`` measures on the native image
  (:func:`mechanoscope.cells.measure_cells`: intensity and texture columns,
  ``crop_pad_value`` = the image median, ``area_um2``) and from each cell's local
  background (median of its raw crop's border, a level that resampling keeps):

  ``noise_rel``            log of the median over cells of √(neighbour contrast / 2) / background
                           (pixel-to-pixel noise relative to the background, native pixels)
  ``background_noise_rel`` log of the median over cells of the background noise of the
                           crop relative to its background (``crop_statistics``' first
                           column × contrast scale). Measured on the resampled crop, but
                           a median over all cells of the image: at a fixed pixel size
                           (checked above) it follows the camera noise (dim light)
  ``sharpness_rel``        log of the median Sobel gradient (per µm) / background (focus)
  ``contrast_rel``         log of the median intensity SD inside a cell / background
  ``intensity_p05_rel``    5th percentile over cells of the darkest pixel / background
  ``intensity_p95_rel``    95th percentile over cells of the brightest pixel / background
  ``illumination_unevenness``  (90th − 10th percentile) / median of the cells' local
                           background levels (uneven illumination across the field)
  ``log_cell_area_um2``    log of the median cell area in µm²

Each statistic is turned into a robust z-score against the training experiment's
images (median and 1.4826 × MAD over them) and an image's score is its largest
|z|. That score is calibrated by **leave-one-image-out** over every image of the
training experiment (these statistics do not involve the network, so images it learnt
from are fair evidence):
each image is scored against the others, and a new image's **conformal p-value** is
(1 + #{leave-one-out scores ≥ its score}) / (n + 1), which is uniform (super-uniform
with ties) for an image acquired like the reference images, so that a test at level
α flags such an image with probability at most α whatever the distribution of the
statistics. The smallest p-value n reference images can give is 1 / (n + 1): with
fewer than 1/α − 1 images this criterion cannot reach level α and ``domain.json``
says so (``level_reachable``). A pixel size outside the allowed range is not a
random event: it gives p = 0. :func:`mechanoscope.learn.domain.domain_columns`
combines this p-value with the crop-level criterion of each model (Bonferroni/Holm).

Every flagged image gets a reason: the pixel-size ratio and/or the statistics whose
|z| passed the level-α threshold, with the image's value and the training range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["IMAGE_STAT_NAMES", "ImageDomainReference", "image_statistics", "fit_image_reference", "conformal_rank_threshold", "conformal_p_values"]

IMAGE_STAT_NAMES = (
    "noise_rel",
    "background_noise_rel",
    "sharpness_rel",
    "contrast_rel",
    "intensity_p05_rel",
    "intensity_p95_rel",
    "illumination_unevenness",
    "log_cell_area_um2",
)
_PLAIN = {
    "noise_rel": "pixel noise",
    "background_noise_rel": "background noise",
    "sharpness_rel": "sharpness (focus)",
    "contrast_rel": "cell contrast",
    "intensity_p05_rel": "darkest intensities",
    "intensity_p95_rel": "brightest intensities",
    "illumination_unevenness": "illumination unevenness",
    "log_cell_area_um2": "typical cell area",
}


def _log(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, np.log(np.where(v > 0, v, 1.0)), np.nan)


def image_statistics(table: pd.DataFrame, local_background: np.ndarray | None = None, background_noise: np.ndarray | None = None) -> pd.DataFrame:
    """Native-image statistics per image (module docstring), indexed by ``image_id``.

    Parameters
    ----------
    table : the cell table (one row per cell) as ``extract`` writes it; columns that are
        missing make the statistics that need them NaN (they are then not judged).
    local_background : (N,) optional
        Each cell's local background level (median of its raw crop's border,
        :func:`mechanoscope.learn.data.crop_background`), row-aligned with ``table``;
        needed for ``illumination_unevenness`` and used as the background where the
        table has no ``crop_pad_value``.
    background_noise : (N,) optional
        Each crop's background noise relative to its background level (for
        ``background_noise_rel``).

    Returns
    -------
    DataFrame with columns ``pixel_size_um``, ``n_cells`` and :data:`IMAGE_STAT_NAMES`.
    """
    n = len(table)
    col = lambda c: table[c].to_numpy(dtype=float) if c in table.columns else np.full(n, np.nan)  # noqa: E731
    opt = lambda v: np.full(n, np.nan) if v is None else np.asarray(v, dtype=float)  # noqa: E731
    lb = opt(local_background)
    bg = col("crop_pad_value")
    bg = np.where(np.isfinite(bg) & (bg > 0), bg, lb)
    ids = table["image_id"].astype(str).to_numpy() if "image_id" in table.columns else np.zeros(n, dtype=str)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = {
            "pixel_size_um": col("pixel_size_um"),
            "noise": np.sqrt(np.maximum(col("texture_neighbour_contrast"), 0) / 2) / bg,
            "bgnoise": opt(background_noise),
            "sharp": col("texture_gradient_mean_per_um") / bg,
            "contrast": col("intensity_std") / bg,
            "lo": col("intensity_min") / bg,
            "hi": col("intensity_max") / bg,
            "local_bg": lb,
            "area": col("area_um2"),
        }
    # per image (sorted by image_id) with NumPy: NaN-skipping median and linear quantiles as pandas' groupby gives them,
    # without its fixed cost (~15 ms per call; this runs once per field and model)
    names, inv = np.unique(ids, return_inverse=True)
    grouped = _Groups(inv.reshape(-1), len(names))
    med = {c: grouped.median(v) for c, v in per.items()}
    out = {"n_cells": np.bincount(grouped.inv, minlength=grouped.n).astype(int), "pixel_size_um": med["pixel_size_um"]}
    for name, c in (("noise_rel", "noise"), ("background_noise_rel", "bgnoise"), ("sharpness_rel", "sharp"), ("contrast_rel", "contrast"), ("log_cell_area_um2", "area")):
        out[name] = _log(med[c])
    out["intensity_p05_rel"] = grouped.quantile(per["lo"], 0.05)
    out["intensity_p95_rel"] = grouped.quantile(per["hi"], 0.95)
    counts = grouped.count(per["local_bg"])
    with np.errstate(divide="ignore", invalid="ignore"):
        unev = (grouped.quantile(lb, 0.9) - grouped.quantile(lb, 0.1)) / med["local_bg"]
    out["illumination_unevenness"] = np.where((counts >= 3) & (med["local_bg"] > 0), unev, np.nan)
    frame = pd.DataFrame(out, index=pd.Index(names, name="image_id"))
    return frame[["n_cells", "pixel_size_um", *IMAGE_STAT_NAMES]]


class _Groups:
    """NaN-skipping per-group statistics of cell values: ``inv`` (N,) is each cell's group in ``0 … n − 1``.

    :meth:`median` and :meth:`quantile` equal pandas' ``groupby(...).median()`` /
    ``.quantile(q)`` (linear interpolation; a group without a finite value gives NaN).
    """

    def __init__(self, inv: np.ndarray, n: int) -> None:
        self.inv, self.n = np.asarray(inv, dtype=np.intp), int(n)
        self.start = np.searchsorted(np.sort(self.inv), np.arange(self.n))

    def _sorted(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(v, dtype=float)
        order = np.lexsort((v, self.inv))  # by group, then value; NaN last within a group
        return v[order], self.count(v)

    def count(self, v: np.ndarray) -> np.ndarray:
        """Non-NaN values per group."""
        return np.bincount(self.inv[~np.isnan(np.asarray(v, dtype=float))], minlength=self.n)

    def median(self, v: np.ndarray) -> np.ndarray:
        sv, k = self._sorted(v)
        if not len(sv):
            return np.full(self.n, np.nan)
        lo = sv[np.minimum(self.start + np.maximum(k - 1, 0) // 2, len(sv) - 1)]
        hi = sv[np.minimum(self.start + k // 2, len(sv) - 1)]
        return np.where(k > 0, np.where(k % 2 == 1, lo, (lo + hi) / 2), np.nan)

    def quantile(self, v: np.ndarray, q: float) -> np.ndarray:
        sv, k = self._sorted(v)
        if not len(sv):
            return np.full(self.n, np.nan)
        h = q * np.maximum(k - 1, 0)
        i = np.floor(h).astype(np.intp)
        frac = h - i
        a = sv[np.minimum(self.start + i, len(sv) - 1)]
        b = sv[np.minimum(self.start + np.minimum(i + 1, np.maximum(k - 1, 0)), len(sv) - 1)]
        with np.errstate(invalid="ignore"):
            val = np.where(frac > 0, a + (b - a) * frac, a)
        return np.where(k > 0, val, np.nan)


def conformal_rank_threshold(scores: np.ndarray, alpha: float) -> tuple[float, bool]:
    """Split-conformal threshold: the ⌈(n + 1)(1 − α)⌉-th smallest of ``scores``.

    Returns ``(threshold, guaranteed)``; with too few scores for that rank the largest
    score is returned and ``guaranteed`` is False.
    """
    s = np.sort(np.asarray(scores, dtype=float)[np.isfinite(scores)])
    if not len(s):
        return float("nan"), False
    k = math.ceil((len(s) + 1) * (1 - alpha))
    return (float(s[k - 1]), True) if k <= len(s) else (float(s[-1]), False)


def conformal_p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Conformal p-values of ``scores`` against ``calibration`` scores (larger = more unusual).

    ``p = (1 + #{calibration ≥ score}) / (n + 1)``: for a score exchangeable with the n
    calibration scores, ``P(p ≤ α) ≤ α`` for every α (finite-sample, distribution-free).
    NaN scores give p = 1 (nothing measured, nothing judged).
    """
    cal = np.sort(np.asarray(calibration, dtype=float)[np.isfinite(calibration)])
    s = np.asarray(scores, dtype=float)
    n_ge = len(cal) - np.searchsorted(cal, s, side="left")
    p = (1.0 + n_ge) / (len(cal) + 1.0)
    return np.where(np.isfinite(s), p, 1.0)


def _robust(v: np.ndarray, floor: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    with warnings.catch_warnings():  # a statistic not measured on any image (all NaN) stays NaN: not judged
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmedian(v, axis=axis)
        scale = 1.4826 * np.nanmedian(np.abs(v - np.expand_dims(centre, axis)), axis=axis)
    return centre, np.maximum(np.where(np.isfinite(scale), scale, 0.0), floor)


@dataclass
class ImageDomainReference:
    """Pixel-size range and native-image statistics of the training experiment's images.

    Attributes
    ----------
    pixel_size_range_um : (min, max) pixel size of the reference images.
    pixel_size_factor : images outside ``[min / factor, max × factor]`` are out of domain.
    centre, scale : per statistic, robust centre and scale over the reference images.
    low, high : per statistic, the reference images' range (for the reasons).
    threshold : the largest |z| not flagged at level ``alpha`` on its own (leave-one-out
        conformal rank; used to name the statistics in a reason).
    info : what it was calibrated on (written to ``domain.json``).
    loo_scores : the reference images' leave-one-out scores (the conformal calibration set).
    alpha : level of this criterion on its own (``judge``'s ``in_domain``).
    """

    pixel_size_range_um: tuple[float, float]
    pixel_size_factor: float
    centre: dict[str, float]
    scale: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    threshold: float
    info: dict = field(default_factory=dict)
    loo_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    alpha: float = 0.05

    def z_scores(self, stats: pd.DataFrame) -> pd.DataFrame:
        """Robust z-score of every statistic of every image (NaN where not measured)."""
        return pd.DataFrame(self._z(stats), index=stats.index, columns=list(IMAGE_STAT_NAMES))

    def _z(self, stats: pd.DataFrame) -> np.ndarray:
        """:meth:`z_scores` as an ``(n_images, len(IMAGE_STAT_NAMES))`` array."""
        z = np.full((len(stats), len(IMAGE_STAT_NAMES)), np.nan)
        for k, s in enumerate(IMAGE_STAT_NAMES):
            c, sc = (np.nan if m.get(s) is None else float(m[s]) for m in (self.centre, self.scale))  # None: not measured on the reference
            if s in stats.columns and np.isfinite(c) and np.isfinite(sc) and sc > 0:
                z[:, k] = (stats[s].to_numpy(float) - c) / sc
        return z

    def judge(self, stats: pd.DataFrame) -> pd.DataFrame:
        """Per image: ``image_stats_score`` (largest |z| / threshold), ``p_value``
        (conformal p-value of the largest |z|; 0 when the pixel size lies outside the
        allowed range), ``pixel_size_ratio`` (to the nearest end of the training range;
        1 inside it), ``in_domain`` (this criterion alone at level ``alpha``) and
        ``reason`` (why ``p_value`` is small; empty when ``p_value > alpha``: the
        statistics whose |z| passed the level-``alpha`` threshold, or the largest one)."""
        za = self._z(stats)
        have = ~np.isnan(za)
        top = np.where(have.any(1), np.max(np.where(have, np.abs(za), -np.inf), axis=1, initial=-np.inf), np.nan)  # NaN-skipping, NaN when none
        score = np.where(np.isnan(top), 0.0, top) / self.threshold
        p = conformal_p_values(self.loo_scores, top)
        lo_px, hi_px = self.pixel_size_range_um
        px = stats["pixel_size_um"].to_numpy(float) if "pixel_size_um" in stats.columns else np.full(len(stats), np.nan)
        ratio = np.where(px > hi_px, px / hi_px, np.where(px < lo_px, px / lo_px, 1.0))
        ratio = np.where(np.isfinite(px), ratio, np.nan)
        px_out = np.isfinite(ratio) & ((ratio > self.pixel_size_factor) | (ratio < 1 / self.pixel_size_factor))
        va = np.column_stack([stats[s].to_numpy(float) if s in stats.columns else np.full(len(stats), np.nan) for s in IMAGE_STAT_NAMES])
        reasons = []
        for i in range(len(stats)):
            why = []
            if px_out[i]:
                why.append(f"pixel size {px[i]:.3g} µm is {ratio[i]:.2f}× the nearest end of the training range {lo_px:.3g}–{hi_px:.3g} µm (allowed factor {self.pixel_size_factor:g})")
            if p[i] <= self.alpha:
                a = np.abs(za[i])
                named = [k for k in range(len(IMAGE_STAT_NAMES)) if np.isfinite(a[k]) and a[k] > self.threshold] or [int(np.nanargmax(a))]
                for k in named:
                    s = IMAGE_STAT_NAMES[k]
                    side = "higher" if za[i, k] > 0 else "lower"
                    why.append(f"{_PLAIN[s]} {side} than in training ({s} = {va[i, k]:.3g}, training {self.low[s]:.3g}–{self.high[s]:.3g}, image statistics p = {p[i]:.2g})")
            reasons.append("; ".join(why))
        p = np.where(px_out, 0.0, p)
        out = pd.DataFrame({"image_stats_score": score, "p_value": p, "pixel_size_ratio": ratio, "reason": reasons}, index=stats.index)
        out["in_domain"] = p > self.alpha
        return out

    def to_dict(self) -> dict:
        """JSON-ready description (``domain.json``'s ``image_level`` entry)."""
        return {
            "pixel_size_range_um": list(self.pixel_size_range_um),
            "pixel_size_factor": self.pixel_size_factor,
            "statistics": list(IMAGE_STAT_NAMES),
            "centre": self.centre,
            "scale": self.scale,
            "low": self.low,
            "high": self.high,
            "threshold": self.threshold,
            "alpha": self.alpha,
            **self.info,
            "leave_one_out_scores": [float(x) for x in self.loo_scores],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ImageDomainReference":
        """Inverse of :meth:`to_dict` (raises KeyError/TypeError/ValueError on a bad entry)."""
        keys = ("pixel_size_range_um", "pixel_size_factor", "statistics", "centre", "scale", "low", "high", "threshold", "alpha", "leave_one_out_scores")
        f = lambda m: {k: float(v) if v is not None else float("nan") for k, v in m.items()}  # noqa: E731
        lo, hi = (float(v) for v in d["pixel_size_range_um"])
        loo = np.asarray(d.get("leave_one_out_scores") or [], dtype=float)
        return cls((lo, hi), float(d["pixel_size_factor"]), f(d["centre"]), f(d["scale"]), f(d["low"]), f(d["high"]), float(d["threshold"]),
                   {k: v for k, v in d.items() if k not in keys}, loo, float(d.get("alpha", 0.05)))


def fit_image_reference(stats: pd.DataFrame, *, alpha: float = 0.05, pixel_size_factor: float = 1.1, images: str = "training + validation + calibration + test") -> ImageDomainReference | None:
    """Fit the image-level reference on the training experiment's images (:func:`image_statistics`).

    The calibration set is the leave-one-image-out scores; ``alpha`` is this
    criterion's level on its own (its threshold names the statistics in a reason).
    Returns None when fewer than 3 images have a pixel size (nothing to describe).
    """
    stats = stats[np.isfinite(stats["pixel_size_um"].to_numpy(float))]
    if len(stats) < 3:
        return None
    v = np.column_stack([stats[s].to_numpy(float) for s in IMAGE_STAT_NAMES])
    floor = np.full(v.shape[1], 1e-3)
    # leave-one-image-out: image i against the robust centre and scale of the others (all at once)
    n = len(v)
    rest = v[np.array([np.delete(np.arange(n), i) for i in range(n)])]  # (n, n - 1, S)
    c, sc = _robust(rest, floor, axis=1)
    zi = np.abs(v - c) / sc
    loo = np.where(np.isfinite(zi).any(1), np.nanmax(np.where(np.isfinite(zi), zi, -np.inf), axis=1), 0.0)
    threshold, reachable = conformal_rank_threshold(loo, alpha)
    c, sc = _robust(v, floor)
    px = stats["pixel_size_um"].to_numpy(float)
    fin = lambda a: float(a) if np.isfinite(a) else None  # noqa: E731
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanmin(v, axis=0), np.nanmax(v, axis=0)
    return ImageDomainReference(
        (float(px.min()), float(px.max())), float(pixel_size_factor),
        {s: fin(c[k]) for k, s in enumerate(IMAGE_STAT_NAMES)}, {s: fin(sc[k]) for k, s in enumerate(IMAGE_STAT_NAMES)},
        {s: fin(low[k]) for k, s in enumerate(IMAGE_STAT_NAMES)}, {s: fin(high[k]) for k, s in enumerate(IMAGE_STAT_NAMES)},
        float(max(threshold, 1e-6)),
        {
            "method": "robust z-score (median, 1.4826 MAD over the reference images) per native-image statistic; image score = largest |z|; "
                      "p-value = conformal rank among the leave-one-image-out scores, (1 + #{loo >= score}) / (n + 1); pixel size outside the range: p = 0",
            "n_reference_images": int(len(v)),
            "reference_images": images,
            "smallest_p_value": 1.0 / (len(v) + 1),
            "level_reachable": reachable,
            "note": None if reachable else f"only {len(v)} reference images: the smallest conformal p-value is 1/{len(v) + 1}, above alpha={alpha}; the native image statistics alone cannot flag an image at that level (pixel size still can)",
        },
        loo, float(alpha),
    )
