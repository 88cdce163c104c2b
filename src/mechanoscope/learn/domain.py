"""Applicability domain: how unlike the training cells a crop is, calibrated on held-out images.

A CNN applied to images taken with other optics keeps answering with the same
confidence. This module gives every prediction a score of how far its crop lies from
the training crops, in two spaces:

* ``features``: the network's penultimate-layer features (the input of its last
  linear layer; ensemble member 0, no test-time augmentation);
* ``image_stats``: a few statistics of the normalised crop that change with the
  imaging rather than with the cell (background noise, background slope, sharpness,
  cell contrast; :func:`crop_statistics`).

In each space the reference is the mean and the Ledoit–Wolf shrunk covariance of the
**training** cells (``sklearn.covariance.LedoitWolf``); a cell's distance is its
Mahalanobis distance. Both distances are divided by their ``cell_quantile`` (default
95 %) on the **held-out** validation + calibration + test cells (images the weights
never learnt from; calibration + test after a refit), the cell's score is the larger of the
two, and ``domain_score`` is that divided by its own ``cell_quantile`` on the same
held-out cells: ``domain_score > 1`` means out of domain, and by construction about
5 % of cells of images acquired like the training images are flagged.

**Images** are judged by tests with a stated false-flag rate ``image_alpha`` (default
5 %: the share of images acquired like the training images that are flagged):

* crop criterion: the median ``domain_score`` of **all** the image's cells (as
  prediction computes it, QC-failing and unlabelled cells included) against the
  medians of all cells of the held-out images (every image the weights never learnt
  from: validation, calibration and test). On their logs the p-value comes from the
  upper normal **tolerance limit** at confidence ``image_confidence`` (default 90 %):
  with that probability over the held-out images, images acquired like them are
  flagged at a rate of at most the level — a training-conditional guarantee, because
  the sd of a few dozen image medians can be 30 % low by chance and a plain prediction
  bound (valid only on average over training experiments) then flags far more than
  its level (:func:`image_median_p_value`; non-central t, the finite-sample
  correction);
* image criterion (:mod:`mechanoscope.learn.domain_image`): conformal p-value of the
  native-image statistics, p = 0 for a pixel size outside the training range.

A model flags an image when Holm's procedure over its criteria rejects one at level
``image_alpha`` (``pred_image_in_domain_<target>``; equivalently the smallest p-value
times the number of criteria ≤ ``image_alpha``). The run's verdict
(``pred_image_in_domain``) is Holm's procedure over the criteria of **all** models in
the table, an image criterion shared by several models (identical p-values: the same
training images) counted once, so the run flags an image acquired like the training
images with probability at most ``image_alpha`` however many models it holds
(Bonferroni's inequality: no assumption on how the criteria depend on each other).

Crops are resampled to the model's pixel size, which hides a change of pixel size and
much of a change of noise or focus; the image-level reference of
:mod:`mechanoscope.learn.domain_image` (pixel-size range of the training images,
native-image statistics calibrated leave-one-image-out) adds that evidence, and each
image flagged says why (``pred_image_domain_reason``).

The reference (``domain.safetensors``: means and precision matrices; ``domain.json``:
thresholds, the image-level reference and what they were calibrated on;
``domain_version`` 3) is written into the model folder at training. A model folder
without it still predicts, with a :class:`NoDomainReferenceWarning`; a folder with a
version-1 reference (before the image-level checks) predicts with the crop-level check
only, and a version-2 reference (image medians calibrated on labelled cells only) with
its stored medians; both with an :class:`OldDomainReferenceWarning`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError, MechanoscopeWarning
from mechanoscope.learn.domain_image import ImageDomainReference

__all__ = [
    "DOMAIN_FILES",
    "STAT_NAMES",
    "DomainReference",
    "crop_statistics",
    "penultimate_features",
    "feature_layer",
    "fit_domain_reference",
    "image_median_threshold",
    "image_median_p_value",
    "holm_reject",
    "load_domain_reference",
    "domain_columns",
    "judge_images",
    "domain_summary",
    "NoDomainReferenceWarning",
    "OldDomainReferenceWarning",
    "DOMAIN_VERSION",
]

DOMAIN_FILES = ("domain.json", "domain.safetensors")
STAT_NAMES = ("background_noise", "background_slope", "sharpness", "cell_contrast_sd", "cell_contrast_mean", "background_level_sd")
SPACES = ("features", "image_stats")
DOMAIN_VERSION = 3


class NoDomainReferenceWarning(MechanoscopeWarning):
    """A model folder has no applicability-domain reference: no domain check is possible."""


class OldDomainReferenceWarning(MechanoscopeWarning):
    """A model folder's domain reference predates the image-level checks (pixel size, native image statistics)."""


