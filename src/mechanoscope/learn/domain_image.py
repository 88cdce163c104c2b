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
|z|. The threshold is calibrated by **leave-one-image-out** over every non-test image
of the training experiment (training, validation and calibration images: these
statistics do not involve the network, so images it learnt from are fair evidence):
each image is scored against the others and the threshold is the split-conformal
quantile of those scores, the ⌈(n + 1)(1 − α)⌉-th smallest of n, so that an image
acquired like the training images is flagged with probability at most α (default
0.03, leaving room for the crop-level image flag). With fewer than ⌈1/α⌉ − 1 images
that rank does not exist: the largest score is used and ``domain.json`` says the
level is not guaranteed.

Every flagged image gets a reason: the pixel-size ratio and/or the statistics whose
|z| passed the threshold, with the image's value and the training range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["IMAGE_STAT_NAMES", "ImageDomainReference", "image_statistics", "fit_image_reference", "conformal_rank_threshold"]

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
        per = pd.DataFrame({
            "pixel_size_um": col("pixel_size_um"),
            "noise": np.sqrt(np.maximum(col("texture_neighbour_contrast"), 0) / 2) / bg,
            "bgnoise": opt(background_noise),
            "sharp": col("texture_gradient_mean_per_um") / bg,
            "contrast": col("intensity_std") / bg,
            "lo": col("intensity_min") / bg,
            "hi": col("intensity_max") / bg,
            "local_bg": lb,
            "area": col("area_um2"),
        }, index=pd.Index(ids, name="image_id"))
    g = per.groupby(level=0, sort=True)
    med = g.median()  # NaN-skipping; all-NaN → NaN
    q = lambda c, v: g[c].quantile(v)  # noqa: E731
    out = pd.DataFrame(index=med.index)
    out["n_cells"] = g.size().astype(int)
    out["pixel_size_um"] = med["pixel_size_um"]
    for name, c in (("noise_rel", "noise"), ("background_noise_rel", "bgnoise"), ("sharpness_rel", "sharp"), ("contrast_rel", "contrast"), ("log_cell_area_um2", "area")):
        out[name] = _log(med[c].to_numpy())
    out["intensity_p05_rel"] = q("lo", 0.05)
    out["intensity_p95_rel"] = q("hi", 0.95)
    counts = g["local_bg"].count()
    with np.errstate(divide="ignore", invalid="ignore"):
        unev = (q("local_bg", 0.9) - q("local_bg", 0.1)) / med["local_bg"]
    out["illumination_unevenness"] = unev.where((counts >= 3) & (med["local_bg"] > 0))
    return out[["n_cells", "pixel_size_um", *IMAGE_STAT_NAMES]]


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


