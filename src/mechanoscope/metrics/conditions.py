"""Comparing conditions with the biological replicate as the unit of inference.

Thousands of cells from three wells are three observations of a condition, not
thousands: cells of one well share its culture, seeding density, staining and
imaging day, so a test that treats cells as independent (Mann–Whitney or
Kruskal–Wallis on cells) calls almost any difference "significant" (pseudo-
replication; Lazic 2010, Lord et al. 2020 "SuperPlots"). This module summarises a
per-cell value (``pred_stiffness_pa``, ``afm_stiffness_pa``, ``stiffness_pa``, …) by
condition and replicate and tests at the replicate level.

Choices (and why)
-----------------
* **Scale**: moduli are log-normal (spread over decades, multiplicative effects), so
  the analysis is on ln(value) by default (``log_scale=False`` for values that are
  not); effects are fold changes.
* **Replicate summary**: each replicate's median of its cells (robust to outlier
  cells and segmentation debris); on the log scale, log(median).
* **Replicate-level tests**: Welch's t-test on the log replicate medians for a pair
  of conditions, one-way ANOVA on them for more. With the usual three to six
  replicates a rank test (Mann–Whitney, Kruskal–Wallis) cannot reach p < 0.05 at
  all (3 vs 3: smallest two-sided p = 0.1), while log medians of many cells are
  close to normal, which is what the t/F tests need.
* **Mixed model**: ln(value) of every cell ~ condition, with a random intercept per
  replicate (statsmodels ``MixedLM``, REML). Replicates are nested in conditions
  (replicate 1 of A and replicate 1 of B are different wells). Wald tests of the
  fixed effects use t/F reference distributions with the between-replicate
  ("containment") denominator degrees of freedom G − K (G replicates, K
  conditions): condition varies between replicates, so that is the information
  there is; a z test with infinite df would be anti-conservative with few replicates.
* **Pairwise**: every pair of conditions, replicate-level Welch p and mixed-model
  contrast p, each Holm-corrected over the pairs (``statsmodels`` ``multipletests``);
  effect sizes: fold change of the geometric mean of replicate medians with its
  Welch confidence interval, Hedges' g on log replicate medians, Cliff's delta on
  cells (descriptive only).
* **Trend** (ordered conditions): the linear contrast over the condition order in
  the mixed model (slope per step of ln value, t with G − K df) and the
  Jonckheere–Terpstra test on replicate medians (exact null distribution without
  ties up to 60 replicates, else a normal approximation).
* **Median CI**: percentile bootstrap, seeded; hierarchical (resample replicates,
  then cells within each drawn replicate) when a condition has ≥ 2 replicates, so
  the interval includes replicate-to-replicate variation; plain cell bootstrap
  otherwise (said in ``ci_method``).
* **Cell-level test**: also reported, named as such, only to show how much
  pseudo-replication would overstate the evidence.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats

from mechanoscope.config import StrictConfig
from mechanoscope.errors import MechanoscopeError
from mechanoscope.metrics.group_tests import bootstrap_median_ci, holm_adjust, jonckheere_terpstra

__all__ = [
    "ComparisonConfig",
    "ConditionComparison",
    "bootstrap_median_ci",
    "compare_replicated_conditions",
    "functional_correlation",
    "holm_adjust",
    "jonckheere_terpstra",
    "mixed_model_test",
    "replicate_level_tests",
]


class ComparisonConfig(StrictConfig):
    """What to compare and how."""

    value: str = Field("pred_stiffness_pa", min_length=1, description="Per-cell value column (e.g. pred_stiffness_pa, afm_stiffness_pa, stiffness_pa).")
    by: str = Field("condition", min_length=1, description="Column naming each cell's condition.")
    replicate: str | None = Field("replicate", description="Column naming each cell's biological replicate (nested in condition); None: cells only, no replicate-level test.")
    order: list[str] | None = Field(None, description="Conditions in their natural order (enables the trend test); conditions not named are left out.")
    log_scale: bool = Field(True, description="Analyse ln(value) (moduli are log-normal; effects are fold changes).")
    qc_only: bool = Field(True, description="Use only cells with qc_pass true when the table has that column.")
    n_bootstrap: int = Field(2000, ge=100, le=100000, description="Bootstrap resamples for the median confidence intervals.")
    ci_level: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")
    seed: int = Field(0, ge=0, description="Seed of the bootstrap.")


@dataclass
class ConditionComparison:
    """Result of :func:`compare_replicated_conditions`.

    Attributes
    ----------
    config
        What was compared.
    cells
        The cells used: ``condition``, ``replicate`` (str; "all" without replicates), ``value``.
    summary
        One row per condition: ``n_cells``, ``n_replicates``, ``median``, ``ci_low``,
        ``ci_high`` (value units), ``ci_method``, ``mean_of_replicate_medians``
        (geometric mean on the log scale), ``replicate_median_spread`` (SD of the
        replicate medians on the analysis scale), ``value_column`` (whose unit the
        values carry: Pa for ``*_pa``).
    replicates
        One row per replicate: ``condition``, ``replicate``, ``n_cells``, ``median``.
    pairwise
        One row per pair (a, b): effect sizes, replicate-level and mixed-model p with Holm.
    tests
        ``replicate_level``, ``mixed_model``, ``cell_level``, ``trend`` (dicts or None).
    functional
        Correlations with a functional readout, or None.
    messages
        Plain-language notes (left-out cells, conditions without replicate-level tests).
    """

    config: ComparisonConfig
    cells: pd.DataFrame
    summary: pd.DataFrame
    replicates: pd.DataFrame
    pairwise: pd.DataFrame
    tests: dict[str, Any]
    functional: dict[str, Any] | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def conditions(self) -> list[str]:
        """Conditions in analysis order."""
        return list(self.summary["condition"])

    def to_dict(self) -> dict[str, Any]:
        """Everything except the cells, JSON-ready (NaN → None)."""
        return _jsonable({
            "config": self.config.model_dump(mode="json"),
            "value": self.config.value,
            "conditions": self.conditions,
            "summary": self.summary.to_dict(orient="records"),
            "replicates": self.replicates.to_dict(orient="records"),
            "pairwise": self.pairwise.to_dict(orient="records"),
            "tests": self.tests,
            "functional": self.functional,
            "messages": self.messages,
        })


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not np.isfinite(obj) else float(obj)
    return obj


# ----------------------------------------------------------------------------- building blocks


def _welch(a: np.ndarray, b: np.ndarray, level: float) -> dict[str, float]:
    """Welch's t-test of mean(b) − mean(a), with its CI."""
    res = stats.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    return {"t": float(res.statistic), "df": float(res.df), "p": float(res.pvalue), "diff": float(b.mean() - a.mean()), "lo": float(ci.low), "hi": float(ci.high)}


