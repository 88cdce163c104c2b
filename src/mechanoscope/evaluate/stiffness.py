"""Stiffness metrics: classification (soft/stiff, any classes) and regression (modulus in Pa).

Pure functions over arrays and tables, plus :func:`evaluate_run`, which scores a run
folder written by ``mechanoscope predict`` and writes ``RUN/evaluation.json`` and
``RUN/figures/*.png``.

Classification (:func:`classification_metrics`)
    ``prob`` is ``(N, K)``, one column per class in the order of ``classes``; rows sum
    to 1. The predicted class is the arg-max unless ``y_pred`` is given.

    * **AUC**: area under the ROC curve; binary: of the positive class (default
      ``classes[1]``, e.g. ``"stiff"``); more classes: one-vs-rest, macro average over
      the classes that occur (and are absent for some cells) in the truth.
    * **F1**: binary: of the positive class; more classes: macro average.
    * **Accuracy**, **balanced accuracy** (mean recall over the true classes),
      **confusion matrix** (rows = true class, columns = predicted class).
    * **Expected calibration error** (Guo et al. 2017): top-label confidence
      ``max_k prob`` in 15 equal-width bins on [0, 1];
      ``ECE = Σ_b (n_b / N) |accuracy_b − confidence_b|``.
    * **Brier score**: binary: ``mean((p_pos − y_pos)²)`` (scikit-learn's
      ``brier_score_loss``; 0 perfect, 0.25 for a constant 0.5); more classes:
      ``mean(Σ_k (p_k − y_k)²)`` (Brier's original multi-class score, range 0–2).

Regression (:func:`regression_metrics`), Young's modulus ``E`` in Pa
    * **APE** (absolute percentage error) ``|E_pred − E_true| / E_true · 100``, its
      mean (the published CNN regressor: 57 %) and median. APE is asymmetric: an
      under-prediction is at most 100 %, an over-prediction is unbounded.
    * **Pearson** and **Spearman** correlation of ``log10 E``, **RMSE** of
      ``log10 E`` (decades).
    * **Bland–Altman** on ``log10 E``: ``d = log10 E_pred − log10 E_true``;
      bias ``mean(d)``, 95 % limits of agreement ``bias ± 1.96 SD(d)``, also as
      fold-change factors ``10**bias`` and ``10**limit``.
    * **Interval coverage**: fraction of cells with ``lo ≤ E_true ≤ hi``, and the
      interval width as a fold ``hi / lo`` (geometric mean and median).

Figures are functions ``*_png(...)`` that return PNG bytes (matplotlib, Agg backend).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError
from mechanoscope.report.figures import figure_to_png_bytes

__all__ = [
    "ECE_BINS",
    "FIGURE_NAMES",
    "classification_metrics",
    "regression_metrics",
    "reliability_bins",
    "summarize_by_condition",
    "compare_conditions",
    "evaluate_run",
    "roc_png",
    "confusion_matrix_png",
    "reliability_png",
    "predicted_vs_measured_png",
    "bland_altman_png",
    "condition_distribution_png",
    "class_fraction_png",
    "crop_gallery_png",
    "stiffness_gallery_png",
]

#: Number of equal-width confidence bins of the expected calibration error.
ECE_BINS = 15

#: Figure files that :func:`evaluate_run` may write into ``RUN/figures/`` (name → title).
FIGURE_NAMES: dict[str, str] = {
    "roc": "ROC curve",
    "confusion_matrix": "Confusion matrix",
    "reliability": "Reliability diagram",
    "predicted_vs_measured": "Predicted vs measured stiffness",
    "bland_altman": "Bland–Altman agreement",
    "stiffness_by_condition": "Predicted stiffness per condition",
    "class_by_condition": "Predicted class per condition",
    "crop_gallery": "Example cells",
}

_PROB_PREFIX = "pred_prob_"


# =========================================================================== helpers
def _none_if_nan(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def _jsonable(obj: Any) -> Any:
    """numpy scalars → Python, NaN/inf → None, tuples → lists, recursively."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _none_if_nan(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _as_float(values: Any, name: str) -> np.ndarray:
    """1-D float array; missing values (None, NaN, pd.NA) become NaN."""
    if values is None:
        raise MechanoscopeError(f"{name}: no values given")
    s = pd.Series(np.asarray(values, dtype=object).reshape(-1) if not isinstance(values, pd.Series) else values)
    try:
        s = pd.to_numeric(s, errors="raise")
    except (TypeError, ValueError) as exc:
        raise MechanoscopeError(f"{name}: values must be numbers (Pa), got {exc}") from None
    return s.to_numpy(dtype=float, na_value=np.nan)


