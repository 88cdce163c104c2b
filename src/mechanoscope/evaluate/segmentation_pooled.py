"""Segmentation scores over a data set: pooled as StarDist's ``matching_dataset``, tabulated per image.

The per-image scores come from :func:`mechanoscope.evaluate.segmentation.segmentation_scores`;
see that module for the definitions (IoU, matching, AP, PQ, Dice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate.segmentation import (
    AP_THRESHOLDS,
    _check_thresholds,
    _headline,
    _key,
    _scores_from_counts,
    segmentation_scores,
)

__all__ = ["aggregate_segmentation_scores", "segmentation_scores_dataset", "segmentation_table"]


def aggregate_segmentation_scores(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool the scores of several images as StarDist's ``matching_dataset`` does.

    TP, FP, FN and the summed matched IoU are added over images at each threshold and
    the ratios computed from the sums (so images with many objects weigh more than
    in a mean of per-image scores); Dice and Jaccard pool the foreground pixels.

    Parameters
    ----------
    scores
        Dicts returned by :func:`segmentation_scores` (or read back from its JSON),
        all with the same thresholds.

    Returns
    -------
    dict
        Same keys as :func:`segmentation_scores`; ``n_images``, ``n_true`` and
        ``n_pred`` are totals.

    Raises
    ------
    MechanoscopeError
        No scores, or scores computed at different thresholds.
    """
    scores = list(scores)
    if not scores:
        raise MechanoscopeError("scores: nothing to aggregate; give at least one image's scores")
    thr = [round(float(t), 10) for t in scores[0]["thresholds"]]
    for i, s in enumerate(scores[1:], start=1):
        other = [round(float(t), 10) for t in s["thresholds"]]
        if other != thr:
            raise MechanoscopeError(
                f"scores: image {i} was scored at IoU thresholds {other} but image 0 at "
                f"{thr}; score every image with the same thresholds"
            )
    n_true = int(sum(s["n_true"] for s in scores))
    n_pred = int(sum(s["n_pred"] for s in scores))
    per = []
    for k, t in enumerate(thr):
        tp = int(sum(s["per_threshold"][k]["tp"] for s in scores))
        fp = int(sum(s["per_threshold"][k]["fp"] for s in scores))
        fn = int(sum(s["per_threshold"][k]["fn"] for s in scores))
        sum_iou = float(sum(s["per_threshold"][k]["sum_matched_iou"] for s in scores))
        entry: dict[str, Any] = {"threshold": t, "tp": tp, "fp": fp, "fn": fn}
        entry.update(_scores_from_counts(tp, fp, fn, sum_iou, n_true, n_pred))
        entry["sum_matched_iou"] = sum_iou
        per.append(entry)
    fg = {
        key: int(sum(s["foreground"][key] for s in scores))
        for key in ("intersection_px", "true_px", "pred_px")
    }
    out: dict[str, Any] = {
        "n_images": int(sum(s.get("n_images", 1) for s in scores)),
        "n_true": n_true,
        "n_pred": n_pred,
        "thresholds": thr,
        "per_threshold": per,
        "foreground": fg,
    }
    out.update(_headline(per, fg))
    return out


def segmentation_scores_dataset(
    pairs: Iterable[tuple[Any, Any]], thresholds: Iterable[float] = AP_THRESHOLDS
) -> dict[str, Any]:
    """Pooled scores over ``(pred, true)`` label-image pairs (StarDist ``matching_dataset``).

    Parameters
    ----------
    pairs
        Iterable of ``(pred, true)`` label images; each pair must match in shape, pairs
        may differ from each other. A generator keeps only one pair in memory.
    thresholds
        IoU thresholds, see :func:`segmentation_scores`.

    Returns
    -------
    dict
        See :func:`aggregate_segmentation_scores`.
    """
    thr = _check_thresholds(thresholds)
    per_image = []
    for i, (p, t) in enumerate(pairs):
        try:
            per_image.append(segmentation_scores(p, t, thr))
        except MechanoscopeError as exc:
            raise MechanoscopeError(f"pair {i}: {exc}") from None
    return aggregate_segmentation_scores(per_image)


_TABLE_HEADLINE = (
    "n_true", "n_pred", "ap_50", "ap_75", "ap_50_95", "f1_50", "precision_50",
    "recall_50", "pq", "sq", "dice", "jaccard",
)


def segmentation_table(
    scores: Mapping[str, Mapping[str, Any]] | Sequence[Mapping[str, Any]],
) -> pd.DataFrame:
    """One row per image of segmentation scores.

    Parameters
    ----------
    scores
        Per-image dicts from :func:`segmentation_scores`, either a mapping
        ``image_id -> scores`` or a sequence (then ``image_id`` is the position).

    Returns
    -------
    pandas.DataFrame
        Columns ``image_id``, the headline numbers (``n_true``, ``n_pred``, ``ap_50``,
        ``ap_75``, ``ap_50_95``, ``f1_50``, ``precision_50``, ``recall_50``, ``pq``,
        ``sq``, ``dice``, ``jaccard``) and ``ap_<t>`` for each IoU threshold ``t`` in
        percent (``ap_50``, ``ap_55``, ...; those already listed are not repeated).
    """
    items = list(scores.items()) if isinstance(scores, Mapping) else list(enumerate(scores))
    rows = []
    for image_id, s in items:
        row: dict[str, Any] = {"image_id": image_id}
        row.update({k: s.get(k) for k in _TABLE_HEADLINE})
        for d in s["per_threshold"]:
            row.setdefault(f"ap_{_key(d['threshold'])}", d["ap"])
        rows.append(row)
    columns = ["image_id", *_TABLE_HEADLINE]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=columns)
    extra = [c for c in table.columns if c not in columns]
    return table[columns + extra]
