"""Per-condition summaries and cell-level comparisons of predictions (conditions in the cell table).

Cells are treated as independent here; replicate-level inference lives in
:mod:`mechanoscope.metrics.conditions`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mechanoscope.errors import MechanoscopeError
from mechanoscope.evaluate.stiffness import _as_float, _as_labels, _none_if_nan

__all__ = ["summarize_by_condition", "compare_conditions"]


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
        with np.errstate(invalid="ignore", divide="ignore"):
            h, p = stats.kruskal(*groups.values())
        h, p = float(h), _none_if_nan(p)
    except ValueError:  # all values identical (older scipy raises)
        h, p = 0.0, 1.0
    if not math.isfinite(h):  # all values identical (newer scipy returns NaN)
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