def _hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = a.size, b.size
    if na < 2 or nb < 2:
        return float("nan")
    sp = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if sp == 0:
        return float("nan")
    return float((b.mean() - a.mean()) / sp * (1 - 3 / (4 * (na + nb) - 9)))


def _cliffs_delta(a: np.ndarray, b: np.ndarray) -> float:
    """P(b > a) − P(b < a) over all cell pairs (from the Mann–Whitney U)."""
    u = stats.mannwhitneyu(b, a, alternative="two-sided").statistic
    return float(2 * u / (a.size * b.size) - 1)


def replicate_level_tests(rep_values: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Omnibus test on replicate summaries (already on the analysis scale), one array per condition.

    Two conditions: Welch's t-test; more: one-way ANOVA. None when a condition has < 2 replicates.
    """
    arrays = list(rep_values.values())
    if len(arrays) < 2 or any(a.size < 2 for a in arrays):
        return None
    if len(arrays) == 2:
        res = stats.ttest_ind(arrays[1], arrays[0], equal_var=False)
        return {"test": "Welch t-test on replicate medians", "statistic": float(res.statistic), "df": float(res.df), "p_value": float(res.pvalue)}
    res = stats.f_oneway(*arrays)
    G = sum(a.size for a in arrays)
    return {"test": "one-way ANOVA on replicate medians", "statistic": float(res.statistic), "df": [len(arrays) - 1, G - len(arrays)], "p_value": float(res.pvalue)}


def _fit_ok(res: Any, K: int) -> bool:
    se = np.asarray(res.bse_fe, dtype=float)[:K]
    return bool(getattr(res, "converged", True)) and np.all(np.isfinite(np.asarray(res.fe_params, dtype=float))) and np.all(np.isfinite(se)) and np.all(se > 0)


def _fit_mixed(model: Any, K: int) -> tuple[Any, list, str]:
    """REML fit; when statsmodels' gradient optimisers fail (it happens at a replicate variance
    near zero: non-finite standard errors, nonsense fixed effects with "converged" set), refit with
    the derivative-free Powell and Nelder–Mead optimisers and keep the valid fit of highest likelihood."""
    fits = []
    for method in (None, "powell", "nm"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                res = model.fit(reml=True) if method is None else model.fit(reml=True, method=method)
            except (np.linalg.LinAlgError, ValueError):
                continue
        fits.append((res, list(caught), method or "statsmodels default (bfgs, then lbfgs)"))
        if _fit_ok(res, K) and method is None:
            return fits[0]
    ok = [f for f in fits if _fit_ok(f[0], K)]
    if ok:
        return max(ok, key=lambda f: float(f[0].llf))
    if not fits:
        raise MechanoscopeError("the mixed model could not be fitted (singular design)")
    return fits[0]


def mixed_model_test(y: np.ndarray, conditions: np.ndarray, groups: np.ndarray, order: Sequence[str], *, level: float = 0.95, trend: bool = False) -> dict[str, Any]:
    """Random-intercept mixed model ``y ~ condition + (1 | replicate)`` (statsmodels MixedLM, REML).

    Parameters
    ----------
    y : (N,) float
        Cell values on the analysis scale (e.g. ln modulus).
    conditions, groups : (N,)
        Condition of each cell and its replicate group (unique across conditions).
    order
        Conditions; the first is the reference level.
    trend
        Also test the linear contrast over ``order`` (equal steps).

    Returns
    -------
    dict: ``coefficients`` (each condition minus the reference, SE, CI, p),
    ``omnibus`` (Wald F with G − K denominator df), ``contrasts`` {(a, b): (estimate, se, p)},
    ``trend`` (slope per step, p) when asked, variance components and ICC, ``converged``.
    """
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    K = len(order)
    pos = {c: i for i, c in enumerate(order)}
    ci_idx = np.array([pos[c] for c in conditions])
    X = np.zeros((y.size, K))
    X[:, 0] = 1.0
    for j in range(1, K):
        X[:, j] = ci_idx == j
    G = len(np.unique(groups))
    df_den = G - K
    res, caught, optimizer = _fit_mixed(sm.MixedLM(y, X, groups=groups), K)
    converged = bool(getattr(res, "converged", True))
    notes: list[str] = []
    for w in caught:
        text = str(w.message).splitlines()[0]
        if "boundary" in text.lower():
            notes.append("the replicate variance is estimated at or near zero (replicates vary no more than their cells predict)")
        elif issubclass(w.category, ConvergenceWarning) and "retrying" not in text.lower():
            notes.append(text)
    notes = list(dict.fromkeys(notes))
    b = np.asarray(res.fe_params, dtype=float)
    V = np.asarray(res.cov_params(), dtype=float)[:K, :K]
    tcrit = stats.t.ppf(0.5 + level / 2, df_den) if df_den > 0 else float("nan")

    def contrast(L: np.ndarray) -> tuple[float, float, float]:
        est = float(L @ b)
        se = float(np.sqrt(max(L @ V @ L, 0.0)))
        p = float(2 * stats.t.sf(abs(est / se), df_den)) if se > 0 and df_den > 0 else float("nan")
        return est, se, p

    def mean_vec(j: int) -> np.ndarray:
        v = np.zeros(K)
        v[0] = 1.0
        if j:
            v[j] = 1.0
        return v

    coefs = []
    for j in range(1, K):
        est, se, p = contrast(np.eye(K)[j])
        coefs.append({"condition": order[j], "reference": order[0], "estimate": est, "se": se, "ci_low": est - tcrit * se, "ci_high": est + tcrit * se, "p_value": p})
    contrasts = {}
    for i in range(K):
        for j in range(i + 1, K):
            contrasts[(order[i], order[j])] = contrast(mean_vec(j) - mean_vec(i))
    L = np.eye(K)[1:]
    try:
        F = float(b[1:] @ np.linalg.solve(L @ V @ L.T, b[1:]) / (K - 1))
        p_omni = float(stats.f.sf(F, K - 1, df_den)) if df_den > 0 else float("nan")
    except np.linalg.LinAlgError:
        F, p_omni = float("nan"), float("nan")
    var_re = float(np.asarray(res.cov_re)[0, 0])
    var_res = float(res.scale)
    out: dict[str, Any] = {
        "model": "ln(value) ~ condition + (1 | replicate), REML" ,
        "coefficients": coefs,
        "omnibus": {"test": "Wald F (denominator df = replicates − conditions)", "statistic": F, "df": [K - 1, df_den], "p_value": p_omni},
        "replicate_variance": var_re,
        "residual_variance": var_res,
        "icc": var_re / (var_re + var_res) if (var_re + var_res) > 0 else float("nan"),
        "n_groups": G,
        "converged": converged,
        "optimizer": optimizer,
        "notes": notes,
        "contrasts": contrasts,
    }
    if trend and K >= 2:
        s = np.arange(K, dtype=float) - (K - 1) / 2
        Lt = sum(s[j] * mean_vec(j) for j in range(K)) / np.sum(s**2)
        est, se, p = contrast(Lt)
        out["trend"] = {"test": "linear trend over the order in the mixed model (t, df = replicates − conditions)", "slope_per_step": est, "se": se,
                        "ci_low": est - tcrit * se, "ci_high": est + tcrit * se, "p_value": p,
                        "direction": "increasing" if est > 0 else "decreasing" if est < 0 else "none"}
    return out


# ----------------------------------------------------------------------------- input checks


def _prepare(table: pd.DataFrame, cfg: ComparisonConfig) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The cells to compare (condition, replicate, value) in analysis order, and messages."""
    if not isinstance(table, pd.DataFrame):
        raise MechanoscopeError("compare: expected a cell table (pandas DataFrame)")
    cols = list(table.columns)
    if cfg.by not in cols:
        raise MechanoscopeError(f"grouping column {cfg.by!r} is not in the cell table; columns: {', '.join(map(str, cols))}")
    if cfg.value not in cols:
        cand = [c for c in cols if str(c).endswith("_pa")]
        raise MechanoscopeError(f"value column {cfg.value!r} is not in the cell table; "
                                + (f"stiffness columns present: {', '.join(cand)}" if cand else f"columns: {', '.join(map(str, cols))}"))
    if cfg.replicate is not None and cfg.replicate not in cols:
        raise MechanoscopeError(f"replicate column {cfg.replicate!r} is not in the cell table; columns: {', '.join(map(str, cols))} "
                                "(without replicates only cells can be compared)")
    if not pd.api.types.is_numeric_dtype(table[cfg.value]) or pd.api.types.is_bool_dtype(table[cfg.value]):
        raise MechanoscopeError(f"value column {cfg.value!r} is not numeric (dtype {table[cfg.value].dtype})")
    messages: list[str] = []
    t = table
    if cfg.qc_only and "qc_pass" in cols:
        keep = t["qc_pass"].fillna(False).astype(bool)
        if (~keep).any():
            messages.append(f"{int((~keep).sum())} cell(s) failing quality control left out (qc_pass false)")
        t = t[keep]
    elif cfg.qc_only:
        messages.append("the cell table has no qc_pass column: every cell is used, none was left out by quality control "
                        "(tables written by extract/predict have it; pass --all-cells to say this is intended)")
    cells = pd.DataFrame({
        "condition": t[cfg.by],
        "replicate": t[cfg.replicate] if cfg.replicate is not None else "all",
        "value": t[cfg.value].astype(float),
    })
    for key in ("image_id", "cell_id"):  # kept for per-cell functional readouts
        if key in cols:
            cells[key] = t[key].astype(str)
    bad = cells["condition"].isna() | cells["replicate"].isna()
    if bad.any():
        messages.append(f"{int(bad.sum())} cell(s) without a {cfg.by}" + (f" or {cfg.replicate}" if cfg.replicate else "") + " left out")
    nan = ~np.isfinite(cells["value"]) & ~bad
    if nan.any():
        messages.append(f"{int(nan.sum())} cell(s) without a finite {cfg.value} left out")
    if len(cells) and not (~bad & ~nan).any():
        raise MechanoscopeError(f"no cell has both a {cfg.by} and a finite {cfg.value} ({int(nan.sum())} value(s) are NaN or "
                                f"infinite, {int(bad.sum())} cell(s) have no {cfg.by}); predict into the table first or pass "
                                "the column that holds the values (--value)")
    cells = cells[~bad & ~nan].copy()
    cells["condition"] = cells["condition"].astype(str)
    cells["replicate"] = cells["replicate"].astype(str)
    if cfg.log_scale and (cells["value"] <= 0).any():
        raise MechanoscopeError(f"{int((cells['value'] <= 0).sum())} value(s) of {cfg.value!r} are ≤ 0; the log-scale analysis needs "
                                "positive values (moduli in Pa); analyse on the linear scale instead (log_scale false / --linear)")
    present = sorted(cells["condition"].unique(), key=_natural_key)
    if cfg.order is not None:
        order = [str(c) for c in cfg.order]
        if len(set(order)) != len(order):
            raise MechanoscopeError(f"the order names a condition twice: {order}")
        unknown = [c for c in order if c not in set(present)]
        if unknown:
            raise MechanoscopeError(f"the order names condition(s) {unknown} that have no cells with a {cfg.value} in column "
                                    f"{cfg.by!r}; conditions present: {present}")
        left = [c for c in present if c not in order]
        if left:
            messages.append(f"condition(s) {left} not named in the order left out")
        cells = cells[cells["condition"].isin(order)]
    else:
        order = present
    if len(order) < 2:
        raise MechanoscopeError(f"comparing needs at least two conditions in column {cfg.by!r}; found {order}")
    cells["condition"] = pd.Categorical(cells["condition"], categories=order, ordered=True)
    cells = cells.sort_values(["condition"], kind="stable").reset_index(drop=True)
    cells["condition"] = cells["condition"].astype(str)
    return cells, order, messages


