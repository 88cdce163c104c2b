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
95 %) on the **held-out** validation + calibration cells (images the weights never
learnt from; calibration only after a refit), the cell's score is the larger of the
two, and ``domain_score`` is that divided by its own ``cell_quantile`` on the same
held-out cells: ``domain_score > 1`` means out of domain, and by construction about
5 % of cells of images acquired like the training images are flagged. An image is
out of domain when the median ``domain_score`` of its cells exceeds
``image_threshold``: the ``image_quantile`` of the held-out images' medians (times
``image_margin``), so an image-level flag says "imaged unlike the training images"
rather than "one odd cell".

The image threshold is an upper prediction bound for one more image's median score:
on the log of the held-out images' medians, mean + t₍₁₋α, n−1₎ · sd · √(1 + 1/n)
(α = ``image_alpha``, default 0.01; a finite-sample rule for the few held-out images
there are), and never below their largest median.

Crops are resampled to the model's pixel size, which hides a change of pixel size and
much of a change of noise or focus; the image-level reference of
:mod:`mechanoscope.learn.domain_image` (pixel-size range of the training images,
native-image statistics calibrated leave-one-image-out) adds that evidence, and each
image flagged says why (``pred_image_domain_reason``).

The reference (``domain.safetensors``: means and precision matrices; ``domain.json``:
thresholds, the image-level reference and what they were calibrated on;
``domain_version`` 2) is written into the model folder at training. A model folder
without it still predicts, with a :class:`NoDomainReferenceWarning`; a folder with a
version-1 reference (before the image-level checks) predicts with the crop-level check
only and an :class:`OldDomainReferenceWarning`.
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
DOMAIN_VERSION = 2


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
    gram = np.einsum("np,pi,pj->nij", wgt, design, design)
    rhs = np.einsum("np,pi->ni", wgt * img.reshape(n, -1), design)
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
        An image is out of domain when the median ``domain_score`` of its cells exceeds it.
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
            "score": "domain_score = combined score / cell_threshold; > 1 = out of domain; image out of domain when the median domain_score of its cells > image_threshold, or when its pixel size or native image statistics lie outside the training images' (image_level)",
            **self.info,
            "domain_version": DOMAIN_VERSION,
            "image_level": self.image_reference.to_dict() if self.image_reference is not None else None,
        }
        return {"domain.json": json.dumps(meta, indent=2), "domain.safetensors": save(tensors)}


def _quantile(v: np.ndarray, q: float) -> float:
    v = np.asarray(v, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.quantile(v, q, method="higher")) if v.size else float("nan")


def image_median_threshold(medians: np.ndarray, alpha: float = 0.01) -> float:
    """Upper ``1 − alpha`` prediction bound for one more image's median ``domain_score``.

    On the log of the held-out images' medians (n of them): mean + t₍₁₋α, n−1₎ · sd ·
    √(1 + 1/n) — the normal-theory prediction interval, whose t quantile and √(1 + 1/n)
    are the finite-sample correction for estimating mean and sd from few images — and
    never below the largest median seen.
    """
    from scipy.special import stdtrit  # Student t quantile (lighter to import than scipy.stats)

    m = np.asarray(medians, dtype=float)
    m = m[np.isfinite(m) & (m > 0)]
    if not len(m):
        return 1.0
    if len(m) < 3:
        return float(m.max() * 1.5)
    lm = np.log(m)
    bound = lm.mean() + stdtrit(len(m) - 1, 1 - alpha) * lm.std(ddof=1) * np.sqrt(1 + 1 / len(m))
    return float(max(np.exp(bound), m.max(), 1e-9))


