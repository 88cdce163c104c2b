"""Instance-segmentation metrics over integer label images.

All functions take label images (integer arrays, ``0`` = background, one id per
instance; ids need not be consecutive) of any dimensionality, ``(Y, X)`` or
``(Z, Y, X)``, and compare a prediction with a ground truth of the same shape.

Metrics follow StarDist's ``matching``/``matching_dataset`` and Cellpose's
``average_precision``:

* **IoU** of a true and a predicted object: ``|T ∩ P| / |T ∪ P|``, computed for all
  pairs at once from a joint histogram of the two label images (``np.bincount``),
  never with a loop over objects.
* **Matching** at an IoU threshold ``t``: an optimal one-to-one assignment (Hungarian
  algorithm, :func:`scipy.optimize.linear_sum_assignment`) that first maximises the
  number of pairs with ``IoU >= t`` and then their summed IoU; only pairs with
  ``IoU >= t`` count as matches. For ``t >= 0.5`` a pair above the threshold is
  unique, so the matching is the same as a greedy one.
* ``tp`` matched pairs, ``fp`` unmatched predictions, ``fn`` unmatched true objects;
  ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
  ``f1 = 2 tp / (2 tp + fp + fn)``.
* **Average precision** as used by StarDist and Cellpose (not the area under a
  precision-recall curve): ``ap = tp / (tp + fp + fn)``.
* **Panoptic quality** ``pq = sq * rq`` with segmentation quality ``sq`` = mean IoU of
  the matched pairs and recognition quality ``rq`` = ``f1``.
* Foreground (semantic) **Dice** ``2 |T ∩ P| / (|T| + |P|)`` and **Jaccard**
  ``|T ∩ P| / |T ∪ P|`` of the masks ``true > 0`` and ``pred > 0``.

Empty images (no objects) never divide by zero: when truth and prediction are both
empty every score is ``1.0`` (a perfect result); when only one of them is empty
every ratio whose denominator is zero is ``0.0`` and the others follow from their
formula (precision and recall are ``0.0``, AP, F1, SQ and PQ are ``0.0``).

Scores of one image live here; pooling them over a data set and tabulating them per
image is :mod:`mechanoscope.evaluate.segmentation_pooled`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from mechanoscope.errors import MechanoscopeError

__all__ = [
    "AP_THRESHOLDS",
    "InstanceMatch",
    "OverlapTable",
    "overlap_table",
    "iou_matrix",
    "match_instances",
    "segmentation_scores",
]

#: IoU thresholds of the COCO/StarDist/Cellpose "AP@[0.5:0.95]" grid: 0.50, 0.55, ..., 0.95.
AP_THRESHOLDS: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)

# joint histograms larger than this many bins are counted with np.unique instead of
# np.bincount (both are exact; this only bounds memory for images with many objects)
_MAX_DENSE_BINS = 1 << 24


# --------------------------------------------------------------------------- inputs
def _check_labels(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype == bool:
        raise MechanoscopeError(
            f"{name}: got a boolean mask, but instance metrics need a label image with one "
            "integer id per object; label the mask first, e.g. skimage.measure.label(mask)"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise MechanoscopeError(
            f"{name}: a label image must hold non-negative integer ids (0 = background), "
            f"got dtype {arr.dtype}; convert integral values with .astype(int)"
        )
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise MechanoscopeError(
            f"{name}: a label image must hold non-negative ids (0 = background), found "
            f"the negative id {int(arr.min())}"
        )
    return arr


def _check_pair(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _check_labels(pred, "pred")
    t = _check_labels(true, "true")
    if p.shape != t.shape:
        raise MechanoscopeError(
            f"pred has shape {p.shape} but true has shape {t.shape}; both label images "
            "must cover the same pixels (same shape)"
        )
    return p, t


def _check_thresholds(thresholds: Iterable[float] | float) -> list[float]:
    values = [thresholds] if np.isscalar(thresholds) else list(thresholds)  # type: ignore[list-item]
    if not values:
        raise MechanoscopeError("thresholds: give at least one IoU threshold, e.g. 0.5")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise MechanoscopeError(f"thresholds: {v!r} is not a number") from None
        if not (0.0 < f <= 1.0):
            raise MechanoscopeError(
                f"thresholds: IoU threshold {f} is outside (0, 1]; use values such as 0.5"
            )
        # drop floating-point noise such as np.arange's 0.6000000000000001
        out.append(round(f, 10))
    return sorted(set(out))


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to ``0`` (background) and ``1..n``; return ``(dense, ids)``.

    ``dense`` is a flat ``intp`` array; ``ids[k - 1]`` is the original id of dense
    index ``k`` (sorted ascending).
    """
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)
    top = int(flat.max())
    if top <= max(4 * flat.size, 1 << 20):
        present = np.flatnonzero(np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1))
        ids = present[present > 0]
        lut = np.zeros(top + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids.astype(np.int64)
    uniq, inverse = np.unique(flat, return_inverse=True)
    if uniq[0] == 0:
        return inverse.astype(np.intp), uniq[1:].astype(np.int64)
    return inverse.astype(np.intp) + 1, uniq.astype(np.int64)


# --------------------------------------------------------------------------- overlap
@dataclass(frozen=True)
class OverlapTable:
    """Pixel overlaps between the objects of two label images, in sparse form.

    Attributes
    ----------
    true_ids, pred_ids
        Object ids present in ``true`` and ``pred``, shapes ``(n_true,)`` and
        ``(n_pred,)``, ascending.
    true_area_px, pred_area_px
        Object areas (volumes) in pixels, shapes ``(n_true,)`` and ``(n_pred,)``.
    pair_true, pair_pred
        Indices into ``true_ids`` / ``pred_ids`` of every pair of objects that share
        at least one pixel, shape ``(n_pairs,)``.
    pair_intersection_px
        Shared pixels of each pair, shape ``(n_pairs,)``.
    pair_iou
        IoU of each pair, shape ``(n_pairs,)``, in ``(0, 1]``.
    fg_intersection_px, fg_true_px, fg_pred_px
        Pixels that are foreground in both images, in ``true``, and in ``pred``.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area_px: np.ndarray
    pred_area_px: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_intersection_px: np.ndarray
    pair_iou: np.ndarray
    fg_intersection_px: int
    fg_true_px: int
    fg_pred_px: int

    @property
    def n_true(self) -> int:
        """Number of true objects."""
        return int(self.true_ids.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted objects."""
        return int(self.pred_ids.size)

    def dense_iou(self) -> np.ndarray:
        """IoU of every (true, pred) pair, shape ``(n_true, n_pred)``, zeros where disjoint."""
        iou = np.zeros((self.n_true, self.n_pred), dtype=np.float64)
        iou[self.pair_true, self.pair_pred] = self.pair_iou
        return iou


def overlap_table(pred: Any, true: Any) -> OverlapTable:
    """Count the pixel overlaps of all object pairs with one joint histogram.

    Parameters
    ----------
    pred, true
        Label images of the same shape, any number of dimensions; non-negative
        integers, ``0`` = background.

    Returns
    -------
    OverlapTable
        Areas, overlapping pairs and their IoU. Cost is ``O(pixels)`` plus
        ``O(n_true * n_pred)`` memory only while that stays below ~16 M bins.

    Raises
    ------
    MechanoscopeError
        Different shapes, non-integer or negative labels.
    """
    p, t = _check_pair(pred, true)
    dp, pred_ids = _dense_ids(p)
    dt, true_ids = _dense_ids(t)
    n_p, n_t = pred_ids.size, true_ids.size
    true_area = np.bincount(dt, minlength=n_t + 1)
    pred_area = np.bincount(dp, minlength=n_p + 1)
    n_bins = (n_t + 1) * (n_p + 1)
    code = dt * (n_p + 1) + dp
    if n_bins <= _MAX_DENSE_BINS:
        joint = np.bincount(code, minlength=n_bins)
        codes = np.flatnonzero(joint)
        counts = joint[codes]
    else:
        codes, counts = np.unique(code, return_counts=True)
    ti, pj = np.divmod(codes, n_p + 1)
    keep = (ti > 0) & (pj > 0)
    fg_inter = int(counts[keep].sum())
    ti, pj, inter = ti[keep] - 1, pj[keep] - 1, counts[keep].astype(np.int64)
    ta, pa = true_area[1:].astype(np.int64), pred_area[1:].astype(np.int64)
    iou = inter / (ta[ti] + pa[pj] - inter)
    return OverlapTable(
        true_ids=true_ids,
        pred_ids=pred_ids,
        true_area_px=ta,
        pred_area_px=pa,
        pair_true=ti.astype(np.intp),
        pair_pred=pj.astype(np.intp),
        pair_intersection_px=inter,
        pair_iou=iou.astype(np.float64),
        fg_intersection_px=fg_inter,
        fg_true_px=int(ta.sum()),
        fg_pred_px=int(pa.sum()),
    )


def iou_matrix(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every pair of true and predicted objects.

    Parameters
    ----------
    pred, true
        Label images of the same shape (``0`` = background).

    Returns
    -------
    iou : ndarray, shape (n_true, n_pred)
        ``iou[i, j]`` is the IoU of true object ``true_ids[i]`` and predicted object
        ``pred_ids[j]`` (``0`` where they do not touch).
    true_ids : ndarray, shape (n_true,)
        Ids of the true objects, ascending.
    pred_ids : ndarray, shape (n_pred,)
        Ids of the predicted objects, ascending.
    """
    ov = overlap_table(pred, true)
    return ov.dense_iou(), ov.true_ids, ov.pred_ids


# --------------------------------------------------------------------------- matching
@dataclass(frozen=True)
class InstanceMatch:
    """Result of matching predicted to true objects at one IoU threshold.

    Attributes
    ----------
    threshold
        IoU threshold a pair needs to count as a match.
    n_true, n_pred
        Number of true and predicted objects.
    tp, fp, fn
        Matched pairs, unmatched predictions, unmatched true objects.
    precision, recall, f1
        ``tp/(tp+fp)``, ``tp/(tp+fn)``, ``2tp/(2tp+fp+fn)``.
    ap
        StarDist/Cellpose average precision ``tp/(tp+fp+fn)``.
    mean_matched_iou
        Mean IoU of the matched pairs; this is the panoptic segmentation quality SQ.
    pq
        Panoptic quality ``SQ * RQ`` with ``RQ = f1``.
    sum_matched_iou
        Summed IoU of the matched pairs (for pooling over images).
    true_ids, pred_ids, ious
        The matched pairs: original ids in ``true`` and ``pred`` and their IoU, each of
        shape ``(tp,)``, sorted by true id.

    Notes
    -----
    With no true and no predicted objects every score is 1.0; otherwise a ratio whose
    denominator is zero is 0.0.
    """

    threshold: float
    n_true: int
    n_pred: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float
    mean_matched_iou: float
    pq: float
    sum_matched_iou: float
    true_ids: np.ndarray = field(repr=False)
    pred_ids: np.ndarray = field(repr=False)
    ious: np.ndarray = field(repr=False)

    @property
    def sq(self) -> float:
        """Segmentation quality: mean IoU of the matched pairs."""
        return self.mean_matched_iou

    @property
    def rq(self) -> float:
        """Recognition quality: the F1 score."""
        return self.f1

    def as_dict(self) -> dict[str, float | int]:
        """Scalar scores as a JSON-ready dict (no matched-pair arrays)."""
        return {
            "threshold": self.threshold,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "ap": self.ap,
            "mean_matched_iou": self.mean_matched_iou,
            "pq": self.pq,
            "sum_matched_iou": self.sum_matched_iou,
        }


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if both_empty:
        return 1.0
    return float(num) / float(den) if den > 0 else 0.0


def _scores_from_counts(
    tp: int, fp: int, fn: int, sum_iou: float, n_true: int, n_pred: int
) -> dict[str, float]:
    empty = n_true == 0 and n_pred == 0
    sq = _ratio(sum_iou, tp, empty)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, empty)
    return {
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
        "f1": f1,
        "ap": _ratio(tp, tp + fp + fn, empty),
        "mean_matched_iou": sq,
        "pq": sq * f1,
    }


def _assign(ov: OverlapTable, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching among pairs with IoU >= threshold.

    Returns indices into ``true_ids``/``pred_ids`` and the IoU of the matched pairs.
    """
    cand = ov.pair_iou >= threshold
    ti, pj, iou = ov.pair_true[cand], ov.pair_pred[cand], ov.pair_iou[cand]
    if ti.size == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, np.zeros(0)
    # each object in at most one candidate pair (always so for threshold > 0.5): done
    if np.unique(ti).size == ti.size and np.unique(pj).size == pj.size:
        return ti, pj, iou
    rows, r_inv = np.unique(ti, return_inverse=True)
    cols, c_inv = np.unique(pj, return_inverse=True)
    # StarDist's cost: maximise the number of matches, break ties by summed IoU
    n_matched = min(rows.size, cols.size)
    score = np.zeros((rows.size, cols.size))
    score[r_inv, c_inv] = 1.0 + iou / (2.0 * n_matched)
    r, c = linear_sum_assignment(score, maximize=True)
    ok = score[r, c] > 0
    r, c = r[ok], c[ok]
    dense = np.zeros((rows.size, cols.size))
    dense[r_inv, c_inv] = iou
    return rows[r], cols[c], dense[r, c]


def _match(ov: OverlapTable, threshold: float) -> InstanceMatch:
    ti, pj, iou = _assign(ov, threshold)
    order = np.argsort(ti, kind="stable")
    ti, pj, iou = ti[order], pj[order], iou[order]
    tp = int(ti.size)
    fp, fn = ov.n_pred - tp, ov.n_true - tp
    sum_iou = float(iou.sum())
    s = _scores_from_counts(tp, fp, fn, sum_iou, ov.n_true, ov.n_pred)
    return InstanceMatch(
        threshold=float(threshold),
        n_true=ov.n_true,
        n_pred=ov.n_pred,
        tp=tp,
        fp=fp,
        fn=fn,
        sum_matched_iou=sum_iou,
        true_ids=ov.true_ids[ti],
        pred_ids=ov.pred_ids[pj],
        ious=iou,
        **s,
    )


def match_instances(pred: Any, true: Any, iou_threshold: float = 0.5) -> InstanceMatch:
    """Match predicted to true objects one-to-one and count TP, FP and FN.

    Parameters
    ----------
    pred, true
        Label images of the same shape, e.g. ``(Y, X)`` or ``(Z, Y, X)``; non-negative
        integers, ``0`` = background, one id per object (ids need not be consecutive).
    iou_threshold
        Minimum IoU, in ``(0, 1]``, for a pair to count as a match.

    Returns
    -------
    InstanceMatch
        Counts, precision, recall, F1, AP = TP/(TP+FP+FN), mean matched IoU (SQ),
        PQ and the matched pairs. Both images empty gives 1.0 for every score; one
        empty gives 0.0 (see the module docstring).

    Raises
    ------
    MechanoscopeError
        Shapes differ (both are named), labels are not non-negative integers, or the
        threshold is outside ``(0, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.zeros((4, 4), int); t[:2, :2] = 1
    >>> match_instances(t, t).ap
    1.0
    """
    (thr,) = _check_thresholds([iou_threshold])
    return _match(overlap_table(pred, true), thr)


# --------------------------------------------------------------------------- scores
def _key(t: float) -> str:
    return f"{t * 100:.10g}"


def _headline(per: list[dict[str, Any]], fg: dict[str, int]) -> dict[str, Any]:
    by_thr = {d["threshold"]: d for d in per}
    at50 = by_thr.get(0.5)
    at75 = by_thr.get(0.75)
    grid = [by_thr[t]["ap"] for t in AP_THRESHOLDS if t in by_thr]
    inter, tpx, ppx = fg["intersection_px"], fg["true_px"], fg["pred_px"]
    union = tpx + ppx - inter
    empty_fg = tpx == 0 and ppx == 0
    return {
        "ap_50": at50["ap"] if at50 else None,
        "ap_75": at75["ap"] if at75 else None,
        "ap_50_95": float(np.mean(grid)) if len(grid) == len(AP_THRESHOLDS) else None,
        "f1_50": at50["f1"] if at50 else None,
        "precision_50": at50["precision"] if at50 else None,
        "recall_50": at50["recall"] if at50 else None,
        "pq": at50["pq"] if at50 else None,
        "sq": at50["mean_matched_iou"] if at50 else None,
        "dice": 1.0 if empty_fg else 2.0 * inter / (tpx + ppx),
        "jaccard": 1.0 if empty_fg else inter / union,
    }


def segmentation_scores(
    pred: Any, true: Any, thresholds: Iterable[float] = AP_THRESHOLDS
) -> dict[str, Any]:
    """All instance and foreground scores of one prediction, as a JSON-ready dict.

    Parameters
    ----------
    pred, true
        Label images of the same shape (``0`` = background).
    thresholds
        IoU thresholds to match at, each in ``(0, 1]``. The default is the standard
        grid 0.50, 0.55, ..., 0.95 (:data:`AP_THRESHOLDS`).

    Returns
    -------
    dict
        ``n_images`` (1), ``n_true``, ``n_pred``, ``thresholds`` and ``per_threshold``
        (one dict per threshold with ``tp``, ``fp``, ``fn``, ``precision``, ``recall``,
        ``f1``, ``ap``, ``mean_matched_iou``, ``pq``, ``sum_matched_iou``), the
        headline numbers ``ap_50``, ``ap_75``, ``ap_50_95`` (mean AP over
        0.50..0.95), ``f1_50``, ``precision_50``, ``recall_50``, ``pq`` and ``sq``
        (panoptic and segmentation quality at IoU 0.5), foreground ``dice`` and
        ``jaccard``, and the raw ``foreground`` pixel counts. A headline number is
        ``None`` when ``thresholds`` lacks the thresholds it needs. Every value is a
        plain ``int``/``float``/``list``/``dict``, ready for
        :func:`mechanoscope.io.write_json`. Empty images: see the module docstring.

    Raises
    ------
    MechanoscopeError
        Shapes differ, labels are not non-negative integers, or a threshold is
        outside ``(0, 1]``.
    """
    thr = _check_thresholds(thresholds)
    ov = overlap_table(pred, true)
    per = [_match(ov, t).as_dict() for t in thr]
    fg = {
        "intersection_px": ov.fg_intersection_px,
        "true_px": ov.fg_true_px,
        "pred_px": ov.fg_pred_px,
    }
    out: dict[str, Any] = {
        "n_images": 1,
        "n_true": ov.n_true,
        "n_pred": ov.n_pred,
        "thresholds": thr,
        "per_threshold": per,
        "foreground": fg,
    }
    out.update(_headline(per, fg))
    return out