# --------------------------------------------------------------------------- features
def crop_statistics(x: np.ndarray, channels: list[str]) -> np.ndarray:
    """Imaging statistics of normalised crops, ``(N, len(STAT_NAMES))``.

    Parameters
    ----------
    x : (N, C, H, W) float
        Crops as the network sees them (:func:`~mechanoscope.learn.data.normalise_crops`).
    channels : names of the C channels; ``intensity`` is required, ``mask`` (0/1) is
        used to tell cell from background (without it the outer ring of the crop is
        taken as background and its centre as cell).

    Returns
    -------
    (N, 6) float64: ``background_noise`` (robust SD of the 4-neighbour Laplacian over
    background pixels / √20, about the pixel noise SD), ``background_slope`` (length of
    the gradient of a plane fitted to the background, contrast units per crop edge),
    ``sharpness`` (log of Laplacian over gradient energy inside the cell),
    ``cell_contrast_sd`` / ``cell_contrast_mean`` (inside the cell) and
    ``background_level_sd`` (SD of background pixels).
    """
    if "intensity" not in channels:
        raise MechanoscopeError(f"image statistics need an intensity channel; the crops have {channels}")
    img = np.asarray(x[:, channels.index("intensity")], dtype=np.float64)
    n, h, w = img.shape
    if "mask" in channels:
        cell = np.asarray(x[:, channels.index("mask")]) > 0.5
    else:
        yy, xx = np.mgrid[:h, :w]
        cell = np.broadcast_to(np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) < 0.3 * min(h, w), (n, h, w))
    lap = np.zeros_like(img)
    lap[:, 1:-1, 1:-1] = 4 * img[:, 1:-1, 1:-1] - img[:, :-2, 1:-1] - img[:, 2:, 1:-1] - img[:, 1:-1, :-2] - img[:, 1:-1, 2:]
    gy, gx = np.gradient(img, axis=(1, 2))
    inner = np.zeros((h, w), bool)
    inner[1:-1, 1:-1] = True
    if n == 0:
        return np.full((0, len(STAT_NAMES)), np.nan)
    # all crops at once (no loop over cells); a crop with too little background / cell falls back to the border / interior
    bg = ~np.asarray(cell, dtype=bool)
    bg[bg.sum((1, 2)) < 8] = ~inner
    fg = np.array(cell, dtype=bool)
    fg[fg.sum((1, 2)) < 4] = inner
    out = np.full((n, len(STAT_NAMES)), np.nan)
    sel = (bg & inner).reshape(n, -1)
    lb = lap.reshape(n, -1)
    med = _masked_median(lb, sel)
    mad = _masked_median(np.abs(lb - med[:, None]), sel)
    out[:, 0] = np.where(sel.any(1), 1.4826 * mad / np.sqrt(20.0), 0.0)
    # plane fitted to the background by least squares: normal equations per crop (3 × 3)
    yy, xx = np.mgrid[:h, :w]
    design = np.stack([np.ones(h * w), (yy.ravel() - h / 2) / h, (xx.ravel() - w / 2) / w], 1)
    wgt = bg.reshape(n, -1).astype(np.float64)
    # matrix-vector products (one per entry): ~30x faster than the three-operand einsum, and unlike a matrix-matrix
    # product they stay on one BLAS thread, which on a shared machine is the steady choice
    pairs = (design[:, :, None] * design[:, None, :]).reshape(h * w, 9)
    gram = np.stack([wgt @ pairs[:, k] for k in range(9)], 1).reshape(n, 3, 3)
    wimg = wgt * img.reshape(n, -1)
    rhs = np.stack([wimg @ design[:, k] for k in range(3)], 1)
    try:
        coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a background on one line: least squares crop by crop
        coef = np.stack([np.linalg.lstsq(g, r, rcond=None)[0] for g, r in zip(gram, rhs, strict=True)])
    out[:, 1] = np.hypot(coef[:, 1], coef[:, 2])
    fgf = fg.reshape(n, -1)
    nf = fgf.sum(1)
    g2 = np.sum((gy**2 + gx**2).reshape(n, -1) * fgf, 1) / nf
    fi = (fg & inner).reshape(n, -1)
    nfi = fi.sum(1)
    l2 = np.where(nfi > 0, np.sum(lb**2 * fi, 1) / np.maximum(nfi, 1), 0.0)
    out[:, 2] = np.log((l2 + 1e-12) / (g2 + 1e-12))
    flat = img.reshape(n, -1)
    out[:, 4] = _masked_mean(flat, fgf)
    out[:, 3] = np.sqrt(_masked_mean((flat - out[:, 4:5]) ** 2, fgf))
    bgf = bg.reshape(n, -1)
    mb = _masked_mean(flat, bgf)
    out[:, 5] = np.sqrt(_masked_mean((flat - mb[:, None]) ** 2, bgf))
    return out