def _as_labels(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Object array of labels as str, and a boolean mask of missing entries."""
    arr = np.asarray(pd.Series(values).to_numpy(dtype=object)).reshape(-1)
    missing = np.asarray(pd.isna(arr), dtype=bool)
    out = np.array([str(v) for v in arr], dtype=object)
    return out, missing


def _check_positive(values: np.ndarray, name: str, where: str = "") -> None:
    bad_inf = np.isinf(values)
    bad = (values <= 0) & np.isfinite(values)
    if bad.any() or bad_inf.any():
        idx = int(np.flatnonzero(bad | bad_inf)[0])
        n = int((bad | bad_inf).sum())
        raise MechanoscopeError(
            f"{where}{name}: {n} value(s) are not positive finite numbers (first at row {idx}: "
            f"{values[idx]!r}); Young's modulus is a positive number in Pa — fix or remove those "
            "cells (leave missing measurements as NaN)"
        )


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _fmt_pa(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.3g} MPa"
    if v >= 1e3:
        return f"{v / 1e3:.3g} kPa"
    return f"{v:.3g} Pa"


# ==================================================================== classification
def _check_classification(
    y_true: Any, prob: Any, classes: Sequence[str], y_pred: Any | None
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int]:
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise MechanoscopeError(f"classes: need at least two classes, got {classes}")
    if len(set(classes)) != len(classes):
        raise MechanoscopeError(f"classes: class names must be unique, got {classes}")
    p = np.asarray(prob, dtype=float)
    if p.ndim == 1 and len(classes) == 2:
        p = np.column_stack([1.0 - p, p])
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise MechanoscopeError(
            f"prob: expected shape (N, {len(classes)}) (one column per class in {classes}), "
            f"got {p.shape}"
        )
    labels, missing = _as_labels(y_true)
    if len(labels) != p.shape[0]:
        raise MechanoscopeError(f"y_true has {len(labels)} entries but prob has {p.shape[0]} rows")
    n_missing = int(missing.sum())
    labels, p = labels[~missing], p[~missing]
    pred_idx: np.ndarray
    if y_pred is not None:
        pl, pmiss = _as_labels(y_pred)
        if len(pl) != len(missing):
            raise MechanoscopeError(f"y_pred has {len(pl)} entries but y_true has {len(missing)}")
        pl, pmiss = pl[~missing], pmiss[~missing]
        if pmiss.any():
            raise MechanoscopeError(f"y_pred: {int(pmiss.sum())} cell(s) with truth have no predicted class")
        unknown = sorted(set(pl) - set(classes))
        if unknown:
            raise MechanoscopeError(f"y_pred: classes {unknown} are not among {classes}")
        lut = {c: i for i, c in enumerate(classes)}
        pred_idx = np.array([lut[c] for c in pl], dtype=int)
    else:
        pred_idx = np.argmax(p, axis=1) if len(p) else np.zeros(0, int)
    if len(labels) == 0:
        raise MechanoscopeError(
            "y_true: no cell has a true class (all missing); classification metrics need truth"
        )
    if not np.isfinite(p).all():
        n_bad = int((~np.isfinite(p).all(axis=1)).sum())
        raise MechanoscopeError(
            f"prob: {n_bad} row(s) hold NaN or infinite probabilities; drop cells without a "
            "prediction first"
        )
    if (p < -1e-6).any() or (p > 1 + 1e-6).any():
        raise MechanoscopeError("prob: probabilities must lie in [0, 1]")
    sums = p.sum(axis=1)
    if np.abs(sums - 1.0).max() > 1e-3:
        i = int(np.argmax(np.abs(sums - 1.0)))
        raise MechanoscopeError(
            f"prob: each row must sum to 1 over the classes {classes}; row {i} sums to "
            f"{sums[i]:.4f} (are all pred_prob_<class> columns present, or are these logits?)"
        )
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise MechanoscopeError(
            f"y_true: true classes {unknown} are not among the predicted classes {classes}; "
            "drop those cells or evaluate with a model trained on them"
        )
    lut = {c: i for i, c in enumerate(classes)}
    true_idx = np.array([lut[c] for c in labels], dtype=int)
    return classes, np.clip(p, 0.0, 1.0), true_idx, pred_idx, n_missing


def reliability_bins(
    correct: Any, confidence: Any, n_bins: int = ECE_BINS
) -> dict[str, Any]:
    """Equal-width confidence bins on [0, 1] and the expected calibration error.

    Parameters
    ----------
    correct
        ``(N,)`` booleans, whether each prediction is right.
    confidence
        ``(N,)`` confidence of each prediction in [0, 1] (top-label probability).
    n_bins
        Number of bins; bin ``b`` holds confidences in ``(b/n, (b+1)/n]`` (the first
        bin also holds 0).

    Returns
    -------
    dict
        ``edges`` (n_bins + 1), per bin ``count``, ``confidence`` (mean) and
        ``accuracy`` (None for empty bins), and ``ece``.
    """
    c = np.asarray(correct, dtype=float).reshape(-1)
    conf = np.asarray(confidence, dtype=float).reshape(-1)
    if c.shape != conf.shape:
        raise MechanoscopeError(f"correct has {c.size} entries but confidence has {conf.size}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=c, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / counts
        mean_acc = acc_sum / counts
    n = max(int(counts.sum()), 1)
    ece = float(np.nansum(counts / n * np.abs(mean_acc - mean_conf))) if counts.sum() else None
    return {
        "n_bins": int(n_bins),
        "edges": edges.tolist(),
        "count": counts.astype(int).tolist(),
        "confidence": [_none_if_nan(v) for v in mean_conf],
        "accuracy": [_none_if_nan(v) for v in mean_acc],
        "ece": ece,
    }


def classification_metrics(
    y_true: Any,
    prob: Any,
    classes: Sequence[str],
    *,
    y_pred: Any | None = None,
    positive: str | None = None,
    n_bins: int = ECE_BINS,
) -> dict[str, Any]:
    """Score class probabilities against true classes.

    Parameters
    ----------
    y_true
        ``(N,)`` true class names; missing entries (None/NaN) are ignored and counted.
    prob
        ``(N, K)`` predicted probabilities, column ``k`` for ``classes[k]``, rows sum
        to 1. For two classes a ``(N,)`` array is read as the probability of
        ``classes[1]``.
    classes
        The ``K`` class names in column order.
    y_pred
        ``(N,)`` predicted class names (e.g. the table's ``pred_label``, which may use a
        tuned threshold); default: arg-max of ``prob``.
    positive
        Positive class of binary AUC/F1/Brier/ROC; default ``classes[1]`` (``"stiff"``
        in ``["soft", "stiff"]``).
    n_bins
        Bins of the expected calibration error (15).

    Returns
    -------
    dict
        JSON-ready: ``n``, ``n_missing_truth``, ``classes``, ``positive_class``
        (None for more than two classes), ``auc``, ``f1``, ``f1_average``,
        ``accuracy``, ``balanced_accuracy``, ``ece``, ``brier``, ``brier_definition``,
        ``confusion_matrix`` (``labels``, ``counts`` with rows = true, columns =
        predicted), ``per_class`` (precision, recall, f1, support, auc), ``roc``
        (per curve ``fpr``, ``tpr``, ``thresholds``, ``auc``), ``reliability``
        (see :func:`reliability_bins`), ``class_counts``, ``notes``.

    Raises
    ------
    MechanoscopeError
        Shapes disagree, probabilities are invalid or do not sum to 1, a true class is
        not in ``classes``, or no cell has a true class.
    """
    from sklearn.metrics import (
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
        roc_curve,
    )

    classes, p, t, pr, n_missing = _check_classification(y_true, prob, classes, y_pred)
    k = len(classes)
    n = len(t)
    binary = k == 2
    if positive is None:
        pos = 1
    else:
        if str(positive) not in classes:
            raise MechanoscopeError(f"positive: {positive!r} is not one of the classes {classes}")
        pos = classes.index(str(positive))
    notes: list[str] = []

    correct = pr == t
    accuracy = float(correct.mean())
    present = np.unique(t)
    recalls = [float((pr[t == c] == c).mean()) for c in present]
    balanced = float(np.mean(recalls))
    cm = confusion_matrix(t, pr, labels=list(range(k)))
    prec, rec, f1s, sup = precision_recall_fscore_support(
        t, pr, labels=list(range(k)), zero_division=0
    )
    if binary:
        f1 = float(f1_score(t == pos, pr == pos, zero_division=0))
        f1_average = f"binary (positive class: {classes[pos]})"
    else:
        used = sorted(set(t.tolist()) | set(pr.tolist()))
        f1 = float(f1_score(t, pr, labels=used, average="macro", zero_division=0))
        f1_average = "macro (unweighted mean over classes)"

    def curve(mask: np.ndarray, score: np.ndarray) -> dict[str, Any] | None:
        if mask.all() or not mask.any():
            return None
        fpr, tpr, thr = roc_curve(mask, score)
        return {
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": [_none_if_nan(v) for v in thr],
            "auc": float(roc_auc_score(mask, score)),
        }

    roc: dict[str, Any] = {}
    per_class_auc: dict[str, float | None] = {}
    if binary:
        c = curve(t == pos, p[:, pos])
        if c is None:
            notes.append(
                f"AUC undefined: all {n} cells with truth are of one class ({classes[int(t[0])]})"
            )
            auc = None
        else:
            roc[classes[pos]] = c
            auc = c["auc"]
        per_class_auc = {classes[pos]: auc}
    else:
        for j, name in enumerate(classes):
            c = curve(t == j, p[:, j])
            per_class_auc[name] = None if c is None else c["auc"]
            if c is not None:
                roc[name] = c
        vals = [v for v in per_class_auc.values() if v is not None]
        auc = float(np.mean(vals)) if vals else None
        missing_cls = [nm for nm, v in per_class_auc.items() if v is None]
        if missing_cls:
            notes.append(
                f"one-vs-rest AUC averaged without {missing_cls}: no cell of those classes "
                "(or only those) in the truth"
            )

    confidence = p[np.arange(n), pr] if y_pred is not None else p.max(axis=1)
    rel = reliability_bins(correct, confidence, n_bins=n_bins)
    onehot = np.eye(k)[t]
    if binary:
        brier = float(np.mean((p[:, pos] - onehot[:, pos]) ** 2))
        brier_def = f"mean squared error of P({classes[pos]}); 0 = perfect, 0.25 = always 0.5"
    else:
        brier = float(np.mean(np.sum((p - onehot) ** 2, axis=1)))
        brier_def = "mean over cells of the summed squared error over classes; 0 = perfect, max 2"

    return {
        "n": int(n),
        "n_missing_truth": n_missing,
        "classes": classes,
        "positive_class": classes[pos] if binary else None,
        "auc": auc,
        "auc_average": "binary" if binary else "one-vs-rest macro",
        "f1": f1,
        "f1_average": f1_average,
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "ece": rel["ece"],
        "ece_bins": int(n_bins),
        "brier": brier,
        "brier_definition": brier_def,
        "confusion_matrix": {
            "labels": classes,
            "rows": "true class",
            "columns": "predicted class",
            "counts": cm.astype(int).tolist(),
        },
        "per_class": {
            name: {
                "precision": float(prec[j]),
                "recall": float(rec[j]),
                "f1": float(f1s[j]),
                "support": int(sup[j]),
                **({"auc": per_class_auc.get(name)} if not binary else {}),
            }
            for j, name in enumerate(classes)
        },
        "class_counts": {name: int((t == j).sum()) for j, name in enumerate(classes)},
        "roc": roc,
        "reliability": rel,
        "notes": notes,
    }


# ======================================================================== regression
def regression_metrics(
    true_pa: Any,
    pred_pa: Any,
    lo_pa: Any | None = None,
    hi_pa: Any | None = None,
) -> dict[str, Any]:
    """Score predicted Young's moduli against measured ones.

    Parameters
    ----------
    true_pa
        ``(N,)`` measured modulus in Pa; NaN = not measured (ignored and counted).
    pred_pa
        ``(N,)`` predicted modulus in Pa; NaN = no prediction (ignored and counted).
    lo_pa, hi_pa
        ``(N,)`` lower and upper ends of each cell's prediction interval in Pa
        (optional, both or neither).

    Returns
    -------
    dict
        JSON-ready: ``n``, ``n_missing_truth``, ``n_missing_prediction``,
        ``ape_mean_pct``, ``ape_median_pct``, ``pearson_r_log10`` (+ ``_p``),
        ``spearman_rho_log10`` (+ ``_p``), ``rmse_log10``, ``mae_log10``,
        ``bland_altman`` (``bias_log10``, ``sd_log10``, ``loa_low_log10``,
        ``loa_high_log10`` and the same as ``*_fold``), ``interval`` (``n``,
        ``coverage``, ``width_fold_geomean``, ``width_fold_median``, or None),
        ``measured_pa`` / ``predicted_pa`` medians. Correlations need 3 cells and
        non-constant values, else None.

    Raises
    ------
    MechanoscopeError
        Lengths differ, a value is zero, negative or infinite, ``lo > hi``, or no cell
        has both a measurement and a prediction.
    """
    from scipy import stats

    t = _as_float(true_pa, "true_pa")
    p = _as_float(pred_pa, "pred_pa")
    if t.shape != p.shape:
        raise MechanoscopeError(f"true_pa has {t.size} values but pred_pa has {p.size}")
    _check_positive(t, "true_pa")
    _check_positive(p, "pred_pa")
    miss_t = np.isnan(t)
    miss_p = np.isnan(p) & ~miss_t
    keep = ~miss_t & ~np.isnan(p)
    n = int(keep.sum())
    if n == 0:
        raise MechanoscopeError(
            f"no cell has both a measured and a predicted modulus ({int(miss_t.sum())} of "
            f"{t.size} without measurement); regression metrics need truth"
        )
    tt, pp = t[keep], p[keep]
    lt, lp = np.log10(tt), np.log10(pp)
    ape = np.abs(pp - tt) / tt * 100.0
    d = lp - lt

    def corr(fn: Any) -> tuple[float | None, float | None]:
        if n < 3 or np.ptp(lt) == 0 or np.ptp(lp) == 0:
            return None, None
        res = fn(lp, lt)
        return _none_if_nan(res[0]), _none_if_nan(res[1])

    r, r_p = corr(stats.pearsonr)
    rho, rho_p = corr(stats.spearmanr)
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if n >= 2 else None
    lo_l = bias - 1.96 * sd if sd is not None else None
    hi_l = bias + 1.96 * sd if sd is not None else None
    ba = {
        "bias_log10": bias,
        "sd_log10": sd,
        "loa_low_log10": lo_l,
        "loa_high_log10": hi_l,
        "bias_fold": float(10**bias),
        "loa_low_fold": None if lo_l is None else float(10**lo_l),
        "loa_high_fold": None if hi_l is None else float(10**hi_l),
        "definition": "d = log10(E_pred) - log10(E_true); bias = mean(d); limits = bias ± 1.96 SD(d); fold = 10**value",
    }

    interval = None
    if (lo_pa is None) != (hi_pa is None):
        raise MechanoscopeError("lo_pa and hi_pa: give both ends of the prediction interval or neither")
    if lo_pa is not None:
        lo = _as_float(lo_pa, "lo_pa")
        hi = _as_float(hi_pa, "hi_pa")
        if lo.shape != t.shape or hi.shape != t.shape:
            raise MechanoscopeError(
                f"lo_pa/hi_pa have {lo.size}/{hi.size} values but true_pa has {t.size}"
            )
        _check_positive(lo, "lo_pa")
        _check_positive(hi, "hi_pa")
        both = ~np.isnan(lo) & ~np.isnan(hi)
        if (lo[both] > hi[both]).any():
            i = int(np.flatnonzero(both & (lo > hi))[0]) if (both & (lo > hi)).any() else 0
            raise MechanoscopeError(
                f"lo_pa > hi_pa for {int((lo[both] > hi[both]).sum())} cell(s) (first at row {i}: "
                f"{lo[i]} > {hi[i]} Pa); the interval ends are swapped"
            )
        k = keep & both
        if k.any():
            covered = (lo[k] <= t[k]) & (t[k] <= hi[k])
            log_w = np.log10(hi[k] / lo[k])
            interval = {
                "n": int(k.sum()),
                "n_missing_interval": int((keep & ~both).sum()),
                "coverage": float(covered.mean()),
                "n_below": int((t[k] < lo[k]).sum()),
                "n_above": int((t[k] > hi[k]).sum()),
                "width_fold_geomean": float(10 ** log_w.mean()),
                "width_fold_median": float(10 ** np.median(log_w)),
            }

    return {
        "n": n,
        "n_missing_truth": int(miss_t.sum()),
        "n_missing_prediction": int(miss_p.sum()),
        "unit": "Pa",
        "ape_mean_pct": float(ape.mean()),
        "ape_median_pct": float(np.median(ape)),
        "ape_definition": "|E_pred - E_true| / E_true * 100",
        "pearson_r_log10": r,
        "pearson_p": r_p,
        "spearman_rho_log10": rho,
        "spearman_p": rho_p,
        "rmse_log10": float(np.sqrt(np.mean(d**2))),
        "mae_log10": float(np.mean(np.abs(d))),
        "bland_altman": ba,
        "interval": interval,
        "measured_median_pa": float(np.median(tt)),
        "predicted_median_pa": float(np.median(pp)),
    }


# ========================================================================= conditions
def _condition_order(conditions: pd.Series) -> list[str]:
    if isinstance(conditions.dtype, pd.CategoricalDtype):
        present = set(conditions.dropna().astype(str))
        return [str(c) for c in conditions.cat.categories if str(c) in present]
    return sorted({str(c) for c in conditions.dropna()})


def summarize_by_condition(
    conditions: Any,
    pred_pa: Any | None = None,
    pred_label: Any | None = None,
    classes: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per-condition summary of predictions.

    Parameters
    ----------
    conditions
        ``(N,)`` condition of each cell (missing conditions are left out).
    pred_pa
        ``(N,)`` predicted modulus in Pa (optional).
    pred_label, classes
        ``(N,)`` predicted classes and the class names (optional).

    Returns
    -------
    dict
        condition → ``n_cells`` and, with ``pred_pa``: ``median_pa``, ``q25_pa``,
        ``q75_pa``, ``iqr_pa``; with ``pred_label``: ``class_fraction``.
    """
    cond = pd.Series(conditions).reset_index(drop=True)
    out: dict[str, dict[str, Any]] = {}
    e = None if pred_pa is None else _as_float(pred_pa, "pred_pa")
    lab = None if pred_label is None else _as_labels(pred_label)
    for name in _condition_order(cond):
        m = (cond.astype(object).map(lambda v: None if pd.isna(v) else str(v)) == name).to_numpy()
        s: dict[str, Any] = {"n_cells": int(m.sum())}
        if e is not None:
            v = e[m]
            v = v[np.isfinite(v)]
            s["n_predicted"] = int(v.size)
            if v.size:
                q25, med, q75 = np.percentile(v, [25, 50, 75])
                s.update(median_pa=float(med), q25_pa=float(q25), q75_pa=float(q75), iqr_pa=float(q75 - q25))
        if lab is not None:
            labels, miss = lab
            sel = labels[m & ~miss]
            names = list(classes) if classes is not None else sorted(set(sel))
            s["class_fraction"] = {
                c: (float(np.mean(sel == c)) if sel.size else None) for c in names
            }
        out[name] = s
    return out


def _holm(pvalues: list[float]) -> list[float]:
    m = len(pvalues)
    order = np.argsort(pvalues)
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj.tolist()


def compare_conditions(values: Any, conditions: Any, *, min_cells: int = 2) -> dict[str, Any] | None:
    """Rank test of a per-cell value (e.g. predicted modulus) between conditions.

    Two conditions: two-sided Mann–Whitney U, with the ratio of medians and the
    probability of superiority ``P(X_b > X_a) + ½ P(tie)`` (``b`` = second condition).
    More: Kruskal–Wallis H with ε² = H / (n − 1), and pairwise Mann–Whitney tests with
    Holm-adjusted p-values. Conditions with fewer than ``min_cells`` finite values are
    left out (listed in ``excluded``).

    Cells are treated as independent observations; cells from the same dish or image
    are not independent replicates, so p-values over thousands of cells are small even
    for tiny effects — compare per-replicate medians for inference.

    Returns
    -------
    dict or None
        None when fewer than two conditions have ``min_cells`` values.
    """
    from scipy import stats

    v = _as_float(values, "values")
    cond = pd.Series(conditions).reset_index(drop=True)
    if len(cond) != len(v):
        raise MechanoscopeError(f"conditions has {len(cond)} entries but values has {len(v)}")
    str_cond = cond.astype(object).map(lambda c: None if pd.isna(c) else str(c)).to_numpy()
    groups: dict[str, np.ndarray] = {}
    excluded: dict[str, int] = {}
    for name in _condition_order(cond):
        g = v[(str_cond == name) & np.isfinite(v)]
        if g.size >= min_cells:
            groups[name] = g
        else:
            excluded[name] = int(g.size)
    if len(groups) < 2:
        return None
    names = list(groups)
    caveat = (
        "cells are treated as independent; cells from one dish/image are not independent "
        "replicates, so compare per-replicate medians before drawing conclusions"
    )

    def mw(a: str, b: str) -> dict[str, Any]:
        xa, xb = groups[a], groups[b]
        res = stats.mannwhitneyu(xb, xa, alternative="two-sided")
        u = float(res.statistic)
        return {
            "a": a,
            "b": b,
            "n_a": int(xa.size),
            "n_b": int(xb.size),
            "u": u,
            "p": _none_if_nan(res.pvalue),
            "median_ratio_b_over_a": float(np.median(xb) / np.median(xa)) if np.median(xa) != 0 else None,
            "prob_superiority_b_over_a": u / (xa.size * xb.size),
        }

    if len(names) == 2:
        return {
            "test": "Mann-Whitney U (two-sided)",
            **mw(names[0], names[1]),
            "conditions": names,
            "excluded": excluded,
            "caveat": caveat,
        }
    try:
        h, p = stats.kruskal(*groups.values())
        h, p = float(h), _none_if_nan(p)
    except ValueError:  # all values identical
        h, p = 0.0, 1.0
    n_all = sum(g.size for g in groups.values())
    pairs = [mw(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    adj = _holm([1.0 if pr["p"] is None else pr["p"] for pr in pairs])
    for pr, pa in zip(pairs, adj):
        pr["p_holm"] = pa
    return {
        "test": "Kruskal-Wallis H",
        "h": h,
        "p": p,
        "epsilon_squared": None if n_all <= 1 else float(h / (n_all - 1)),
        "conditions": names,
        "n": {k: int(g.size) for k, g in groups.items()},
        "pairwise": pairs,
        "pairwise_test": "Mann-Whitney U (two-sided), Holm-adjusted",
        "excluded": excluded,
        "caveat": caveat,
    }


def _class_by_condition_test(pred_label: np.ndarray, conditions: pd.Series) -> dict[str, Any] | None:
    from scipy import stats

    df = pd.DataFrame({"c": conditions.to_numpy(dtype=object), "y": pred_label}).dropna()
    if df.empty:
        return None
    ct = pd.crosstab(df["c"].astype(str), df["y"].astype(str))
    ct = ct.loc[ct.sum(axis=1) > 0, ct.sum(axis=0) > 0]
    if ct.shape[0] < 2 or ct.shape[1] < 2:
        return None
    chi2, p, dof, _ = stats.chi2_contingency(ct.to_numpy())
    return {
        "test": "chi-square test of independence (predicted class × condition)",
        "chi2": float(chi2),
        "dof": int(dof),
        "p": _none_if_nan(p),
        "counts": {str(r): {str(c): int(ct.loc[r, c]) for c in ct.columns} for r in ct.index},
    }


# =========================================================================== figures
def roc_png(y_true: Any, prob: Any, classes: Sequence[str], *, positive: str | None = None) -> bytes:
    """ROC curve(s): binary: of the positive class; more classes: one-vs-rest per class."""
    m = classification_metrics(y_true, prob, classes, positive=positive)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance (AUC 0.5)")
    for name, c in m["roc"].items():
        ax.plot(c["fpr"], c["tpr"], lw=2, label=f"{name} (AUC {c['auc']:.3f})")
    if not m["roc"]:
        ax.text(0.5, 0.5, "AUC undefined:\nonly one class in the truth", ha="center", va="center")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    title = f"ROC, positive class: {m['positive_class']}" if m["positive_class"] else "ROC, one-vs-rest"
    ax.set_title(f"{title} (n = {m['n']})", fontsize=10)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return figure_to_png_bytes(fig)


def confusion_matrix_png(y_true: Any, y_pred: Any, classes: Sequence[str]) -> bytes:
    """Confusion matrix: counts and row percentages (rows = true, columns = predicted)."""
    classes = [str(c) for c in classes]
    t, tm = _as_labels(y_true)
    p, pm = _as_labels(y_pred)
    keep = ~tm & ~pm
    lut = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    cm = np.zeros((k, k), int)
    for a, b in zip(t[keep], p[keep]):
        if a in lut and b in lut:
            cm[lut[a], lut[b]] += 1
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0)
    plt = _plt()
    size = 1.2 + 0.9 * k
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j, i, f"{cm[i, j]}\n{100 * frac[i, j]:.0f} %", ha="center", va="center",
                color="white" if frac[i, j] > 0.6 else "black", fontsize=9,
            )
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix (n = {int(cm.sum())})", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    return figure_to_png_bytes(fig)


def reliability_png(
    y_true: Any, prob: Any, classes: Sequence[str], *, y_pred: Any | None = None, n_bins: int = ECE_BINS
) -> bytes:
    """Reliability diagram of the top-label confidence, with the ECE and bin counts."""
    m = classification_metrics(y_true, prob, classes, y_pred=y_pred, n_bins=n_bins)
    rel = m["reliability"]
    edges = np.asarray(rel["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.array([np.nan if a is None else a for a in rel["accuracy"]])
    conf = np.array([np.nan if a is None else a for a in rel["confidence"]])
    counts = np.asarray(rel["count"])
    plt = _plt()
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    ok = counts > 0
    ax.bar(centers[ok], acc[ok], width=width * 0.9, color="tab:blue", alpha=0.6, label="accuracy in bin")
    ax.plot(conf[ok], acc[ok], "o", color="tab:red", ms=4, label="(mean confidence, accuracy)")
    ax.set_ylabel("fraction correct")
    ax.set_ylim(0, 1.02)
    ece = m["ece"]
    ax.set_title(f"Reliability, ECE = {ece:.3f} ({n_bins} bins, n = {m['n']})", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    axh.bar(centers, counts, width=width * 0.9, color="0.5")
    axh.set_xlabel("confidence (probability of the predicted class)")
    axh.set_ylabel("cells")
    axh.set_xlim(0, 1)
    fig.tight_layout()
    return figure_to_png_bytes(fig)


def predicted_vs_measured_png(
    true_pa: Any, pred_pa: Any, lo_pa: Any | None = None, hi_pa: Any | None = None
) -> bytes:
    """Predicted vs measured modulus on log–log axes, identity and 2-fold lines, intervals."""
    m = regression_metrics(true_pa, pred_pa, lo_pa, hi_pa)
    t = _as_float(true_pa, "true_pa")
    p = _as_float(pred_pa, "pred_pa")
    keep = np.isfinite(t) & np.isfinite(p)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    if lo_pa is not None and hi_pa is not None:
        lo, hi = _as_float(lo_pa, "lo_pa"), _as_float(hi_pa, "hi_pa")
        k = keep & np.isfinite(lo) & np.isfinite(hi)
        ax.vlines(t[k], lo[k], hi[k], color="0.75", lw=0.8, zorder=1, label="prediction interval")
    ax.scatter(t[keep], p[keep], s=12, alpha=0.7, color="tab:blue", edgecolor="none", zorder=2, label="cell")
    vals = np.concatenate([t[keep], p[keep]])
    lo_ax, hi_ax = vals.min() / 1.5, vals.max() * 1.5
    xs = np.array([lo_ax, hi_ax])
    ax.plot(xs, xs, color="k", lw=1, label="identity")
    ax.plot(xs, 2 * xs, color="0.5", ls=":", lw=1, label="2-fold")
    ax.plot(xs, xs / 2, color="0.5", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo_ax, hi_ax)
    ax.set_ylim(lo_ax, hi_ax)
    ax.set_aspect("equal")
    ax.set_xlabel("measured Young's modulus E (Pa)")
    ax.set_ylabel("predicted Young's modulus E (Pa)")
    r = m["pearson_r_log10"]
    txt = f"n = {m['n']}\nmean APE = {m['ape_mean_pct']:.0f} %"
    if r is not None:
        txt += f"\nPearson r (log) = {r:.2f}"
    ax.text(0.03, 0.97, txt, transform=ax.transAxes, va="top", fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title("Predicted vs measured stiffness", fontsize=10)
    return figure_to_png_bytes(fig)


def bland_altman_png(true_pa: Any, pred_pa: Any) -> bytes:
    """Bland–Altman plot on log10 E, drawn as fold ratio predicted/measured on a log axis."""
    m = regression_metrics(true_pa, pred_pa)
    t = _as_float(true_pa, "true_pa")
    p = _as_float(pred_pa, "pred_pa")
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    ba = m["bland_altman"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    ax.scatter(np.sqrt(t * p), p / t, s=12, alpha=0.7, color="tab:blue", edgecolor="none")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(ba["bias_fold"], color="tab:red", lw=1.5, label=f"bias ×{ba['bias_fold']:.2f}")
    if ba["loa_low_fold"] is not None:
        for v in (ba["loa_low_fold"], ba["loa_high_fold"]):
            ax.axhline(v, color="tab:red", ls="--", lw=1)
        ax.plot([], [], color="tab:red", ls="--",
                label=f"95 % limits ×{ba['loa_low_fold']:.2f} – ×{ba['loa_high_fold']:.2f}")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=20))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"×{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_pa(v)))
    ax.set_xlabel("geometric mean of measured and predicted E (Pa)")
    ax.set_ylabel("predicted / measured (fold)")
    ax.set_title(f"Bland–Altman on log10 E (n = {m['n']})", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return figure_to_png_bytes(fig)


def condition_distribution_png(pred_pa: Any, conditions: Any | None = None, *, max_points: int = 1500, seed: int = 0) -> bytes:
    """Distribution of predicted modulus per condition: violin, box and cells, log axis in Pa.

    At most ``max_points`` cells per condition are drawn as points (random, seeded);
    violins and boxes use all cells.
    """
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    e = _as_float(pred_pa, "pred_pa")
    if conditions is None:
        cond = pd.Series(["all cells"] * len(e))
    else:
        cond = pd.Series(conditions).reset_index(drop=True)
    names = _condition_order(cond)
    str_cond = cond.astype(object).map(lambda c: None if pd.isna(c) else str(c)).to_numpy()
    data = []
    for nm in names:
        v = e[(str_cond == nm) & np.isfinite(e) & (e > 0)]
        data.append(np.log10(v))
    rng = np.random.default_rng(seed)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(3.6, 1.3 * len(names) + 1.8), 4.2))
    pos = np.arange(1, len(names) + 1)
    vio_pos = [i for i, d in zip(pos, data) if d.size >= 3 and np.ptp(d) > 0]
    if vio_pos:
        parts = ax.violinplot([data[i - 1] for i in vio_pos], positions=vio_pos, widths=0.8,
                              showextrema=False)
        for b in parts["bodies"]:
            b.set_facecolor("tab:blue")
            b.set_alpha(0.25)
    nonempty = [(i, d) for i, d in zip(pos, data) if d.size]
    if nonempty:
        ax.boxplot([d for _, d in nonempty], positions=[i for i, _ in nonempty], widths=0.25,
                   showfliers=False, medianprops={"color": "tab:red", "lw": 2})
    for i, d in zip(pos, data):
        if d.size > max_points:
            d = rng.choice(d, max_points, replace=False)
        ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=5, alpha=0.5, color="k", edgecolor="none")
    ax.set_xticks(pos, [f"{nm}\n(n = {d.size})" for nm, d in zip(names, data)])
    finite = [d for d in data if d.size]
    span = float(np.ptp(np.concatenate(finite))) if finite else 0.0
    ax.yaxis.set_major_locator(MultipleLocator(1.0 if span >= 2.5 else 0.5 if span >= 0.8 else 0.1))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _fmt_pa(10**v)))
    ax.set_ylabel("predicted Young's modulus E (log scale)")
    ax.set_title("Predicted stiffness per condition", fontsize=10)
    ax.grid(axis="y", color="0.9")
    return figure_to_png_bytes(fig)


