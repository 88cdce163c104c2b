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

Figures (``*_png(...)`` functions returning PNG bytes) live in
:mod:`mechanoscope.report.stiffness_figures`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError

__all__ = [
    "ECE_BINS",
    "FIGURE_NAMES",
    "classification_metrics",
    "regression_metrics",
    "reliability_bins",
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