def _masked_mean(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Row means of ``v`` ``(N, P)`` over the pixels where ``m`` is true (at least one per row)."""
    return np.sum(np.where(m, v, 0.0), 1) / m.sum(1)


def _masked_median(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Row medians of ``v`` ``(N, P)`` over the pixels where ``m`` is true, as :func:`numpy.median` (NaN for an empty row)."""
    k = m.sum(1)
    srt = np.sort(np.where(m, v, np.inf), axis=1)
    lo = srt[np.arange(len(v)), np.maximum((k - 1) // 2, 0)] if v.shape[1] else np.zeros(len(v))
    hi = srt[np.arange(len(v)), np.minimum(k // 2, max(v.shape[1] - 1, 0))] if v.shape[1] else np.zeros(len(v))
    return np.where(k > 0, (lo + hi) / 2, np.nan)


def feature_layer(net):
    """The last ``nn.Linear`` of ``net``: its input are the penultimate features the domain uses."""
    return _last_linear(net)


def _last_linear(net):
    from torch import nn

    last = None
    for mod in net.modules():
        if isinstance(mod, nn.Linear):
            last = mod
    if last is None:
        raise MechanoscopeError(f"the network {type(net).__name__} has no linear output layer, so it has no penultimate features")
    return last


def penultimate_features(net, x, batch_size: int = 256) -> np.ndarray:
    """The input of ``net``'s last linear layer for crops ``x``, ``(N, F)`` float64.

    ``x`` is a ``(N, C, H, W)`` array or tensor of normalised crops; ``net`` runs in
    eval mode on the device of its parameters, without test-time augmentation.
    """
    import torch

    layer = _last_linear(net)
    got: list[np.ndarray] = []
    hook = layer.register_forward_hook(lambda mod, inp, outp: got.append(inp[0].detach().float().cpu().numpy()))
    try:
        dev = next(net.parameters()).device
        net.eval()
        with torch.inference_mode():
            for s in range(0, len(x), batch_size):
                xb = x[s : s + batch_size]
                xb = xb if isinstance(xb, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32))
                net(xb.to(dev))
    finally:
        hook.remove()
    if not got:
        return np.zeros((0, layer.in_features))
    return np.concatenate(got).astype(np.float64)


# --------------------------------------------------------------------------- reference
@dataclass
class DomainReference:
    """A model's applicability-domain reference (see the module docstring).

    Attributes
    ----------
    means, precisions
        Per space (``features``, ``image_stats``): mean ``(F,)`` and precision ``(F, F)``
        of the training cells.
    component_scale
        Per space: the ``cell_quantile`` of the held-out cells' Mahalanobis distance.
    cell_threshold
        ``cell_quantile`` of the held-out cells' combined score (``domain_score`` = score / this).
    image_threshold
        The median ``domain_score`` of an image's cells above which this model's crop
        criterion alone rejects at its Holm/Bonferroni share of ``image_alpha`` (shown
        in the reasons; the decision is made on the p-value).
    image_medians
        Median ``domain_score`` of all cells of each held-out image (the calibration of
        the crop criterion, :func:`image_median_p_value`).
    image_alpha
        Nominal rate at which images acquired like the training images are flagged.
    image_confidence
        Confidence of the crop criterion's training-conditional calibration (normal
        tolerance limit, :func:`image_median_p_value`); None: marginal (prediction
        interval).
    image_reference
        Pixel-size range and native-image statistics of the training images
        (:class:`~mechanoscope.learn.domain_image.ImageDomainReference`); None in a
        version-1 reference or when the training table had no pixel sizes.
    info
        What the reference was fitted and calibrated on (written to ``domain.json``).
    """

    means: dict[str, np.ndarray]
    precisions: dict[str, np.ndarray]
    component_scale: dict[str, float]
    cell_threshold: float
    image_threshold: float
    channels: list[str]
    info: dict = field(default_factory=dict)
    image_reference: ImageDomainReference | None = None
    version: int = DOMAIN_VERSION
    image_medians: np.ndarray = field(default_factory=lambda: np.zeros(0))
    image_alpha: float = 0.05
    image_confidence: float | None = 0.9

    @property
    def n_image_criteria(self) -> int:
        """Number of image-level tests of this model (crop criterion, plus the image criterion when there is an image-level reference)."""
        return 1 + (self.image_reference is not None)

    def image_crop_p(self, medians: np.ndarray) -> np.ndarray:
        """p-value of each image's median ``domain_score`` against the held-out images' (:func:`image_median_p_value`);
        a reference without stored medians (version 1) gives 0 above ``image_threshold``, else 1."""
        if not len(self.image_medians):
            m = np.asarray(medians, dtype=float)
            return np.where(np.isfinite(m) & (m > self.image_threshold), 0.0, 1.0)
        return image_median_p_value(self.image_medians, medians, self.image_confidence)

    def _distance(self, space: str, v: np.ndarray) -> np.ndarray:
        d = v - self.means[space]
        d = np.where(np.isfinite(d), d, 0.0)
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precisions[space], d), 0.0))

    def distances(self, features: np.ndarray, stats: np.ndarray) -> dict[str, np.ndarray]:
        """Mahalanobis distance of each cell to the training cells, per space."""
        return {"features": self._distance("features", features), "image_stats": self._distance("image_stats", stats)}

    def raw_score(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Larger of the two distances, each in units of its held-out quantile."""
        d = self.distances(features, stats)
        return np.maximum(d["features"] / self.component_scale["features"], d["image_stats"] / self.component_scale["image_stats"])

    def score(self, features: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """``domain_score`` per cell: > 1 is out of domain."""
        return self.raw_score(features, stats) / self.cell_threshold

    def score_crops(self, net, x, *, with_stats: bool = False, features=None):
        """``domain_score`` of normalised crops ``x`` (array or tensor) for network ``net``
        (and, with ``with_stats``, their :func:`crop_statistics` as a second value).

        ``features``: the crops' penultimate features ``(N, F)`` (array or tensor) when
        the caller already has them from its prediction pass (e.g.
        :func:`mechanoscope.nn.inference.forward_tta_capture` on :func:`feature_layer`);
        otherwise ``net`` runs once more to get them."""
        xa = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        stats = crop_statistics(xa, self.channels)
        if features is None:
            feats = penultimate_features(net, x)
        else:
            feats = features.detach().float().cpu().numpy() if hasattr(features, "detach") else np.asarray(features)
            if feats.shape[0] != xa.shape[0]:
                raise MechanoscopeError(f"{feats.shape[0]} feature rows for {xa.shape[0]} crops; the features must come from the same crops")
            feats = feats.astype(np.float64)
        score = self.score(feats, stats)
        return (score, stats) if with_stats else score

    def to_files(self) -> dict[str, bytes | str]:
        """``domain.json`` and ``domain.safetensors`` contents for a model folder."""
        from safetensors.numpy import save

        tensors = {f"{s}.{k}": np.ascontiguousarray(v, dtype=np.float64) for s in SPACES for k, v in (("mean", self.means[s]), ("precision", self.precisions[s]))}
        meta = {
            "method": "Mahalanobis distance to the training cells (Ledoit-Wolf covariance) in the network's penultimate features and in crop image statistics; each scaled by its held-out quantile, the larger kept",
            "spaces": list(SPACES),
            "image_statistics": list(STAT_NAMES),
            "channels": self.channels,
            "component_scale": self.component_scale,
            "cell_threshold": self.cell_threshold,
            "image_threshold": self.image_threshold,
            "image_alpha": self.image_alpha,
            "image_confidence": self.image_confidence,
            "score": "domain_score = combined score / cell_threshold; > 1 = out of domain. Image: Holm over the model's criteria at image_alpha "
                     "(crop criterion: p-value of the log median domain_score of all the image's cells against held_out_image_median_scores from the normal tolerance limit at image_confidence; "
                     "image criterion: conformal p-value of the native image statistics, 0 for a pixel size outside the training range (image_level))",
            **self.info,
            "held_out_image_median_scores": [float(v) for v in self.image_medians],
            "domain_version": DOMAIN_VERSION,
            "image_level": self.image_reference.to_dict() if self.image_reference is not None else None,
        }
        return {"domain.json": json.dumps(meta, indent=2), "domain.safetensors": save(tensors)}


def _quantile(v: np.ndarray, q: float) -> float:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.quantile(v, q, method="higher")) if v.size else float("nan")


def _log_median_moments(medians: np.ndarray) -> tuple[float, float, int]:
    m = np.asarray(medians, dtype=float)
    lm = np.log(m[np.isfinite(m) & (m > 0)])
    if len(lm) < 2:
        return (float(lm[0]) if len(lm) else 0.0), float("nan"), len(lm)
    return float(lm.mean()), float(max(lm.std(ddof=1), 1e-6)), len(lm)


def image_median_p_value(reference_medians: np.ndarray, medians: np.ndarray, confidence: float | None = None) -> np.ndarray:
    """Upper-tail p-value of each of ``medians`` against the ``reference_medians`` of n held-out images.

    On the logs, with ``k = (log m − mean) / sd`` (mean and sd, ddof 1, of the n
    reference log medians):

    * ``confidence=None``: the Student-t prediction p-value ``P(T_{n−1} > k / √(1 + 1/n))``,
      exactly uniform for one more image like the reference ones when log medians are
      normal — averaged over reference sets. For ONE reference set the rate of
      ``p ≤ α`` scatters around α (an sd estimated from few images may be 30 % low);
    * ``confidence=γ`` (training-conditional): the smallest α for which ``m`` lies above
      the upper (1 − α, γ) normal tolerance limit ``mean + k_α · sd``,
      ``k_α = t'_γ(n − 1, z_{1−α} √n) / √n`` (non-central t): with probability at least
      γ over the reference images, images like them get ``p ≤ α`` at a rate of at most α.

    Fewer than 2 reference medians: a median up to 1.5 × the largest gets p = 1, above
    it 0 (no calibration possible). NaN or non-positive medians (no cell) get p = 1.
    """
    from scipy.special import ndtr, nctdtrinc, stdtr  # lighter to import than scipy.stats

    m = np.asarray(medians, dtype=float)
    mean, sd, n = _log_median_moments(reference_medians)
    ok = np.isfinite(m) & (m > 0)
    lm = np.log(np.where(ok, m, 1.0))
    if n < 2:
        top = float(np.exp(mean)) if n else 1.0
        return np.where(ok & (m > 1.5 * top), 0.0, 1.0)
    k = (lm - mean) / sd
    if confidence is None:
        p = stdtr(n - 1, -k / np.sqrt(1 + 1 / n))
    else:
        nc = nctdtrinc(n - 1, float(confidence), np.clip(k, -50, 50) * np.sqrt(n))
        p = ndtr(-nc / np.sqrt(n))
    return np.where(ok, np.clip(p, 0.0, 1.0), 1.0)


def image_median_threshold(medians: np.ndarray, alpha: float = 0.05, confidence: float | None = None) -> float:
    """The median ``domain_score`` at which :func:`image_median_p_value` against ``medians`` equals ``alpha``.

    On the logs: mean + t₍₁₋α, n−1₎ · sd · √(1 + 1/n) (prediction bound), or with
    ``confidence`` γ the tolerance limit mean + t'_γ(n − 1, z₁₋α √n) / √n · sd.
    """
    from scipy.special import nctdtrit, ndtri, stdtrit

    mean, sd, n = _log_median_moments(medians)
    if n < 2:
        return float(1.5 * np.exp(mean)) if n else 1.0
    if confidence is None:
        k = stdtrit(n - 1, 1 - alpha) * np.sqrt(1 + 1 / n)
    else:
        k = nctdtrit(n - 1, ndtri(1 - alpha) * np.sqrt(n), float(confidence)) / np.sqrt(n)
    return float(np.exp(mean + k * sd))


def fit_domain_reference(
    train_features: np.ndarray,
    train_stats: np.ndarray,
    held_features: np.ndarray,
    held_stats: np.ndarray,
    held_groups: np.ndarray,
    *,
    channels: list[str],
    cell_quantile: float = 0.95,
    image_alpha: float = 0.05,
    held_out_splits: str = "val + calibration",
    image_reference: ImageDomainReference | None = None,
    image_cells: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    image_confidence: float | None = 0.9,
) -> DomainReference:
    """Fit the reference on training cells and calibrate its thresholds on held-out cells.

    Parameters
    ----------
    train_features, train_stats : (N_train, F), (N_train, S)
        Penultimate features and :func:`crop_statistics` of the training cells.
    held_features, held_stats : (N_held, F), (N_held, S)
        The same for held-out cells (images the weights did not learn from).
    held_groups : (N_held,)
        Image (group) of every held-out cell, for the image threshold.
    cell_quantile
        Quantile of held-out cells' scores that sets the cell threshold.
    image_alpha
        Nominal rate at which images acquired like the training images are flagged
        (the family-wise level of the image-level tests, module docstring).
    image_reference
        The image-level reference (:func:`~mechanoscope.learn.domain_image.fit_image_reference`).
    image_cells
        ``(features, stats, image_ids)`` of **every** cell of the held-out images
        (unlabelled and QC-failing ones included, as prediction scores them), for the
        images' median scores; default: the held-out cells grouped by ``held_groups``.
    image_confidence
        Confidence of the crop criterion's training-conditional calibration
        (:func:`image_median_p_value`); None: marginal.

    Raises
    ------
    MechanoscopeError
        Fewer than 10 training or 10 held-out cells (or fewer than 2 held-out images).
    """
    from sklearn.covariance import LedoitWolf

    held_groups = np.asarray(held_groups).astype(str)
    if len(train_features) < 10:
        raise MechanoscopeError(f"only {len(train_features)} training cells: too few to describe the training domain (need at least 10)")
    if len(held_features) < 10 or len(np.unique(held_groups)) < 2:
        raise MechanoscopeError(
            f"only {len(held_features)} held-out cells in {len(np.unique(held_groups))} image(s) to calibrate the domain score "
            "(need at least 10 cells in 2 images); set val_fraction / calibration_fraction > 0 or add images"
        )
    means, precisions = {}, {}
    for space, v in (("features", train_features), ("image_stats", train_stats)):
        v = np.where(np.isfinite(v), v, np.nanmedian(v, axis=0))
        lw = LedoitWolf().fit(v)
        means[space], precisions[space] = lw.location_, lw.precision_
    ref = DomainReference(means, precisions, {"features": 1.0, "image_stats": 1.0}, 1.0, 1.0, list(channels))
    d = ref.distances(held_features, held_stats)
    ref.component_scale = {s: _quantile(d[s], cell_quantile) or 1.0 for s in SPACES}
    ref.cell_threshold = _quantile(ref.raw_score(held_features, held_stats), cell_quantile) or 1.0
    s = ref.score(held_features, held_stats)
    if image_cells is not None:
        img_f, img_s, img_ids = image_cells
        medians = pd.Series(ref.score(img_f, img_s)).groupby(np.asarray(img_ids).astype(str)).median()
    else:
        medians = pd.Series(s).groupby(held_groups).median()
    ref.image_reference = image_reference
    ref.image_medians = medians.to_numpy(dtype=float)
    ref.image_alpha = float(image_alpha)
    ref.image_confidence = None if image_confidence is None else float(image_confidence)
    ref.image_threshold = image_median_threshold(ref.image_medians, image_alpha / ref.n_image_criteria, ref.image_confidence)
    ref.info = {
        "n_reference_cells": int(len(train_features)),
        "n_held_out_cells": int(len(held_features)),
        "n_held_out_images": int(len(medians)),
        "n_held_out_image_cells": int(len(image_cells[2])) if image_cells is not None else int(len(held_features)),
        "held_out_splits": held_out_splits,
        "cell_quantile": cell_quantile,
        "image_medians_of": "every cell of the held-out images" if image_cells is not None else "the held-out cells",
        "image_threshold_rule": "median domain_score at which the crop criterion's p-value (normal tolerance limit at image_confidence on log medians of the held-out images) equals image_alpha / number of the model's image criteria",
        "held_out_fraction_flagged": float(np.mean(s > 1)),
    }
    return ref


def load_domain_reference(folder: str | Path) -> DomainReference | None:
    """The reference stored in a model folder, or None when it has none.

    A folder with neither file (a features baseline, a model trained before mechanoscope
    had a domain check) gives None: the caller predicts with a
    :class:`NoDomainReferenceWarning`. A version-1 reference (before the image-level
    checks) loads with an :class:`OldDomainReferenceWarning`: only the crop-level check
    runs. One file without the other, an unreadable file or a newer version is a
    :class:`~mechanoscope.errors.MechanoscopeError` naming the file and what to do.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    p = Path(folder)
    have = [(p / f).is_file() for f in DOMAIN_FILES]
    if not any(have):
        return None
    if not all(have):
        missing, present = (DOMAIN_FILES[0], DOMAIN_FILES[1]) if not have[0] else (DOMAIN_FILES[1], DOMAIN_FILES[0])
        raise MechanoscopeError(f"{p / missing} is missing but {p / present} is there: the domain reference is incomplete; copy the model folder again, or delete {present} to predict without a domain check")
    try:
        meta = json.loads((p / "domain.json").read_text())
        version = int(meta.get("domain_version", 1))
        if version > DOMAIN_VERSION:
            raise MechanoscopeError(f"{p / 'domain.json'}: domain reference version {version} was written by a newer mechanoscope (this one reads up to {DOMAIN_VERSION}); upgrade mechanoscope or retrain the model with this version")
        t = load_file(str(p / "domain.safetensors"))
        image_ref = ImageDomainReference.from_dict(meta["image_level"]) if meta.get("image_level") else None
        if image_ref is not None and version < 3:
            image_ref.alpha = 0.05  # version 2 stored a 3 % threshold; its leave-one-out scores give the p-value
        ref = DomainReference(
            means={s: t[f"{s}.mean"] for s in SPACES},
            precisions={s: t[f"{s}.precision"] for s in SPACES},
            component_scale={s: float(meta["component_scale"][s]) for s in SPACES},
            cell_threshold=float(meta["cell_threshold"]),
            image_threshold=float(meta["image_threshold"]),
            channels=list(meta["channels"]),
            info={k: v for k, v in meta.items() if k not in ("component_scale", "cell_threshold", "image_threshold", "channels", "image_level", "domain_version",
                                                               "held_out_image_median_scores", "image_alpha", "image_confidence")},
            image_reference=image_ref,
            version=version,
            image_medians=np.asarray(meta.get("held_out_image_median_scores") or [], dtype=float),
            image_alpha=float(meta["image_alpha"]) if version >= 3 else 0.05,
            image_confidence=meta.get("image_confidence") if version >= 3 else 0.9,
        )
        if version < 3 and len(ref.image_medians):
            ref.image_threshold = image_median_threshold(ref.image_medians, ref.image_alpha / ref.n_image_criteria, ref.image_confidence)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise MechanoscopeError(f"{p}: domain.json / domain.safetensors could not be read ({exc}); copy the model folder again or retrain") from exc
    if version == 1:
        warnings.warn(f"{p / 'domain.json'}: domain reference version {version}, from before the image-level checks (pixel size, native image statistics); "
                      "only the crop-level domain check runs for this model — retrain it to get the image-level checks", OldDomainReferenceWarning, stacklevel=2)
    elif version < DOMAIN_VERSION:
        warnings.warn(f"{p / 'domain.json'}: domain reference version {version}: its image medians were calibrated on the labelled cells only, so images may be flagged "
                      "more often than the nominal 5 % — retrain the model with this version for a calibrated image-level check", OldDomainReferenceWarning, stacklevel=2)
    return ref


# the verdict columns and summaries live in domain_verdict (split for size); re-exported here
from mechanoscope.learn.domain_verdict import domain_columns, domain_summary, holm_reject, judge_images  # noqa: E402