def fit_domain_reference(
    train_features: np.ndarray,
    train_stats: np.ndarray,
    held_features: np.ndarray,
    held_stats: np.ndarray,
    held_groups: np.ndarray,
    *,
    channels: list[str],
    cell_quantile: float = 0.95,
    image_alpha: float = 0.01,
    held_out_splits: str = "val + calibration",
    image_reference: ImageDomainReference | None = None,
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
        Level of the image threshold: an upper ``1 − image_alpha`` prediction bound
        for one more image's median score (:func:`image_median_threshold`).
    image_reference
        The image-level reference (:func:`~mechanoscope.learn.domain_image.fit_image_reference`).

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
    medians = pd.Series(s).groupby(held_groups).median()
    ref.image_threshold = image_median_threshold(medians.to_numpy(), image_alpha)
    ref.image_reference = image_reference
    ref.info = {
        "n_reference_cells": int(len(train_features)),
        "n_held_out_cells": int(len(held_features)),
        "n_held_out_images": int(len(medians)),
        "held_out_splits": held_out_splits,
        "cell_quantile": cell_quantile,
        "image_alpha": image_alpha,
        "image_threshold_rule": "upper prediction bound on log median scores of the held-out images: mean + t(1-alpha, n-1) sd sqrt(1 + 1/n), at least their largest median",
        "held_out_fraction_flagged": float(np.mean(s > 1)),
        "held_out_image_median_scores": [float(v) for v in medians.to_numpy()],
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
        ref = DomainReference(
            means={s: t[f"{s}.mean"] for s in SPACES},
            precisions={s: t[f"{s}.precision"] for s in SPACES},
            component_scale={s: float(meta["component_scale"][s]) for s in SPACES},
            cell_threshold=float(meta["cell_threshold"]),
            image_threshold=float(meta["image_threshold"]),
            channels=list(meta["channels"]),
            info={k: v for k, v in meta.items() if k not in ("component_scale", "cell_threshold", "image_threshold", "channels", "image_level", "domain_version")},
            image_reference=image_ref,
            version=version,
        )
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise MechanoscopeError(f"{p}: domain.json / domain.safetensors could not be read ({exc}); copy the model folder again or retrain") from exc
    if version < DOMAIN_VERSION:
        warnings.warn(f"{p / 'domain.json'}: domain reference version {version}, from before the image-level checks (pixel size, native image statistics); "
                      "only the crop-level domain check runs for this model — retrain it to get the image-level checks", OldDomainReferenceWarning, stacklevel=2)
    return ref


# --------------------------------------------------------------------------- columns
def judge_images(reference: DomainReference | None, table: pd.DataFrame, local_background: np.ndarray | None = None,
                 background_noise: np.ndarray | None = None) -> pd.DataFrame | None:
    """Image-level verdict (:meth:`ImageDomainReference.judge`) per ``image_id`` of ``table``, or None without an image-level reference."""
    if reference is None or reference.image_reference is None or not len(table):
        return None
    from mechanoscope.learn.domain_image import image_statistics

    return reference.image_reference.judge(image_statistics(table, local_background, background_noise))


def domain_columns(reference: DomainReference | None, scores: np.ndarray | None, table: pd.DataFrame, target: str, *, where: str = "model",
                   image_judgement: pd.DataFrame | None = None) -> pd.DataFrame:
    """Domain columns of one model's predictions, row-aligned with ``table``.

    ``pred_domain_score_<target>`` (> 1: out of domain), ``pred_in_domain_<target>``,
    ``pred_image_in_domain_<target>`` (the median score of the cell's image is below
    the image threshold and, with ``image_judgement`` (:func:`judge_images`), the
    image's pixel size and native statistics lie within the training images'),
    ``pred_image_domain_reason_<target>`` (why the image is out of domain; empty when
    in), ``pred_image_domain_score_<target>`` (the largest of the image's criteria,
    each in units of its threshold: > 1 out of domain); then ``pred_in_domain``, ``pred_image_in_domain`` (every model of the table,
    this one included, says so) and ``pred_image_domain_reason`` (the reasons of all
    models). Without a reference a :class:`NoDomainReferenceWarning` is issued and only
    the combined columns of other models are carried.
    """
    out = pd.DataFrame(index=table.index)
    if reference is None or scores is None:
        warnings.warn(f"{where}: the model folder has no applicability-domain reference (a features baseline, a CNN trained before mechanoscope had one, or one trained without held-out images); no domain check was possible for its predictions — retrain a CNN with validation/calibration images to get one", NoDomainReferenceWarning, stacklevel=3)
    else:
        s = np.asarray(scores, dtype=float)
        out[f"pred_domain_score_{target}"] = s
        out[f"pred_in_domain_{target}"] = s <= 1.0
        groups = table["image_id"].astype(str).to_numpy() if "image_id" in table.columns else np.zeros(len(table), dtype=str)
        med = pd.Series(s, index=table.index).groupby(groups).transform("median").to_numpy()
        thr = float(reference.image_threshold)
        reason = np.where(med > thr, np.char.mod(f"median crop domain score %.2f above the threshold {thr:.2f} (the cells look unlike the training cells)", med), "")
        reason = reason.astype(object)
        img_score = med / thr
        if image_judgement is not None and len(image_judgement):
            j = image_judgement.reindex(groups)
            jr = j["reason"].fillna("").to_numpy(dtype=object)
            reason = np.array(["; ".join(r for r in pair if r) for pair in zip(reason, jr)], dtype=object)
            factor = float(reference.image_reference.pixel_size_factor)
            px_score = np.abs(np.log(j["pixel_size_ratio"].to_numpy(float))) / np.log(factor) if factor > 1 else np.zeros(len(j))
            img_score = np.fmax(img_score, np.fmax(j["image_stats_score"].to_numpy(float), px_score))
        out[f"pred_image_domain_score_{target}"] = img_score
        out[f"pred_image_in_domain_{target}"] = reason == ""
        out[f"pred_image_domain_reason_{target}"] = reason
    both = pd.concat([table.drop(columns=[c for c in out.columns if c in table.columns]), out], axis=1)
    for name, prefix in (("pred_in_domain", "pred_in_domain_"), ("pred_image_in_domain", "pred_image_in_domain_")):
        cols = [c for c in both.columns if str(c).startswith(prefix)]
        if cols:
            out[name] = both[cols].astype(bool).all(axis=1).to_numpy()
    rcols = [c for c in both.columns if str(c).startswith("pred_image_domain_reason_")]
    if rcols:
        out["pred_image_domain_reason"] = [
            "; ".join(dict.fromkeys(part for r in row if isinstance(r, str) for part in r.split("; ") if part))
            for row in both[rcols].itertuples(index=False)
        ]
    return out


def domain_summary(table: pd.DataFrame, models: list | None = None) -> dict:
    """Per model and per image: how many cells and images lie outside the training domain.

    Parameters
    ----------
    table : the cell table with ``pred_domain_score_<target>`` columns.
    models : the loaded models of the run (their ``target`` and whether they have a
        reference); default: every target with domain columns in the table.

    Returns
    -------
    dict with ``models`` (per target: ``checked``, ``n_cells``, ``n_cells_out``,
    ``fraction_cells_out``, ``n_images``, ``images_out`` (ids), ``median_score``),
    ``images`` (per image: cells, fraction of cells out, in domain for all models,
    ``reason``), ``intervals`` (how many cells have ``pred_interval_calibrated`` false;
    None without a regression model) and ``note``: plain sentences for the CLI's last
    lines and the report.
    """
    targets: list[tuple[str, bool]] = []
    if models is not None:
        for m in models:
            t = m.config["target"]
            targets.append((t, getattr(m, "domain", None) is not None and f"pred_domain_score_{t}" in table.columns))
    else:
        targets = [(str(c)[len("pred_domain_score_"):], True) for c in table.columns if str(c).startswith("pred_domain_score_")]
    per_model: dict = {}
    notes: list[str] = []
    for t, checked in targets:
        if not checked:
            per_model[t] = {"checked": False, "note": f"model {t}: no applicability-domain reference in its folder, so no domain check was possible"}
            notes.append(per_model[t]["note"])
            continue
        s = table[f"pred_domain_score_{t}"].to_numpy(dtype=float)
        img_ok = table.groupby("image_id")[f"pred_image_in_domain_{t}"].first() if len(table) else pd.Series(dtype=bool)
        out_imgs = sorted(map(str, img_ok.index[~img_ok.astype(bool)]))
        rc = f"pred_image_domain_reason_{t}"
        why = table.groupby("image_id")[rc].first() if rc in table.columns and len(table) else pd.Series(dtype=object)
        per_model[t] = {
            "checked": True,
            "n_cells": int(len(s)),
            "n_cells_out": int((s > 1).sum()),
            "fraction_cells_out": float(np.mean(s > 1)) if len(s) else None,
            "median_score": float(np.median(s)) if len(s) else None,
            "n_images": int(len(img_ok)),
            "n_images_out": len(out_imgs),
            "images_out": out_imgs,
            "reasons": {i: str(why.get(i, "")) for i in out_imgs} if len(why) else {},
        }
        if out_imgs:
            first = per_model[t]["reasons"].get(out_imgs[0]) if per_model[t]["reasons"] else None
            notes.append(f"model {t}: {len(out_imgs)} of {len(img_ok)} images look unlike its training images; predictions there are extrapolations and their intervals are not calibrated"
                         + (f" (e.g. {out_imgs[0]}: {first})" if first else ""))
    images: list[dict] = []
    if len(table) and "pred_in_domain" in table.columns:
        for image_id, grp in table.groupby("image_id", sort=True):
            images.append({"image_id": str(image_id), "n_cells": int(len(grp)), "fraction_cells_out": float(1 - grp["pred_in_domain"].astype(bool).mean()),
                           "in_domain": bool(grp["pred_image_in_domain"].astype(bool).all()) if "pred_image_in_domain" in grp else None,
                           "reason": str(grp["pred_image_domain_reason"].iloc[0]) if "pred_image_domain_reason" in grp else ""})
    intervals = None
    if len(table) and "pred_interval_calibrated" in table.columns:
        ok = table["pred_interval_calibrated"].astype(bool)
        intervals = {"n_cells": int(len(ok)), "n_not_calibrated": int((~ok).sum()),
                     "meaning": "pred_interval_calibrated is false where the cell or its image lies outside the regression model's training domain (or no domain check was possible): the interval columns are kept, but their nominal coverage is not claimed there"}
        if (~ok).any():
            notes.append(f"{int((~ok).sum())} of {len(ok)} cells have intervals marked not calibrated (pred_interval_calibrated false) because they or their image lie outside the training domain")
    if not notes and any(v.get("checked") for v in per_model.values()):
        notes.append("every image lies within the training domain of the models")
    return {"models": per_model, "images": images, "intervals": intervals, "note": "; ".join(notes) if notes else "no model to check"}
