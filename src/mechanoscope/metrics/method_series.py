"""Several measurement methods on one condition series: what each finds, how they agree.

The published comparison measured a passage series by AFM, by deformability
cytometry (DC) and by the image CNN and asked whether each finds the stiffening with
passage. :func:`method_condition_series` does that for any set of per-cell value columns
of one cell table (``afm_stiffness_pa``, ``rtdc_youngs_modulus_pa``,
``pred_stiffness_pa``, and the truth ``stiffness_pa`` of a simulation):

* per method, :func:`mechanoscope.metrics.conditions.compare_replicated_conditions`
  with the biological replicate as the unit: condition medians with CIs, the trend over
  the ordered conditions, and which condition pairs differ (replicate-level Welch test,
  Holm-corrected, at ``alpha``), and whether each difference has the true sign;
* between methods, on replicate medians (the unit every method reports): the bias
  (geometric-mean ratio method / reference), 95 % limits of agreement on the ln scale
  (Bland–Altman), and the Spearman correlation;
* against the truth column when given, per cell: median and mean absolute percentage
  error and the median ratio.

Methods may measure different cells (AFM only a few per replicate): each method's
comparison uses the cells where its column is finite.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from mechanoscope.errors import MechanoscopeError
from mechanoscope.metrics.conditions import _jsonable, compare_replicated_conditions

__all__ = ["method_condition_series"]


def _agreement(a: pd.Series, b: pd.Series) -> dict[str, Any]:
    both = pd.concat([a, b], axis=1, keys=["a", "b"]).dropna()
    both = both[(both["a"] > 0) & (both["b"] > 0)]
    if len(both) < 3:
        return {"n_replicates": int(len(both)), "bias_ratio": None, "loa_ratio_low": None, "loa_ratio_high": None, "spearman": None}
    d = np.log(both["a"].to_numpy()) - np.log(both["b"].to_numpy())
    sd = float(np.std(d, ddof=1))
    return {"n_replicates": int(len(both)), "bias_ratio": float(np.exp(d.mean())),
            "loa_ratio_low": float(np.exp(d.mean() - 1.96 * sd)), "loa_ratio_high": float(np.exp(d.mean() + 1.96 * sd)),
            "spearman": float(stats.spearmanr(both["a"], both["b"]).statistic)}


def method_condition_series(
    cells: pd.DataFrame,
    methods: dict[str, str],
    *,
    order: Sequence[str],
    truth: str | None = None,
    by: str = "condition",
    replicate: str = "replicate",
    alpha: float = 0.05,
    n_bootstrap: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare methods (name → value column, Pa) on one ordered condition series.

    Parameters
    ----------
    cells
        One row per cell with ``by``, ``replicate`` and the methods' columns (NaN where
        a method did not measure the cell).
    methods
        Display name → column, e.g. ``{"AFM": "afm_stiffness_pa", "DC": "rtdc_youngs_modulus_pa"}``.
    order
        The conditions in their natural order (e.g. passages).
    truth
        Optional column of true moduli (simulations): adds per-cell errors, true
        differences and agreement with the truth.
    alpha
        Level at which a Holm-corrected replicate-level difference counts as found.

    Returns
    -------
    dict, JSON-ready: ``table`` (one row per condition and method: median, CI, cells,
    replicates), ``methods`` (per method: trend test, pairs found, pairs with the true
    sign, per-cell errors), ``agreement`` (pairs of methods on replicate medians).

    Raises
    ------
    MechanoscopeError
        A method's column is missing, or fewer than two conditions.
    """
    cols = dict(methods)
    if truth is not None:
        cols = {"truth": truth, **cols}
    missing = [c for c in cols.values() if c not in cells.columns]
    if missing:
        raise MechanoscopeError(f"the cell table lacks the method column(s) {missing}; it has {list(cells.columns)}")
    rows, per, rep_medians = [], {}, {}
    true_sign: dict[tuple[str, str], float] = {}
    for name, col in cols.items():
        res = compare_replicated_conditions(cells, value=col, by=by, replicate=replicate, order=list(order), qc_only=False,
                                            n_bootstrap=n_bootstrap, seed=seed)
        for r in res.summary.itertuples():
            rows.append({"condition": r.condition, "method": name, "median_pa": r.median, "ci_low_pa": r.ci_low, "ci_high_pa": r.ci_high,
                         "n_cells": r.n_cells, "n_replicates": r.n_replicates})
        rep_medians[name] = res.replicates.set_index(["condition", "replicate"])["median"]
        pw = res.pairwise
        found = pw[pw["p_replicates_holm"] < alpha]
        if name == "truth":
            true_sign = {(a, b): np.sign(np.log(e)) for a, b, e in zip(pw["a"], pw["b"], pw["estimate"])}
        trend = (res.tests.get("trend") or {}).get("jonckheere_terpstra") or {}
        mm = (res.tests.get("trend") or {}).get("mixed_model") or {}
        info: dict[str, Any] = {
            "column": col, "n_cells": int(len(res.cells)),
            "pairs_found": [f"{a} vs {b}" for a, b in zip(found["a"], found["b"])],
            "_found_sign": {(a, b): float(np.sign(np.log(e))) for a, b, e in zip(found["a"], found["b"], found["estimate"])},
            "n_pairs": int(len(pw)),
            "trend_jonckheere_p": trend.get("p_value"), "trend_mixed_model_p": mm.get("p_value"),
            "fold_change_last_vs_first": float(pw.loc[(pw["a"] == order[0]) & (pw["b"] == order[-1]), "estimate"].iloc[0]),
        }
        if truth is not None and name != "truth":
            ok = cells[[col, truth]].dropna()
            ok = ok[(ok[col] > 0) & (ok[truth] > 0)]
            ape = 100 * np.abs(ok[col] / ok[truth] - 1)
            info.update({"median_ape_percent": float(ape.median()), "mean_ape_percent": float(ape.mean()),
                         "median_ratio_to_truth": float((ok[col] / ok[truth]).median())})
        per[name] = info
    for name, info in per.items():
        signs = info.pop("_found_sign")
        if true_sign and name != "truth":
            # a found difference counts when its direction is the true one
            info["pairs_found_with_true_sign"] = int(sum(1 for k, s in signs.items() if s == true_sign.get(k)))
            info["pairs_true_difference_found_by_truth"] = per["truth"]["pairs_found"]
    names = list(cols)
    agreement = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = names[j], names[i]  # method vs the earlier one (truth first)
            agreement.append({"method": a, "reference": b, **_agreement(rep_medians[a], rep_medians[b])})
    return _jsonable({"order": list(order), "alpha": alpha, "table": pd.DataFrame(rows).to_dict(orient="records"),
                      "methods": per, "agreement": agreement})