def class_fraction_png(pred_label: Any, conditions: Any | None, classes: Sequence[str]) -> bytes:
    """Stacked bars: fraction of cells predicted in each class, per condition."""
    labels, miss = _as_labels(pred_label)
    cond = pd.Series(["all cells"] * len(labels)) if conditions is None else pd.Series(conditions).reset_index(drop=True)
    names = _condition_order(cond)
    str_cond = cond.astype(object).map(lambda c: None if pd.isna(c) else str(c)).to_numpy()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 0.6 * len(names) + 1.6))
    left = np.zeros(len(names))
    counts = []
    for nm in names:
        sel = labels[(str_cond == nm) & ~miss]
        counts.append(sel.size)
    for c in classes:
        frac = np.array([
            np.mean(labels[(str_cond == nm) & ~miss] == c) if n else 0.0 for nm, n in zip(names, counts)
        ])
        ax.barh(range(len(names)), frac, left=left, label=str(c))
        left += frac
    ax.set_yticks(range(len(names)), [f"{nm} (n = {n})" for nm, n in zip(names, counts)])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("fraction of cells (predicted class)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=max(1, len(classes)), fontsize=8)
    ax.set_title("Predicted class per condition", fontsize=10)
    return figure_to_png_bytes(fig)


def _crop_image(crops: Any, i: int, channel: int) -> np.ndarray:
    arr = np.asarray(crops[int(i)], dtype=float)
    if arr.ndim == 3:
        arr = arr[min(channel, arr.shape[0] - 1)]
    return arr


def _gallery_png(crops: Any, rows: list[tuple[str, list[tuple[int, str]]]], n_cols: int, title: str, channel: int = 0) -> bytes:
    """Tile the chosen crops into one mosaic (one image, fast to draw) with captions."""
    plt = _plt()
    rows = rows or [("", [])]
    tiles: dict[tuple[int, int], np.ndarray] = {}
    for r, (_, items) in enumerate(rows):
        for c, (i, _) in enumerate(items[:n_cols]):
            img = _crop_image(crops, i, channel)
            finite = img[np.isfinite(img)]
            lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
            tiles[r, c] = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    th = max((t.shape[0] for t in tiles.values()), default=16)
    tw = max((t.shape[1] for t in tiles.values()), default=16)
    gap_x = max(2, tw // 8)
    cap = int(round(0.5 * th))  # room for a two-line caption above each tile
    ch, cw = th + cap, tw + gap_x
    mosaic = np.full((len(rows) * ch, n_cols * cw), np.nan)
    for (r, c), t in tiles.items():
        y0, x0 = r * ch + cap, c * cw
        mosaic[y0 : y0 + t.shape[0], x0 : x0 + t.shape[1]] = t
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    fig, ax = plt.subplots(figsize=(1.45 * n_cols + 1.3, 1.7 * len(rows) + 0.5))
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    for r, (row_title, items) in enumerate(rows):
        ax.text(-gap_x, r * ch + cap + th / 2, row_title, ha="right", va="center", fontsize=8)
        if not items:
            ax.text(tw / 2, r * ch + cap + th / 2, "none", ha="center", va="center", color="0.5", fontsize=8)
        for c, (_, caption) in enumerate(items[:n_cols]):
            ax.text(c * cw + tw / 2, r * ch + cap - 0.5, caption, ha="center", va="bottom", fontsize=7)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    return figure_to_png_bytes(fig)


def crop_gallery_png(
    crops: Any,
    pred_label: Any,
    confidence: Any,
    true_label: Any | None = None,
    *,
    classes: Sequence[str] | None = None,
    n_per_row: int = 5,
    channel: int = 0,
) -> bytes:
    """Example crops per predicted class: the most confident correct and wrong ones.

    Parameters
    ----------
    crops
        ``(N, C, H, W)`` (or ``(N, H, W)``) array-like in table row order, e.g. a Zarr
        array; only the shown crops are read.
    pred_label, confidence
        ``(N,)`` predicted class and its probability.
    true_label
        ``(N,)`` true classes (missing allowed); without it the most confident
        predictions per class are shown.
    classes
        Row order (default: sorted predicted classes).
    n_per_row
        Crops per row.
    channel
        Channel drawn (0 = intensity).
    """
    pl, pmiss = _as_labels(pred_label)
    conf = _as_float(confidence, "confidence")
    tl, tmiss = (None, None) if true_label is None else _as_labels(true_label)
    names = [str(c) for c in classes] if classes is not None else sorted(set(pl[~pmiss]))
    rows: list[tuple[str, list[tuple[int, str]]]] = []
    for c in names:
        sel = (pl == c) & ~pmiss & np.isfinite(conf)
        if tl is None:
            idx = np.flatnonzero(sel)
            idx = idx[np.argsort(-conf[idx], kind="stable")][:n_per_row]
            rows.append((f"pred {c}", [(int(i), f"p = {conf[i]:.2f}") for i in idx]))
            continue
        for ok, what in ((True, "correct"), (False, "wrong")):
            m = sel & ~tmiss & ((tl == c) if ok else (tl != c))
            idx = np.flatnonzero(m)
            idx = idx[np.argsort(-conf[idx], kind="stable")][:n_per_row]
            rows.append((
                f"pred {c}\n{what}",
                [(int(i), f"p = {conf[i]:.2f}" + ("" if ok else f"\ntrue {tl[i]}")) for i in idx],
            ))
    title = "Most confident predictions per class" + ("" if tl is None else " (correct and wrong)")
    return _gallery_png(crops, rows, n_per_row, title, channel)


def stiffness_gallery_png(
    crops: Any, pred_pa: Any, true_pa: Any | None = None, *, n_per_row: int = 5, channel: int = 0
) -> bytes:
    """Example crops: the cells predicted softest and stiffest (measured E in the caption)."""
    e = _as_float(pred_pa, "pred_pa")
    t = None if true_pa is None else _as_float(true_pa, "true_pa")
    idx = np.flatnonzero(np.isfinite(e))
    order = idx[np.argsort(e[idx], kind="stable")]

    def cap(i: int) -> str:
        s = f"pred {_fmt_pa(e[i])}"
        if t is not None and np.isfinite(t[i]):
            s += f"\nmeas {_fmt_pa(t[i])}"
        return s

    rows = [
        ("softest\npredicted", [(int(i), cap(i)) for i in order[:n_per_row]]),
        ("stiffest\npredicted", [(int(i), cap(i)) for i in order[::-1][:n_per_row]]),
    ]
    return _gallery_png(crops, rows, n_per_row, "Cells predicted softest and stiffest", channel)


# ======================================================================= run folder
def _read_predict_json(run: Path) -> tuple[dict[str, Any], list[str]]:
    path = run / "predict.json"
    if not path.exists():
        return {}, [f"{path.name} not found: model identity and interval level unknown"]
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MechanoscopeError(f"{path}: could not be read as JSON ({exc}); re-run mechanoscope predict") from None
    if not isinstance(data, dict):
        raise MechanoscopeError(f"{path}: expected a JSON object at the top level")
    return data, []


def _open_crops(run: Path, n_rows: int) -> tuple[Any | None, str | None]:
    path = run / "crops.zarr"
    if not path.exists():
        return None, "crops.zarr not found: no example-cell gallery"
    try:
        import zarr

        store = zarr.open(str(path), mode="r")
        arr = store["crops"] if hasattr(store, "group_keys") or not hasattr(store, "shape") else store
    except Exception as exc:  # noqa: BLE001 - any reader failure only drops the gallery
        return None, f"crops.zarr could not be read ({type(exc).__name__}: {exc}): no gallery"
    shape = tuple(arr.shape)
    if len(shape) not in (3, 4):
        return None, f"crops.zarr holds an array of shape {shape}, expected (N, C, H, W): no gallery"
    if shape[0] != n_rows:
        return None, (
            f"crops.zarr holds {shape[0]} crops but cells.parquet has {n_rows} rows: they do not "
            "belong together, so no gallery is drawn"
        )
    return arr, None


def _classes_from(table: pd.DataFrame, predict: Mapping[str, Any]) -> list[str]:
    from_cols = [c[len(_PROB_PREFIX):] for c in table.columns if str(c).startswith(_PROB_PREFIX)]
    for key in ("classes",):
        cand = predict.get(key)
        if cand is None and isinstance(predict.get("model"), Mapping):
            cand = predict["model"].get(key)
        if isinstance(cand, list) and sorted(map(str, cand)) == sorted(from_cols):
            return [str(c) for c in cand]
    return from_cols


def _summary_pa(v: np.ndarray) -> dict[str, Any]:
    v = v[np.isfinite(v)]
    if not v.size:
        return {"n": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "median_pa": float(med), "q25_pa": float(q25), "q75_pa": float(q75), "iqr_pa": float(q75 - q25)}


def _model_identity(predict: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("model", "model_dir", "model_path", "model_name", "model_id", "model_hash", "task",
            "architecture", "classes", "target", "interval_level", "interval_method",
            "mechanoscope_version", "created", "date", "ensemble_size")
    out: dict[str, Any] = {}
    for k in keys:
        if k in predict:
            v = predict[k]
            if isinstance(v, Mapping):
                v = {kk: vv for kk, vv in v.items() if isinstance(vv, (str, int, float, bool)) or vv is None}
            out[k] = v
    return out


def evaluate_run(run_dir: str | os.PathLike[str], *, figures: bool = True) -> dict[str, Any]:
    """Evaluate the predictions of a run folder; write ``evaluation.json`` and figures.

    Reads ``RUN/cells.parquet`` (predictions, and truth where known),
    ``RUN/predict.json`` (model identity, ``interval_level``) and ``RUN/crops.zarr``
    (for the example-cell gallery). What is computed depends on the columns present:

    * ``pred_prob_<class>`` (+ ``pred_label``) and ``label``: :func:`classification_metrics`;
    * ``pred_stiffness_pa`` (+ ``pred_lo_pa``, ``pred_hi_pa``) and ``stiffness_pa``:
      :func:`regression_metrics`;
    * ``condition``: per-condition summaries and a rank test between conditions.

    Cells with ``qc_pass == False`` are left out. When the table has a ``split``
    column, only cells with ``split == "test"`` are scored (``scope`` in the result
    says which cells were used).

    Parameters
    ----------
    run_dir
        Run folder.
    figures
        Also write ``RUN/figures/<name>.png`` (names in :data:`FIGURE_NAMES`).

    Returns
    -------
    dict
        The JSON-ready content written to ``RUN/evaluation.json``.

    Raises
    ------
    MechanoscopeError
        No run folder or cell table, no prediction columns, or invalid values (e.g. a
        non-positive modulus).
    """
    from mechanoscope import __version__
    from mechanoscope.io import atomic_path, read_table, write_json

    run = Path(run_dir)
    if not run.is_dir():
        raise MechanoscopeError(
            f"{run}: no such run folder; give the folder written by `mechanoscope predict`"
        )
    table_path = run / "cells.parquet"
    if not table_path.exists():
        raise MechanoscopeError(
            f"{table_path}: no cell table in this run folder; run `mechanoscope predict` into it first"
        )
    table = read_table(table_path).reset_index(drop=True)
    predict, notes = _read_predict_json(run)
    cols = set(map(str, table.columns))
    classes = _classes_from(table, predict)
    has_cls = len(classes) >= 2
    has_reg = "pred_stiffness_pa" in cols
    if len(classes) == 1:
        notes.append(f"only one probability column ({_PROB_PREFIX}{classes[0]}): classification skipped")
    if not has_cls and not has_reg:
        raise MechanoscopeError(
            f"{table_path}: no prediction columns (pred_prob_<class> for each class, or "
            "pred_stiffness_pa); run `mechanoscope predict` on this folder first"
        )
    try:
        interval_level = _none_if_nan(predict.get("interval_level"))
    except (TypeError, ValueError):
        interval_level = None
        notes.append(f"predict.json: interval_level {predict.get('interval_level')!r} is not a number")

    # ------------------------------------------------------------------ scope
    n_all = len(table)
    scope = np.ones(n_all, bool)
    scope_info: dict[str, Any] = {"n_cells_total": n_all}
    if "qc_pass" in cols:
        qc = table["qc_pass"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        scope &= qc
        scope_info["n_failed_qc_excluded"] = int((~qc).sum())
    if "split" in cols:
        split = table["split"].astype(object).map(lambda v: "" if pd.isna(v) else str(v).strip().lower()).to_numpy()
        is_test = split == "test"
        scope_info["split_counts"] = {str(k): int(v) for k, v in pd.Series(split).value_counts().items()}
        scope &= is_test
        scope_info["cells"] = "test split only (split == 'test'), QC-passing"
        if not is_test.any():
            notes.append(
                "the table has a split column but no 'test' cells: metrics are computed on test "
                "cells only, so none are reported (cells the model was trained on would give "
                "optimistic numbers)"
            )
    else:
        scope_info["cells"] = "all QC-passing cells" if "qc_pass" in cols else "all cells"
    scope_info["n_cells_in_scope"] = int(scope.sum())
    sub = table.loc[scope].reset_index(drop=True)
    rows_in_full = np.flatnonzero(scope)

    result: dict[str, Any] = {
        "kind": "mechanoscope evaluation",
        "mechanoscope_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": str(run),
        "model": _model_identity(predict),
        "interval_level": interval_level,
        "n_cells": n_all,
        "n_images": int(table["image_id"].nunique()) if "image_id" in cols else None,
        "tasks": [t for t, h in (("classification", has_cls), ("regression", has_reg)) if h],
        "scope": scope_info,
        "truth": {"classification": False, "regression": False},
        "classification": None,
        "regression": None,
        "predictions": {},
        "conditions": None,
        "figures": {},
        "notes": notes,
    }
    figs: dict[str, bytes] = {}
    captions: dict[str, str] = {}

    # --------------------------------------------------------- classification
    prob = pred_lab = None
    if has_cls:
        prob_cols = [f"{_PROB_PREFIX}{c}" for c in classes]
        prob = sub[prob_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        if "pred_label" in cols:
            pred_lab, pl_miss = _as_labels(sub["pred_label"])
            unknown = sorted(set(pred_lab[~pl_miss]) - set(classes))
            if unknown:
                raise MechanoscopeError(
                    f"{table_path}: column pred_label holds {unknown}, which have no "
                    f"{_PROB_PREFIX}<class> column (classes: {classes})"
                )
            pred_lab = np.where(pl_miss, None, pred_lab)
        else:
            argmax = np.argmax(np.nan_to_num(prob, nan=-1.0), axis=1)
            pred_lab = np.array([classes[i] for i in argmax], dtype=object)
        has_prob = np.isfinite(prob).all(axis=1)
        pred_lab = np.where(has_prob, pred_lab, None)
        positive = "stiff" if len(classes) == 2 and "stiff" in classes else classes[1] if len(classes) == 2 else None
        counts = pd.Series(pred_lab).dropna().astype(str).value_counts()
        result["predictions"]["classes"] = classes
        result["predictions"]["positive_class"] = positive
        result["predictions"]["class_counts"] = {c: int(counts.get(c, 0)) for c in classes}
        result["predictions"]["n_without_class_prediction"] = int((~has_prob).sum())
        if "label" in cols:
            lab, lab_miss = _as_labels(sub["label"])
            known = np.isin(lab, classes)
            unknown_truth = sorted(set(lab[~lab_miss & ~known]))
            use = ~lab_miss & known & has_prob & pd.notna(pred_lab)
            if unknown_truth:
                notes.append(
                    f"{int((~lab_miss & ~known).sum())} cell(s) with true classes {unknown_truth} not "
                    f"among the model's classes {classes} are left out of the classification metrics"
                )
            if use.any():
                m = classification_metrics(lab[use], prob[use], classes, y_pred=pred_lab[use], positive=positive)
                m["n_missing_truth"] = int(lab_miss.sum())
                m["n_unknown_truth_class"] = int((~lab_miss & ~known).sum())
                m["n_missing_prediction"] = int((~lab_miss & known & ~has_prob).sum())
                result["classification"] = m
                result["truth"]["classification"] = True
                if figures:
                    y, pr, pl = lab[use], prob[use], pred_lab[use]
                    if m["roc"]:
                        figs["roc"] = roc_png(y, pr, classes, positive=positive)
                        captions["roc"] = (
                            "Sensitivity against 1 − specificity as the probability threshold moves; "
                            "the area under the curve (AUC) is 0.5 for guessing and 1 for a perfect ranking."
                        )
                    figs["confusion_matrix"] = confusion_matrix_png(y, pl, classes)
                    captions["confusion_matrix"] = (
                        "Cells counted by true class (rows) and predicted class (columns); "
                        "percentages are of each true class."
                    )
                    figs["reliability"] = reliability_png(y, pr, classes, y_pred=pl)
                    captions["reliability"] = (
                        "Fraction of correct predictions against the model's confidence; a "
                        "calibrated model follows the diagonal. Bottom: cells per confidence bin."
                    )

    # ------------------------------------------------------------- regression
    if has_reg:
        e_pred = _as_float(sub["pred_stiffness_pa"], "pred_stiffness_pa")
        where = f"{table_path}: column "
        _check_positive(e_pred, "pred_stiffness_pa", where)
        lo = hi = e_true = None
        if "pred_lo_pa" in cols and "pred_hi_pa" in cols:
            lo = _as_float(sub["pred_lo_pa"], "pred_lo_pa")
            hi = _as_float(sub["pred_hi_pa"], "pred_hi_pa")
            _check_positive(lo, "pred_lo_pa", where)
            _check_positive(hi, "pred_hi_pa", where)
        if "stiffness_pa" in cols:
            e_true = _as_float(sub["stiffness_pa"], "stiffness_pa")
            _check_positive(e_true, "stiffness_pa", where)
        result["predictions"]["stiffness_pa"] = _summary_pa(e_pred)
        if e_true is not None and (np.isfinite(e_true) & np.isfinite(e_pred)).any():
            try:
                m = regression_metrics(e_true, e_pred, lo, hi)
            except MechanoscopeError as exc:
                raise MechanoscopeError(f"{table_path}: {exc}") from None
            if m["interval"] is not None:
                m["interval"]["nominal_level"] = interval_level
            result["regression"] = m
            result["truth"]["regression"] = True
            if figures:
                figs["predicted_vs_measured"] = predicted_vs_measured_png(e_true, e_pred, lo, hi)
                captions["predicted_vs_measured"] = (
                    "Each dot is a cell with a measured modulus; solid line: perfect agreement, "
                    "dotted: 2-fold off" + ("; grey bars: prediction intervals." if lo is not None else ".")
                )
                figs["bland_altman"] = bland_altman_png(e_true, e_pred)
                captions["bland_altman"] = (
                    "Ratio predicted/measured against the cell's mean stiffness; red line: average "
                    "bias, dashed: range holding 95 % of cells. A trend means the error depends on stiffness."
                )

    # ------------------------------------------------------------- conditions
    if "condition" in cols and sub["condition"].notna().any():
        cond = sub["condition"]
        e_vals = sub["pred_stiffness_pa"] if has_reg else None
        summaries = summarize_by_condition(cond, e_vals, pred_lab if has_cls else None, classes if has_cls else None)
        comparison = None
        if has_reg:
            comparison = compare_conditions(e_vals, cond)
            if comparison is not None:
                comparison["value"] = "pred_stiffness_pa"
        class_test = _class_by_condition_test(pred_lab, cond) if has_cls else None
        result["conditions"] = {
            "column": "condition",
            "n_without_condition": int(cond.isna().sum()),
            "summaries": summaries,
            "comparison": comparison,
            "class_comparison": class_test,
        }
    if figures:
        cond_arg = sub["condition"] if "condition" in cols and sub["condition"].notna().any() else None
        if has_reg and np.isfinite(_as_float(sub["pred_stiffness_pa"], "pred_stiffness_pa")).any():
            figs["stiffness_by_condition"] = condition_distribution_png(sub["pred_stiffness_pa"], cond_arg)
            captions["stiffness_by_condition"] = (
                "Predicted Young's modulus of every cell" + (" per condition" if cond_arg is not None else "")
                + " (log scale); boxes span the middle half of the cells, red line: median."
            )
        if has_cls and pd.notna(pred_lab).any():
            figs["class_by_condition"] = class_fraction_png(pred_lab, cond_arg, classes)
            captions["class_by_condition"] = "Fraction of cells assigned to each class" + (
                " per condition." if cond_arg is not None else "."
            )

        # --------------------------------------------------------------- gallery
        if len(sub):
            crops, why = _open_crops(run, n_all)
            if why:
                notes.append(why)
            else:
                view = _RowView(crops, rows_in_full)
                if has_cls and pd.notna(pred_lab).any():
                    conf = np.full(len(sub), np.nan)
                    lut = {c: i for i, c in enumerate(classes)}
                    for i, pl in enumerate(pred_lab):
                        if pl is not None and np.isfinite(prob[i]).all():
                            conf[i] = prob[i, lut[pl]]
                    truth = sub["label"] if "label" in cols and sub["label"].notna().any() else None
                    figs["crop_gallery"] = crop_gallery_png(view, pred_lab, conf, truth, classes=classes)
                    captions["crop_gallery"] = (
                        "Intensity crops of the cells the model was most confident about, per predicted class"
                        + (", correct and wrong." if truth is not None else ".")
                    )
                elif has_reg:
                    truth_pa = sub["stiffness_pa"] if "stiffness_pa" in cols else None
                    figs["crop_gallery"] = stiffness_gallery_png(view, sub["pred_stiffness_pa"], truth_pa)
                    captions["crop_gallery"] = "Intensity crops of the cells predicted softest and stiffest."

        fig_dir = run / "figures"
        for name in FIGURE_NAMES:  # remove figures of an earlier evaluation that no longer apply
            stale = fig_dir / f"{name}.png"
            if name not in figs and stale.exists():
                stale.unlink()
        for name, png in figs.items():
            with atomic_path(fig_dir / f"{name}.png") as tmp:
                tmp.write_bytes(png)
            result["figures"][name] = {
                "file": f"figures/{name}.png",
                "title": FIGURE_NAMES[name],
                "caption": captions.get(name, ""),
            }

    if not result["truth"]["classification"] and not result["truth"]["regression"]:
        notes.append("no measured stiffness in this run: metrics need truth; figures show predictions only")
    out = _jsonable(result)
    write_json(out, run / "evaluation.json")
    return out


class _RowView:
    """Index a crop array through a row mapping (scope rows → full-table rows)."""

    def __init__(self, arr: Any, rows: np.ndarray) -> None:
        self._arr, self._rows = arr, rows

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self._arr[int(self._rows[int(i)])])

    def __len__(self) -> int:
        return len(self._rows)