def _natural_key(s: str) -> tuple:
    """P3 < P10 and 2 < 10: digits compared as numbers."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(s)))


# ----------------------------------------------------------------------------- functional readout


def functional_correlation(cells: pd.DataFrame, replicates: pd.DataFrame, functional: pd.DataFrame, *, by: str, replicate: str | None, log_scale: bool = True, cell_level: bool = False) -> dict[str, Any]:
    """Correlate a functional readout with the compared value.

    The level follows the keys of ``functional``: ``by`` and ``replicate`` columns →
    one point per replicate (replicate median vs readout); ``by`` only → one point per
    condition (geometric mean of replicate medians, as in the summary's
    ``mean_of_replicate_medians``, vs mean readout); ``image_id`` and
    ``cell_id`` → one point per cell (``cells`` then carries ``image_id``, ``cell_id``;
    ``cell_level`` says so).
    Every numeric column other than the keys is a readout. Keys are matched as text;
    keys on either side without a partner are an error.
    """
    cols = list(functional.columns)
    if {"image_id", "cell_id"} <= set(cols) and cell_level:
        level, keys = "cell", ["image_id", "cell_id"]
    elif by in cols and replicate is not None and replicate in cols:
        level, keys = "replicate", [by, replicate]
    elif by in cols:
        level, keys = "condition", [by]
    else:
        raise MechanoscopeError(f"functional table has none of the key columns {by!r}"
                                + (f" (+ {replicate!r})" if replicate else "") + f" or image_id + cell_id; columns: {', '.join(map(str, cols))}")
    readouts = [c for c in cols if c not in keys and pd.api.types.is_numeric_dtype(functional[c]) and not pd.api.types.is_bool_dtype(functional[c])]
    if not readouts:
        raise MechanoscopeError(f"functional table has no numeric readout column besides its keys {keys}")
    f = functional.copy()
    for k in keys:
        f[k] = f[k].astype(str)
    if f.duplicated(keys).any():
        raise MechanoscopeError(f"functional table repeats keys {keys}: e.g. {f.loc[f.duplicated(keys), keys].iloc[0].tolist()}")
    tr = (lambda v: np.log10(v)) if log_scale else (lambda v: v)
    if level == "replicate":
        pts = replicates.rename(columns={"condition": by, "replicate": replicate})[[by, replicate, "median"]].astype({by: str, replicate: str})
    elif level == "condition":
        pts = replicates.groupby("condition", sort=False)["median"].agg(lambda s: float(np.exp(np.mean(np.log(s)))) if log_scale else float(np.mean(s)))
        pts = pts.rename_axis(by).reset_index()
    else:
        pts = cells[keys].astype(str).assign(median=cells["value"].to_numpy())
    data_keys = set(map(tuple, pts[keys].to_numpy()))
    f_keys = set(map(tuple, f[keys].to_numpy()))
    missing, extra = sorted(data_keys - f_keys), sorted(f_keys - data_keys)
    if missing or extra:
        def show(ks: list) -> str:
            return ", ".join("/".join(k) for k in ks[:5]) + (" …" if len(ks) > 5 else "")
        raise MechanoscopeError("functional table keys do not match the compared data "
                                f"(matched on {' + '.join(keys)} as text): "
                                + (f"no readout for {show(missing)}" if missing else "")
                                + ("; " if missing and extra else "") + (f"readout for {show(extra)} not in the data" if extra else ""))
    m = pts.merge(f, on=keys, validate="one_to_one")
    x = tr(m["median"].to_numpy(dtype=float))
    out: dict[str, Any] = {"level": level, "keys": keys, "n_points": int(len(m)), "x": "log10 of the median value" if log_scale else "median value", "readouts": {}}
    for c in readouts:
        yv = m[c].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(yv)
        r = {"n": int(ok.sum())}
        if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(yv[ok]) > 0:
            pr = stats.pearsonr(x[ok], yv[ok])
            sr = stats.spearmanr(x[ok], yv[ok])
            lr = stats.linregress(x[ok], yv[ok])
            r.update({"pearson_r": float(pr.statistic), "pearson_p": float(pr.pvalue), "spearman_rho": float(sr.statistic),
                      "spearman_p": float(sr.pvalue), "slope_per_decade" if log_scale else "slope": float(lr.slope), "intercept": float(lr.intercept)})
        else:
            r["note"] = "fewer than 3 points or no spread: no correlation"
        out["readouts"][c] = r
    if level == "cell":
        out["note"] = "cells of one replicate are not independent: per-cell p-values overstate the evidence"
    return out


# ----------------------------------------------------------------------------- the comparison


def compare_replicated_conditions(table: pd.DataFrame, config: ComparisonConfig | None = None, *, functional: pd.DataFrame | None = None, **overrides: Any) -> ConditionComparison:
    """Compare a per-cell value across conditions with replicates as the unit (see the module docstring).

    Parameters
    ----------
    table
        Cell table with the ``by``, ``replicate`` and ``value`` columns.
    config
        :class:`ComparisonConfig`; keyword ``overrides`` set its fields instead/on top.
    functional
        Optional functional readout table (see :func:`functional_correlation`).

    Raises
    ------
    MechanoscopeError
        Missing columns, fewer than two conditions, an order naming unknown conditions,
        non-positive values on the log scale, functional keys that do not match.
    """
    cfg = ComparisonConfig.build(**{**(config.model_dump() if config else {}), **overrides})
    cells, order, messages = _prepare(table, cfg)
    tr = np.log if cfg.log_scale else (lambda v: v)
    y = tr(cells["value"].to_numpy())
    rng = np.random.default_rng(cfg.seed)
    has_rep = cfg.replicate is not None
    if not has_rep:
        messages.append("no replicate column: cells are treated as independent, which overstates significance; "
                        "give the biological replicate (well, dish, donor) for replicate-level tests")
    reps = (cells.groupby(["condition", "replicate"], sort=False)["value"].agg(n_cells="size", median="median").reset_index())
    reps["condition"] = pd.Categorical(reps["condition"], categories=order, ordered=True)
    reps = reps.sort_values(["condition", "replicate"], key=lambda s: s.map(_natural_key) if s.name == "replicate" else s).reset_index(drop=True)
    reps["condition"] = reps["condition"].astype(str)
    rep_vals = {c: tr(reps.loc[reps["condition"] == c, "median"].to_numpy(dtype=float)) for c in order}
    n_rep = {c: int((reps["condition"] == c).sum()) for c in order}
    single = [c for c in order if n_rep[c] < 2] if has_rep else []
    if single:
        messages.append(f"condition(s) {single} have a single replicate: no replicate-level test is possible for them; "
                        "only the cell-level test (cells as independent units) is reported")
    rows = []
    for c in order:
        sub = cells[cells["condition"] == c]
        lo, hi, method = bootstrap_median_ci(sub["value"].to_numpy(), sub["replicate"].to_numpy() if has_rep else None,
                                             n_bootstrap=cfg.n_bootstrap, level=cfg.ci_level, seed=rng)
        rows.append({"condition": c, "n_cells": int(len(sub)), "n_replicates": n_rep[c] if has_rep else 0,
                     "median": float(sub["value"].median()), "ci_low": lo, "ci_high": hi, "ci_method": method,
                     "mean_of_replicate_medians": float(np.exp(np.mean(rep_vals[c]))) if cfg.log_scale else float(np.mean(rep_vals[c])),
                     "replicate_median_spread": float(np.std(rep_vals[c], ddof=1)) if n_rep[c] >= 2 and has_rep else float("nan")})
    summary = pd.DataFrame(rows)
    summary["value_column"] = cfg.value  # median, ci_* and replicate medians are in this column's unit (Pa for *_pa)
    cell_groups = [cells.loc[cells["condition"] == c, "value"].to_numpy() for c in order]
    if len(order) == 2:
        mw = stats.mannwhitneyu(cell_groups[1], cell_groups[0], alternative="two-sided")
        cell_test = {"test": "Mann–Whitney U on cells (cells as independent units; pseudo-replication)", "statistic": float(mw.statistic), "p_value": float(mw.pvalue)}
    else:
        kw = stats.kruskal(*cell_groups)
        cell_test = {"test": "Kruskal–Wallis on cells (cells as independent units; pseudo-replication)", "statistic": float(kw.statistic), "p_value": float(kw.pvalue)}
    tests: dict[str, Any] = {"cell_level": cell_test, "replicate_level": None, "mixed_model": None, "trend": None}
    mm = None
    if has_rep and not single:
        tests["replicate_level"] = replicate_level_tests(rep_vals)
        groups = (cells["condition"] + "\x1f" + cells["replicate"]).to_numpy()
        mm = mixed_model_test(y, cells["condition"].to_numpy(), groups, order, level=cfg.ci_level, trend=cfg.order is not None)
        if not cfg.log_scale:
            mm["model"] = "value ~ condition + (1 | replicate), REML"
        tests["mixed_model"] = {k: v for k, v in mm.items() if k not in ("contrasts", "trend")}
        if mm["notes"]:
            messages.append("mixed model: " + "; ".join(mm["notes"]))
    if cfg.order is not None:
        trend: dict[str, Any] = {"order": order}
        if mm is not None and "trend" in mm:
            trend["mixed_model"] = mm["trend"]
        if has_rep and not single:
            trend["jonckheere_terpstra"] = jonckheere_terpstra([rep_vals[c] for c in order])
            trend["jonckheere_terpstra"]["on"] = "replicate medians"
        else:
            trend["cell_level"] = jonckheere_terpstra(cell_groups) | {"on": "cells (pseudo-replication)"}
        tests["trend"] = trend
    pair_rows = []
    for i in range(len(order)):
        for j in range(i + 1, len(order)):
            a, b = order[i], order[j]
            ra, rb = rep_vals[a], rep_vals[b]
            ca, cb = cell_groups[i], cell_groups[j]
            row: dict[str, Any] = {"a": a, "b": b}
            if has_rep and ra.size >= 2 and rb.size >= 2:
                w = _welch(ra, rb, cfg.ci_level)
                conv = np.exp if cfg.log_scale else (lambda v: v)
                row.update({"estimate": float(conv(w["diff"])), "ci_low": float(conv(w["lo"])), "ci_high": float(conv(w["hi"])),
                            "hedges_g": _hedges_g(ra, rb), "p_replicates": w["p"]})
            else:
                est = float(np.median(cb) / np.median(ca)) if cfg.log_scale else float(np.median(cb) - np.median(ca))
                row.update({"estimate": est, "ci_low": float("nan"), "ci_high": float("nan"), "hedges_g": float("nan"), "p_replicates": float("nan")})
            row["p_mixed"] = mm["contrasts"][(a, b)][2] if mm is not None else float("nan")
            row["cliffs_delta_cells"] = _cliffs_delta(ca, cb)
            row["p_cells"] = float(stats.mannwhitneyu(cb, ca, alternative="two-sided").pvalue)
            pair_rows.append(row)
    pairwise = pd.DataFrame(pair_rows)
    for col in ("p_replicates", "p_mixed", "p_cells"):
        adj = holm_adjust(pairwise[col].tolist())
        pairwise.insert(pairwise.columns.get_loc(col) + 1, col + "_holm", [np.nan if v is None else v for v in adj])
    pairwise.insert(2, "estimate_kind", "fold change b/a of replicate medians (geometric means)" if cfg.log_scale else "difference b − a of replicate medians")
    if has_rep:
        pairwise.loc[pairwise["p_replicates"].isna(), "estimate_kind"] = "ratio b/a of cell medians (no replicate-level estimate)" if cfg.log_scale else "difference b − a of cell medians (no replicate-level estimate)"
    func = None
    if functional is not None:
        func = functional_correlation(cells, reps, functional, by=cfg.by, replicate=cfg.replicate, log_scale=cfg.log_scale,
                                      cell_level={"image_id", "cell_id"} <= set(cells.columns))
    return ConditionComparison(config=cfg, cells=cells, summary=summary, replicates=reps, pairwise=pairwise, tests=tests, functional=func, messages=messages)