def _robust(v: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    with warnings.catch_warnings():  # a statistic not measured on any image (all NaN) stays NaN: not judged
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = np.nanmedian(v, axis=0)
        scale = 1.4826 * np.nanmedian(np.abs(v - centre), axis=0)
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
    threshold : largest |z| an in-domain image may have (leave-one-out conformal).
    info : what it was calibrated on (written to ``domain.json``).
    """

    pixel_size_range_um: tuple[float, float]
    pixel_size_factor: float
    centre: dict[str, float]
    scale: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    threshold: float
    info: dict = field(default_factory=dict)

    def z_scores(self, stats: pd.DataFrame) -> pd.DataFrame:
        """Robust z-score of every statistic of every image (NaN where not measured)."""
        z = pd.DataFrame(index=stats.index)
        for s in IMAGE_STAT_NAMES:
            v = stats[s].to_numpy(float) if s in stats.columns else np.full(len(stats), np.nan)
            c, sc = (np.nan if m.get(s) is None else float(m[s]) for m in (self.centre, self.scale))  # None: not measured on the reference
            z[s] = (v - c) / sc if np.isfinite(c) and np.isfinite(sc) and sc > 0 else np.nan
        return z

    def judge(self, stats: pd.DataFrame) -> pd.DataFrame:
        """Per image: ``image_stats_score`` (largest |z| / threshold; > 1 out),
        ``pixel_size_ratio`` (to the nearest end of the training range; 1 inside it),
        ``in_domain`` and ``reason`` (empty when in domain)."""
        z = self.z_scores(stats)
        absz = z.abs()
        score = absz.max(axis=1, skipna=True).fillna(0.0) / self.threshold
        lo_px, hi_px = self.pixel_size_range_um
        px = stats["pixel_size_um"].to_numpy(float) if "pixel_size_um" in stats.columns else np.full(len(stats), np.nan)
        ratio = np.where(px > hi_px, px / hi_px, np.where(px < lo_px, px / lo_px, 1.0))
        ratio = np.where(np.isfinite(px), ratio, np.nan)
        reasons = []
        for i, image_id in enumerate(stats.index):
            why = []
            r = ratio[i]
            if np.isfinite(r) and (r > self.pixel_size_factor or r < 1 / self.pixel_size_factor):
                why.append(f"pixel size {px[i]:.3g} µm is {r:.2f}× the nearest end of the training range {lo_px:.3g}–{hi_px:.3g} µm (allowed factor {self.pixel_size_factor:g})")
            for s in IMAGE_STAT_NAMES:
                zi = absz.iloc[i][s]
                if np.isfinite(zi) and zi > self.threshold:
                    side = "higher" if z.iloc[i][s] > 0 else "lower"
                    why.append(f"{_PLAIN[s]} {side} than in training ({s} = {stats.iloc[i][s]:.3g}, training {self.low[s]:.3g}–{self.high[s]:.3g})")
            reasons.append("; ".join(why))
        out = pd.DataFrame({"image_stats_score": score.to_numpy(float), "pixel_size_ratio": ratio, "reason": reasons}, index=stats.index)
        out["in_domain"] = out["reason"] == ""
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
            **self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ImageDomainReference":
        """Inverse of :meth:`to_dict` (raises KeyError/TypeError/ValueError on a bad entry)."""
        keys = ("pixel_size_range_um", "pixel_size_factor", "statistics", "centre", "scale", "low", "high", "threshold")
        f = lambda m: {k: float(v) if v is not None else float("nan") for k, v in m.items()}  # noqa: E731
        lo, hi = (float(v) for v in d["pixel_size_range_um"])
        return cls((lo, hi), float(d["pixel_size_factor"]), f(d["centre"]), f(d["scale"]), f(d["low"]), f(d["high"]), float(d["threshold"]),
                   {k: v for k, v in d.items() if k not in keys})


def fit_image_reference(stats: pd.DataFrame, *, alpha: float = 0.03, pixel_size_factor: float = 1.1, images: str = "training + validation + calibration") -> ImageDomainReference | None:
    """Fit the image-level reference on the training experiment's images (:func:`image_statistics`).

    The threshold is the leave-one-image-out conformal quantile at level ``1 − alpha``
    (:func:`conformal_rank_threshold`). Returns None when fewer than 3 images have a
    pixel size (nothing to describe).
    """
    stats = stats[np.isfinite(stats["pixel_size_um"].to_numpy(float))]
    if len(stats) < 3:
        return None
    v = np.column_stack([stats[s].to_numpy(float) for s in IMAGE_STAT_NAMES])
    floor = np.full(v.shape[1], 1e-3)
    loo = np.zeros(len(v))
    for i in range(len(v)):
        rest = np.delete(v, i, axis=0)
        c, sc = _robust(rest, floor)
        zi = np.abs(v[i] - c) / sc
        loo[i] = np.max(zi[np.isfinite(zi)]) if np.isfinite(zi).any() else 0.0
    threshold, guaranteed = conformal_rank_threshold(loo, alpha)
    c, sc = _robust(v, floor)
    px = stats["pixel_size_um"].to_numpy(float)
    fin = lambda a: float(a) if np.isfinite(a) else None  # noqa: E731
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanmin(v, axis=0), np.nanmax(v, axis=0)
    ref = ImageDomainReference(
        (float(px.min()), float(px.max())), float(pixel_size_factor),
        {s: fin(c[k]) for k, s in enumerate(IMAGE_STAT_NAMES)}, {s: fin(sc[k]) for k, s in enumerate(IMAGE_STAT_NAMES)},
        {s: fin(low[k]) for k, s in enumerate(IMAGE_STAT_NAMES)}, {s: fin(high[k]) for k, s in enumerate(IMAGE_STAT_NAMES)},
        float(max(threshold, 1e-6)),
        {
            "method": "robust z-score (median, 1.4826 MAD over the reference images) per native-image statistic; image score = largest |z|; threshold = leave-one-image-out split-conformal quantile",
            "n_reference_images": int(len(v)),
            "reference_images": images,
            "alpha": alpha,
            "level_guaranteed": guaranteed,
            "note": None if guaranteed else f"only {len(v)} reference images: fewer than the {math.ceil(1 / alpha) - 1} needed for the conformal rank at alpha={alpha}; the largest leave-one-out score is the threshold",
            "leave_one_out_scores": [float(x) for x in loo],
        },
    )
    return ref
